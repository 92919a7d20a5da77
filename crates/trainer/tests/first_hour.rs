//! What a new user hits in the first hour (issue "first hour"): one regression test per item,
//! named after it, through the `coba-dist` binary. Items 2-4 run under `mpirun -n 2` (they skip
//! with a message without MPI, and fail under `CI=true`).

mod harness;

use harness::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The stderr of a run that must have been refused as bad input (exit 2).
fn refused(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    err
}

fn append_line(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "{line}").unwrap();
}

// Item 2: errors every rank shares are printed under mpirun.

#[test]
fn errors_under_mpirun_malformed_data_line_is_printed() {
    let job = Job::new("");
    append_line(&job.dir.path().join("echo.jsonl"), "{\"prompt\": \"x\",");
    let Some(o) = job.mpirun(2, &[]) else { return };
    let err = refused(&o);
    assert!(err.contains("coba-dist: error"), "{err}");
    assert!(err.contains("echo.jsonl:41"), "the file and line: {err}");
    // Printed once (by rank 0), not once per rank.
    assert_eq!(err.matches("coba-dist: error").count(), 1, "{err}");
}

/// `mpirun -n 2` with micro-batch 2 (the single-process global batch) for 3 steps, then
/// `extra`; `false` when MPI is unavailable (the harness says why, and fails under CI).
fn first_three_steps_on_two_ranks(job: &Job, extra: &[&str]) -> bool {
    let args = [
        &[
            "--set",
            "train.micro_batch_size=2",
            "--set",
            "train.max_steps=3",
        ],
        extra,
    ];
    match job.mpirun(2, &args.concat()) {
        Some(o) => {
            ok(&o);
            true
        }
        None => false,
    }
}

/// `mpirun -n 2 ... --resume auto` with micro-batch 2 and `extra` (6 steps unless `extra`
/// says otherwise).
fn resume_on_two_ranks(job: &Job, extra: &[&str]) -> Output {
    let args = [
        &["--resume", "auto", "--set", "train.micro_batch_size=2"],
        extra,
    ];
    job.mpirun(2, &args.concat())
        .expect("MPI was there for the first run")
}

#[test]
fn errors_under_mpirun_task_order_mismatch_on_resume_is_printed() {
    let job = Job::new("");
    if !first_three_steps_on_two_ranks(&job, &[]) {
        return;
    }
    // The same tasks in another order.
    let toml = std::fs::read_to_string(job.config()).unwrap();
    let start = toml.find("tasks = [").unwrap();
    let end = start + toml[start..].find("]\n").unwrap() + 1;
    let mut tasks: Vec<&str> = toml[start + 9..end - 1].split("}, ").collect();
    tasks.swap(0, 2);
    let swapped = tasks
        .iter()
        .map(|t| t.trim_end_matches('}').to_string() + "}")
        .collect::<Vec<_>>()
        .join(", ");
    let toml = format!("{}tasks = [{swapped}]{}", &toml[..start], &toml[end..]);
    std::fs::write(job.config(), toml).unwrap();
    let o = resume_on_two_ranks(&job, &[]);
    let err = refused(&o);
    assert!(
        err.contains("coba-dist: error") && err.contains("tasks"),
        "{err}"
    );
}

// Item 3: resume refuses another architecture and a schedule that changes a learning rate.

#[test]
fn resume_refuses_another_architecture_naming_both_values() {
    let job = Job::new("");
    if !first_three_steps_on_two_ranks(&job, &[]) {
        return;
    }
    let before = std::fs::read_to_string(job.out().join("config.toml")).unwrap();
    let o = resume_on_two_ranks(&job, &["--set", "model.arch.hidden_size=32"]);
    let err = refused(&o);
    assert!(
        err.contains("hidden_size: checkpoint 16, config 32"),
        "names the field and both values: {err}"
    );
    // Nothing of the refused run was written.
    assert_eq!(
        std::fs::read_to_string(job.out().join("config.toml")).unwrap(),
        before
    );
    assert_eq!(job.steps().len(), 3);
}

#[test]
fn resume_refuses_a_cosine_schedule_over_other_steps() {
    let job = Job::new("");
    let cosine = ["--set", "train.lr_schedule=\"cosine\""];
    if !first_three_steps_on_two_ranks(&job, &cosine) {
        return;
    }
    let o = resume_on_two_ranks(&job, &cosine);
    let err = refused(&o);
    assert!(
        err.contains("over 3 steps") && err.contains("over 6 steps"),
        "names both schedules: {err}"
    );
    assert!(
        err.contains("model.path"),
        "says how to train further: {err}"
    );
}

#[test]
fn resume_with_more_steps_at_a_constant_rate_is_logged_and_updates_the_header() {
    let job = Job::new("");
    if !first_three_steps_on_two_ranks(&job, &[]) {
        return;
    }
    assert_eq!(job.header()["total_steps"], 3);
    // The header names the dtype; a dense run has no quantized-base key.
    assert_eq!(job.header()["dtype"], "f32");
    assert!(job.header().get("lora_quantize_base").is_none());
    // Resumed on one rank (micro-batch 4: the same global batch of 4 rows).
    let text = ok(&job.run(&["--resume", "auto"]));
    assert!(text.contains("instead of 3"), "{text}");
    // The startup log maps each rank to its host and device.
    let host = collectives::host_name();
    assert!(
        text.contains(&format!("ranks -> host: device: rank 0 -> {host}: cpu")),
        "{text}"
    );
    assert_eq!(job.header()["total_steps"], 6);
    // The checkpoints now name the ranks that wrote them.
    let st: serde_json::Value =
        serde_json::from_slice(&file_bytes(&job.checkpoint(6).join("state.json"))).unwrap();
    assert_eq!(st["world_size"], 1);
    // Every step once, in order, after the rewritten header.
    assert_eq!(
        job.steps().keys().copied().collect::<Vec<_>>(),
        (0..6).collect::<Vec<u64>>()
    );
    let lines = std::fs::read_to_string(job.out().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 7);
}

#[test]
fn resume_refuses_fewer_steps_than_done_or_another_probe_size() {
    let job = Job::new("");
    ok(&job.run(&["--set", "train.max_steps=6"]));
    let o = job.run(&["--resume", "auto", "--set", "train.max_steps=4"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("6 steps done, more than the 4 steps"),
        "{}",
        stderr(&o)
    );
    let o = job.run(&[
        "--resume",
        "auto",
        "--set",
        "train.max_steps=9",
        "--set",
        "coba.probe_samples_per_task=8",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("probe takes 4 validation samples per task, the config 8"),
        "{}",
        stderr(&o)
    );
    assert_eq!(job.steps().len(), 6);
    assert_eq!(job.header()["total_steps"], 6);
}

#[test]
fn resume_without_the_runs_metrics_is_refused_before_writing() {
    let job = Job::new("");
    ok(&job.run(&["--set", "train.max_steps=3"]));
    let config_before = std::fs::read(job.out().join("config.toml")).unwrap();
    std::fs::remove_file(job.out().join("metrics.jsonl")).unwrap();
    let o = job.run(&["--resume", "auto", "--set", "train.max_steps=9"]);
    let err = refused(&o);
    assert!(err.contains("model.path"), "{err}");
    assert!(!job.out().join("metrics.jsonl").exists());
    assert_eq!(
        std::fs::read(job.out().join("config.toml")).unwrap(),
        config_before
    );
}

// Item 4: one run per output_dir.

#[test]
fn output_dir_lock_refuses_a_second_run_under_mpirun() {
    let job = Job::new("");
    let args = [
        "--set",
        "train.micro_batch_size=2",
        "--set",
        "train.max_steps=100000",
    ];
    let Some(mut first) = job.mpirun_command(2, &args) else {
        return;
    };
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let a = first
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Running: its first step is in metrics.jsonl.
    let start = Instant::now();
    while job.steps_if_any().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "first run never stepped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let lock = std::fs::read_to_string(job.out().join("coba-dist.lock")).unwrap();
    let holder: serde_json::Value = serde_json::from_str(&lock).unwrap();
    let o = job.mpirun_command(2, &args).unwrap().output().unwrap();
    // Stop the first run (mpirun forwards SIGTERM; it checkpoints and exits cleanly).
    Command::new("kill")
        .args(["-TERM", &a.id().to_string()])
        .status()
        .unwrap();
    let a_out = a.wait_with_output().unwrap();
    let err = refused(&o);
    assert!(err.contains("in use by another run"), "{err}");
    assert!(
        err.contains(&format!("pid {}", holder["pid"])),
        "names the holder: {err}"
    );
    // The first run checkpointed and ended cleanly on the signal (mpirun's own exit status
    // after a SIGTERM is Open MPI's choice, not ours).
    let a_err = stderr(&a_out);
    assert!(a_err.contains("(signal)"), "{a_err}");
    // The first run's metrics are its own: steps 0.. in order, no second header.
    let steps = job.steps();
    assert_eq!(
        steps.keys().copied().collect::<Vec<_>>(),
        (0..steps.len() as u64).collect::<Vec<_>>()
    );
    drop(serial);
    // Released on exit: a resume takes the lock again.
    let o = job
        .mpirun(
            2,
            &[
                "--resume",
                "auto",
                "--set",
                "train.micro_batch_size=2",
                "--set",
                &format!("train.max_steps={}", steps.len() + 1),
            ],
        )
        .unwrap();
    ok(&o);
}

// Item 8: generate says when nothing was generated and uses the training template.

#[test]
fn generate_reports_zero_tokens_and_uses_the_trained_template() {
    let job = Job::new("");
    ok(&job.run(&[
        "--set",
        "train.max_steps=3",
        "--set",
        "data.template.preset=\"mftcoder\"",
    ]));
    let best = job.out().join("best");
    let o = Command::new(bin())
        .args([
            "generate",
            "--prompt",
            "1 + 2 =",
            "--max-new-tokens",
            "0",
            "--model",
        ])
        .arg(&best)
        .output()
        .unwrap();
    let text = ok(&o);
    assert!(text.contains("generated 0 tokens"), "{text}");
    assert!(
        text.contains("template mftcoder"),
        "read best/template.json: {text}"
    );
    // eval finds best/tokenizer.json as generate does.
    let o = Command::new(bin())
        .args(["eval", "--json", "--model"])
        .arg(&best)
        .arg("--task")
        .arg(format!(
            "add={}",
            job.dir.path().join("add.jsonl").display()
        ))
        .output()
        .unwrap();
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tasks"][0]["name"], "add");
    assert!(v["tasks"][0]["tokens"].as_u64().unwrap() > 0);
}

// Item 9: --resume auto falls back to the newest valid checkpoint.

#[test]
fn resume_auto_skips_a_corrupt_newest_checkpoint() {
    let straight = Job::new("");
    ok(&straight.run(&[]));
    let job = Job::new("");
    ok(&job.run(&[]));
    // Damage the newest checkpoint (step 6) the way a full disk does: a truncated file.
    let f = job.checkpoint(6).join("model/model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let o = job.run(&["--resume", "auto"]);
    let text = ok(&o);
    assert!(
        text.contains("skipping") && text.contains("step-00000006"),
        "warns what it skipped: {text}"
    );
    assert!(text.contains("truncated"), "and why: {text}");
    // Resumed from step 3: the rewritten step 6 equals the uninterrupted run's.
    assert_eq!(params(&job.checkpoint(6)), params(&straight.checkpoint(6)));
    // Every checkpoint damaged: a clear error, not a fresh start over them.
    std::fs::write(job.checkpoint(3).join("state.json"), "{").unwrap();
    std::fs::write(job.checkpoint(6).join("state.json"), "{").unwrap();
    let o = job.run(&["--resume", "auto"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("every checkpoint"), "{}", stderr(&o));
}

// Item 10: smaller things.

#[test]
fn smaller_missing_path_error_is_printed_once() {
    let job = Job::new("");
    std::fs::remove_file(job.dir.path().join("words.jsonl")).unwrap();
    let o = job.run(&[]);
    let err = refused(&o);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn smaller_eval_accepts_set() {
    let job = Job::new("");
    let gone = job.dir.path().join("elsewhere");
    let o = Command::new(bin())
        .args(["eval", "--config"])
        .arg(job.config())
        .arg("--set")
        .arg(format!("output_dir={:?}", gone.display().to_string()))
        .output()
        .unwrap();
    let err = refused(&o);
    // The default model is output_dir/best of the overridden output_dir.
    assert!(
        err.contains(&gone.join("best").display().to_string()),
        "{err}"
    );
}

#[test]
fn smaller_safetensors_files_get_the_usual_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let job = Job::new("");
    ok(&job.run(&["--set", "train.max_steps=3"]));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // What any other file the run wrote has (0666 less the umask).
    let usual = mode(&job.out().join("metrics.jsonl"));
    for f in [
        job.checkpoint(3).join("model/model.safetensors"),
        job.checkpoint(3).join("optimizer.safetensors"),
        job.out().join("best/model.safetensors"),
    ] {
        assert_eq!(mode(&f), usual, "{}", f.display());
    }
}

// Item 6: data loss is reported at startup and in summary.json.

#[test]
fn data_loss_is_logged_and_kept_in_the_summary() {
    let job = Job::new("");
    // `echo`: 32 train lines, 2 usable valid lines, 5 valid lines whose prompt alone fills
    // max_seq_len (24 tokens: 60 words), 3 malformed lines.
    let p = job.dir.path().join("echo.jsonl");
    let mut f = std::fs::File::create(&p).unwrap();
    let line = |prompt: String, split: &str| {
        serde_json::json!({"prompt": prompt, "completion": "ok", "split": split}).to_string()
    };
    for i in 0..32 {
        writeln!(f, "{}", line(format!("repeat {i}"), "train")).unwrap();
    }
    for i in 0..2 {
        writeln!(f, "{}", line(format!("repeat {i}"), "valid")).unwrap();
    }
    for _ in 0..5 {
        writeln!(f, "{}", line("word ".repeat(60), "valid")).unwrap();
    }
    for _ in 0..3 {
        writeln!(f, "{{\"prompt\": ").unwrap();
    }
    drop(f);
    let o = job.run(&[
        "--set",
        "train.max_steps=2",
        "--set",
        "data.on_bad_line=\"skip\"",
    ]);
    let text = ok(&o);
    assert!(
        text.contains("task `echo`: train 32/32, valid 2/7"),
        "per-task line: {text}"
    );
    assert!(text.contains("shrank from 7 records to 2"), "{text}");
    assert!(text.contains("fewer than the probe's 4"), "{text}");
    let summary: serde_json::Value =
        serde_json::from_slice(&file_bytes(&job.out().join("summary.json"))).unwrap();
    let echo = &summary["data"]["tasks"][1];
    assert_eq!(echo["name"], "echo");
    assert_eq!(echo["valid"], 2);
    assert_eq!(echo["dropped_no_loss_token"], 5);
    assert_eq!(echo["dropped_overlong"], 0);
    let skipped: u64 = echo["skipped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(skipped, 3);
    let warnings = summary["data"]["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("skipped")),
        "{warnings:?}"
    );
}

// Item 7: eval does not apply the training policy's requirements.

#[test]
fn eval_without_train_samples_evaluates_the_valid_split() {
    let job = Job::new("");
    ok(&job.run(&["--set", "train.max_steps=2"]));
    // Only the validation lines of a task file.
    let all = std::fs::read_to_string(job.dir.path().join("add.jsonl")).unwrap();
    let valid: Vec<&str> = all.lines().filter(|l| l.contains("\"valid\"")).collect();
    assert_eq!(valid.len(), 8);
    let p = job.dir.path().join("add-valid.jsonl");
    std::fs::write(&p, valid.join("\n")).unwrap();
    let o = Command::new(bin())
        .args(["eval", "--json", "--split", "valid", "--model"])
        .arg(job.out().join("best"))
        .arg("--task")
        .arg(format!("add={}", p.display()))
        .output()
        .unwrap();
    ok(&o);
    let only: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The same 8 samples inside the full file give the same result.
    let o = Command::new(bin())
        .args(["eval", "--json", "--split", "valid", "--model"])
        .arg(job.out().join("best"))
        .arg("--task")
        .arg(format!(
            "add={}",
            job.dir.path().join("add.jsonl").display()
        ))
        .output()
        .unwrap();
    ok(&o);
    let full: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(only["tasks"][0]["tokens"], full["tasks"][0]["tokens"]);
    assert_eq!(only["tasks"][0]["nll"], full["tasks"][0]["nll"]);
}
