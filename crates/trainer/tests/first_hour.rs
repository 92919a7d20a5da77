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
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("coba-dist: error"), "{err}");
    assert!(err.contains("echo.jsonl:41"), "the file and line: {err}");
    // Printed once (by rank 0), not once per rank.
    assert_eq!(err.matches("coba-dist: error").count(), 1, "{err}");
}

#[test]
fn errors_under_mpirun_task_order_mismatch_on_resume_is_printed() {
    let job = Job::new("");
    let Some(o) = job.mpirun(
        2,
        &[
            "--set",
            "train.max_steps=3",
            "--set",
            "train.micro_batch_size=2",
        ],
    ) else {
        return;
    };
    ok(&o);
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
    let o = job
        .mpirun(
            2,
            &["--resume", "auto", "--set", "train.micro_batch_size=2"],
        )
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("coba-dist: error") && err.contains("tasks"),
        "{err}"
    );
}

// Item 3: resume refuses another architecture and a schedule that changes a learning rate.

#[test]
fn resume_refuses_another_architecture_naming_both_values() {
    let job = Job::new("");
    let mb = ["--set", "train.micro_batch_size=2"];
    let Some(o) = job.mpirun(2, &[&mb[..], &["--set", "train.max_steps=3"]].concat()) else {
        return;
    };
    ok(&o);
    let before = std::fs::read_to_string(job.out().join("config.toml")).unwrap();
    let o = job
        .mpirun(
            2,
            &[
                &mb[..],
                &["--resume", "auto", "--set", "model.arch.hidden_size=32"],
            ]
            .concat(),
        )
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
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
    let Some(o) = job.mpirun(
        2,
        &[
            "--set",
            "train.micro_batch_size=2",
            "--set",
            "train.lr_schedule=\"cosine\"",
            "--set",
            "train.max_steps=3",
        ],
    ) else {
        return;
    };
    ok(&o);
    let o = job
        .mpirun(
            2,
            &[
                "--resume",
                "auto",
                "--set",
                "train.micro_batch_size=2",
                "--set",
                "train.lr_schedule=\"cosine\"",
                "--set",
                "train.max_steps=6",
            ],
        )
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
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
    let mb = ["--set", "train.micro_batch_size=2"];
    let Some(o) = job.mpirun(2, &[&mb[..], &["--set", "train.max_steps=3"]].concat()) else {
        return;
    };
    ok(&o);
    assert_eq!(job.header()["total_steps"], 3);
    let o = job
        .mpirun(2, &[&mb[..], &["--resume", "auto"]].concat())
        .unwrap();
    let text = ok(&o);
    assert!(text.contains("instead of 3"), "{text}");
    assert_eq!(job.header()["total_steps"], 6);
    // Every step once, in order, after the rewritten header.
    assert_eq!(
        job.steps().keys().copied().collect::<Vec<_>>(),
        (0..6).collect::<Vec<u64>>()
    );
    let lines = std::fs::read_to_string(job.out().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 7);
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
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
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
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
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
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
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
