//! TensorBoard's own reader (`EventAccumulator`, PyPI `tensorboard`, through
//! `scripts/read-tensorboard.py`) reads the event files of a run, and every value it shows
//! equals `metrics.jsonl`'s (as f32), step for step, also after a resume from an earlier
//! checkpoint (the killed run's later events are purged by the reader) and after a fresh start
//! over an earlier run's files. Skips without the
//! Python package, except under `CI=true` (the README's test command installs it).

mod harness;

use harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

type Runs = BTreeMap<String, BTreeMap<String, Vec<(u64, f64)>>>;

fn read_tensorboard(logdir: &Path) -> Option<Runs> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/read-tensorboard.py");
    let o = Command::new("python3").arg(script).arg(logdir).output();
    let ci = std::env::var("CI").as_deref() == Ok("true");
    match o {
        Ok(o) if o.status.success() => Some(serde_json::from_slice(&o.stdout).unwrap()),
        other => {
            assert!(
                !ci,
                "CI=true but TensorBoard's reader did not run: {other:?}"
            );
            eprintln!("SKIPPED: needs python3 with `pip install tensorboard` ({other:?})");
            None
        }
    }
}

/// Every number the reader shows equals the metrics line of its step, and every number of
/// the metrics lines (of the kinds written) is shown.
fn assert_same(runs: &Runs, steps: &BTreeMap<u64, Value>, tasks: &[&str]) {
    let f32_eq = |a: f64, b: &Value| b.as_f64().is_some_and(|b| a == b as f32 as f64);
    let mut want: BTreeMap<(String, String), Vec<(u64, f64)>> = BTreeMap::new();
    for (s, rec) in steps {
        for (k, v) in rec.as_object().unwrap() {
            match v {
                Value::Number(n) if k != "step" => want
                    .entry(("run".into(), k.clone()))
                    .or_default()
                    .push((*s, n.as_f64().unwrap())),
                Value::Object(m) => {
                    for t in tasks {
                        if let Some(x) = m.get(*t).and_then(Value::as_f64) {
                            want.entry((format!("tasks/{t}"), k.clone()))
                                .or_default()
                                .push((*s, x));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    assert!(want.contains_key(&("tasks/add".into(), "val_ratio".into())));
    assert!(want.contains_key(&("run".into(), "val_ratio_mean".into())));
    for ((run, tag), points) in &want {
        let got = runs
            .get(run)
            .and_then(|r| r.get(tag))
            .unwrap_or_else(|| panic!("TensorBoard has no {run}/{tag}: {:?}", runs.keys()));
        let got_steps: Vec<u64> = got.iter().map(|p| p.0).collect();
        let want_steps: Vec<u64> = points.iter().map(|p| p.0).collect();
        assert_eq!(got_steps, want_steps, "{run}/{tag} steps");
        for ((s, g), (_, w)) in got.iter().zip(points) {
            assert!(
                f32_eq(*g, &Value::from(*w)),
                "{run}/{tag} step {s}: {g} vs {w}"
            );
        }
    }
    let shown: usize = runs.values().map(|r| r.len()).sum();
    assert_eq!(
        shown,
        want.len(),
        "tags TensorBoard shows beyond metrics.jsonl"
    );
}

#[test]
fn tensorboard_reads_what_metrics_jsonl_holds_also_after_a_resume() {
    let job = Job::new("");
    ok(&job.run(&[]));
    let tasks = ["add", "echo", "words"];
    let Some(runs) = read_tensorboard(&job.out().join("tb")) else {
        return;
    };
    let steps = job.steps();
    assert_eq!(steps.len(), 6);
    assert_same(&runs, &steps, &tasks);

    // Resume from the checkpoint after step 3 of the finished run: steps 3..6 are logged
    // again; the reader drops the first run's events from step 3 on.
    let ckpt = job.checkpoint(3);
    ok(&job.run(&["--resume", ckpt.to_str().unwrap()]));
    let runs = read_tensorboard(&job.out().join("tb")).unwrap();
    let files = std::fs::read_dir(job.out().join("tb/run")).unwrap().count();
    assert_eq!(files, 2, "one event file per process run");
    assert_same(&runs, &job.steps(), &tasks);

    // A fresh start in the same output_dir (checkpoints moved away) with another learning
    // rate: TensorBoard shows the new run only, not both.
    std::fs::remove_dir_all(job.out().join("checkpoints")).unwrap();
    ok(&job.run(&["--set", "train.lr=0.05"]));
    let runs = read_tensorboard(&job.out().join("tb")).unwrap();
    assert_same(&runs, &job.steps(), &tasks);
}
