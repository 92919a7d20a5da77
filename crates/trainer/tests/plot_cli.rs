//! `coba-dist plot` end to end: a synthetic `metrics.jsonl` (3 tasks, 50 steps, probe, eval
//! and DF steps, a step logged twice, a truncated last line) gives five non-blank PNGs of the
//! asked size; a run without probes falls back to eval losses; malformed input exits 2 naming
//! the line or the path. Plus the min-max normalisation and the reader on the same fixture.

use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use trainer::plot::{min_max_normalize, RatioSource, RunMetrics};

const TASKS: [&str; 3] = ["code", "math", "chat"];
const FILES: [&str; 5] = [
    "val_ratio.png",
    "val_ratio_normalized.png",
    "weights.png",
    "df.png",
    "train_loss.png",
];

fn coba_dist(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coba-dist"))
        .args(args)
        .output()
        .expect("run coba-dist")
}

fn per_task(f: impl Fn(usize) -> Value) -> Value {
    Value::Object(
        TASKS
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), f(i)))
            .collect(),
    )
}

/// One step's record: warm-up until 10, CoBa computations (`df`) and probes on even steps
/// from 2, a full evaluation every 10 steps; `with_probes = false` drops probes and DF.
fn step_line(step: u64, with_probes: bool, bump: f64) -> String {
    let s = step as f64;
    let ratio = |i: usize| 1.0 / (1.0 + 0.02 * s * (i as f64 + 1.0)) + bump;
    let mut rec = json!({
        "step": step,
        "lr": 1e-4,
        "loss": 2.0 - 0.01 * s,
        "train_loss": per_task(|i| if step == 7 && i == 2 { Value::Null } else { json!(2.0 * ratio(i) + 0.1 * i as f64) }),
        "weights": per_task(|i| json!(if step < 10 { 1.0 / 3.0 } else { [0.5, 0.3, 0.2][i] + 0.001 * s * (1.0 - i as f64) })),
        "weights_source": if step < 10 { "warmup" } else if step.is_multiple_of(2) { "computed" } else { "carried" },
        "tokens_per_s": 1234.5,
        "gflops_per_s": 10.0,
        "step_time_s": 0.5,
        "comm_time_s": 0.01,
        "some_future_key": {"nested": [1, 2, 3]},
    });
    let obj = rec.as_object_mut().unwrap();
    if with_probes && step >= 2 && step.is_multiple_of(2) {
        obj.insert("probe_val_loss".into(), per_task(|i| json!(2.0 * ratio(i))));
        obj.insert(
            "val_ratio".into(),
            per_task(|i| {
                if step == 12 && i == 1 {
                    Value::Null
                } else {
                    json!(ratio(i))
                }
            }),
        );
        if step >= 10 {
            obj.insert("df".into(), json!(0.5 + 0.01 * s));
            obj.insert("rcs".into(), per_task(|i| json!(0.3 + 0.1 * i as f64)));
            obj.insert("acs".into(), per_task(|i| json!(0.4 - 0.1 * i as f64)));
        }
    }
    if step % 10 == 9 {
        obj.insert("val_loss".into(), per_task(|i| json!(2.0 * ratio(i))));
        obj.insert("val_ratio_mean".into(), json!(ratio(1)));
    }
    rec.to_string()
}

/// The fixture: header, steps 0..50 with step 25 logged twice (the second with +0.5 on the
/// ratios), and a truncated line 53 without a newline.
fn metrics_text(with_probes: bool) -> String {
    let header = json!({
        "initial_val_loss": per_task(|_| json!(2.0)),
        "tasks": TASKS,
        "world_size": 2,
        "method": "coba",
        "config": {"tau": 5},
    });
    let mut lines = vec![header.to_string()];
    for step in 0..50 {
        lines.push(step_line(step, with_probes, 0.0));
        if step == 26 {
            lines.push(step_line(25, with_probes, 0.5));
        }
    }
    let truncated = step_line(50, with_probes, 0.0);
    let mut text = lines.join("\n");
    text.push('\n');
    text.push_str(&truncated[..truncated.len() / 2]);
    text
}

fn write_run(dir: &Path, text: &str) {
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
}

/// Checks the PNG signature, the IHDR size and that the image has more than 3 colours.
fn check_png(path: &Path, width: u32, height: u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{}: no PNG signature",
        path.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR", "{}: first chunk", path.display());
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(
        (be(16), be(20)),
        (width, height),
        "{}: size",
        path.display()
    );
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 3,
        "{}: only {} colours (blank?)",
        path.display(),
        colours.len()
    );
}

#[test]
fn plots_five_pngs_of_the_asked_size() {
    let dir = tempfile::tempdir().unwrap();
    write_run(dir.path(), &metrics_text(true));
    let out = dir.path().join("charts");
    let out_s = out.to_str().unwrap();
    let run = coba_dist(&[
        "plot",
        dir.path().to_str().unwrap(),
        "--out",
        out_s,
        "--width",
        "900",
        "--height",
        "500",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "exit {:?}: {stderr}", run.status);
    assert!(
        stderr.contains("line 53") && stderr.contains("truncated"),
        "no warning for the truncated line: {stderr}"
    );
    let stdout = String::from_utf8(run.stdout).unwrap();
    let printed: Vec<&str> = stdout.lines().collect();
    assert_eq!(printed.len(), FILES.len(), "stdout: {stdout}");
    for (file, line) in FILES.iter().zip(&printed) {
        let path = out.join(file);
        assert_eq!(Path::new(line), path);
        check_png(&path, 900, 500);
    }
}

#[test]
fn default_size_and_dir_and_eval_fallback_without_probes() {
    let dir = tempfile::tempdir().unwrap();
    write_run(dir.path(), &metrics_text(false));
    let run = coba_dist(&["plot", dir.path().to_str().unwrap()]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for file in FILES {
        // df.png has no data here: the axes and the note still make it non-blank.
        check_png(&dir.path().join("plots").join(file), 1000, 600);
    }
}

#[test]
fn malformed_middle_line_exits_2_naming_the_line() {
    for bad in [
        r#"{"step": 9, "weights": {"code": "heavy"}}"#,
        r#"{"step": 9,, "lr": 1}"#,
        r#"{"step": 9, "weights": {"unknown_task": 0.5}}"#,
        r#"{"lr": 1e-4}"#,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut lines: Vec<String> = metrics_text(true).lines().map(String::from).collect();
        lines[9] = bad.to_string();
        write_run(dir.path(), &lines.join("\n"));
        let run = coba_dist(&["plot", dir.path().to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("metrics.jsonl: line 10"),
            "{bad}: stderr does not name file and line: {stderr}"
        );
        assert!(!dir.path().join("plots").exists(), "{bad}: wrote plots");
    }
}

#[test]
fn missing_run_dir_exits_2_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-run");
    let run = coba_dist(&["plot", missing.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
    // A directory without metrics.jsonl names the file.
    let run = coba_dist(&["plot", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("metrics.jsonl"), "{stderr}");
}

#[test]
fn reader_keeps_the_later_duplicate_and_skips_the_truncated_line() {
    let m = RunMetrics::parse(metrics_text(true).as_bytes()).unwrap();
    assert_eq!(m.tasks, TASKS);
    assert_eq!(m.initial_val_loss, vec![Some(2.0); 3]);
    assert_eq!((m.method.as_deref(), m.world_size), (Some("coba"), Some(2)));
    assert_eq!(m.truncated_line, Some(53));
    let steps: Vec<u64> = m.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, (0..50).collect::<Vec<_>>());
    // Step 25 is odd: no probe, so its later line shows in train_loss (ratio + 0.5).
    let later = 2.0 * (1.0 / (1.0 + 0.02 * 25.0) + 0.5);
    assert_eq!(m.steps[25].train_loss[0], Some(later));
    assert_eq!(m.steps[7].train_loss[2], None);
    let (source, ratios) = m.val_ratio_curves();
    assert_eq!(source, RatioSource::Probe);
    assert_eq!(ratios[0].len(), 24); // steps 2, 4, ..., 48
    assert_eq!(ratios[1].len(), 23); // step 12 has null for math
    assert_eq!(m.df_curve().len(), 20); // steps 10, 12, ..., 48

    let m = RunMetrics::parse(metrics_text(false).as_bytes()).unwrap();
    let (source, ratios) = m.val_ratio_curves();
    assert_eq!(source, RatioSource::Eval);
    assert_eq!(ratios[2].len(), 5); // steps 9, 19, 29, 39, 49
    assert!(m.df_curve().is_empty());
}

#[test]
fn min_max_normalisation() {
    let curve = [0.9, 0.7, 0.8, 0.55, 0.6];
    let n = min_max_normalize(&curve);
    assert!(n.iter().all(|v| (0.0..=1.0).contains(v)), "{n:?}");
    assert_eq!(n.iter().copied().fold(f64::INFINITY, f64::min), 0.0);
    assert_eq!(n.iter().copied().fold(f64::NEG_INFINITY, f64::max), 1.0);
    assert_eq!((n[0], n[3]), (1.0, 0.0));
    assert!((n[1] - 0.15 / 0.35).abs() < 1e-12);
    assert_eq!(min_max_normalize(&[0.42; 4]), vec![0.0; 4]);
    assert_eq!(min_max_normalize(&[0.0]), vec![0.0]);
    assert!(min_max_normalize(&[]).is_empty());
}
