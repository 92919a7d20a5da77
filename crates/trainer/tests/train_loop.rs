//! The training loop end to end through the `coba-dist` binary, on a tiny random Llama and
//! synthetic tasks: CoBa weights equal `replay` on the run's own probes, resume is
//! bit-identical (1 and 2 ranks), N ranks equal 1 rank, a kill during a checkpoint write
//! resumes from the previous one, a NaN loss and SIGTERM stop cleanly.
//!
//! Multi-rank tests need `mpirun` and a binary built with `--features collectives/mpi` (the
//! README's test command); otherwise they print why they skip (and fail under `CI=true`).

mod harness;

use harness::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn weights(v: &serde_json::Value, key: &str) -> Vec<f64> {
    ["add", "echo", "words"]
        .iter()
        .map(|t| v[key][*t].as_f64().unwrap_or(f64::NAN))
        .collect()
}

#[test]
fn coba_weights_in_the_loop_equal_replay_of_the_logged_probes() {
    let job = Job::new("");
    ok(&job.run(&["--set", "train.max_steps=9"]));
    let header = job.header();
    let steps = job.steps();
    assert_eq!(steps.len(), 9);
    // CSV in replay's format from the run's own initial and probe losses.
    let names = ["add", "echo", "words"];
    let mut csv = String::from("step,add,echo,words\n");
    let row = |step: u64, v: &serde_json::Value| {
        let cells: Vec<String> = names
            .iter()
            .map(|n| v[*n].as_f64().map_or(String::new(), |x| format!("{x:?}")))
            .collect();
        format!("{step},{}\n", cells.join(","))
    };
    csv += &row(0, &header["initial_val_loss"]);
    for (s, v) in &steps {
        if let Some(p) = v.get("probe_val_loss") {
            assert!(s % 2 == 0 && *s >= 2, "probe at step {s}");
            csv += &row(*s, p);
        }
    }
    let csv_path = job.dir.path().join("probes.csv");
    std::fs::write(&csv_path, &csv).unwrap();
    let out = Command::new(bin())
        .args(["replay", "--losses"])
        .arg(&csv_path)
        .args([
            "--warmup-steps",
            "2",
            "--history-length",
            "4",
            "--update-interval",
            "2",
        ])
        .output()
        .unwrap();
    ok(&out);
    let replay = String::from_utf8(out.stdout).unwrap();
    let mut checked = 0;
    for line in replay.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let step: u64 = cells[0].parse().unwrap();
        let Some(rec) = steps.get(&step) else {
            continue;
        };
        assert_eq!(
            rec["weights_source"].as_str().unwrap(),
            cells[1],
            "step {step}"
        );
        let logged = weights(rec, "weights");
        for (i, cell) in cells[2..].iter().enumerate() {
            let want: f64 = cell.parse().unwrap();
            assert!(
                (logged[i] - want).abs() <= 1e-12,
                "step {step} task {i}: loop {} vs replay {want}",
                logged[i]
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 9);
    // The weights moved away from uniform after W and sum to 1.
    let w8 = weights(&steps[&8], "weights");
    assert!((w8.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert!(w8.iter().any(|w| (w - 1.0 / 3.0).abs() > 1e-6), "{w8:?}");
    assert_eq!(steps[&0]["weights_source"], "warmup");
    assert_eq!(steps[&2]["weights_source"], "computed");
    assert_eq!(steps[&3]["weights_source"], "carried");
    // best/ exists with the tokenizer and template beside the weights.
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "template.json",
        "summary.json",
    ] {
        assert!(job.out().join("best").join(f).is_file(), "best/{f}");
    }
}

fn assert_same_run(a: &Job, b: &Job, last: u64) {
    let (ca, cb) = (a.checkpoint(last), b.checkpoint(last));
    for f in ["model/model.safetensors", "optimizer.safetensors"] {
        assert!(
            file_bytes(&ca.join(f)) == file_bytes(&cb.join(f)),
            "{f} differs between the runs"
        );
    }
    let (sa, sb) = (a.steps(), b.steps());
    assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
    for (s, ra) in &sa {
        let rb = &sb[s];
        for key in ["weights", "train_loss", "probe_val_loss", "val_loss"] {
            assert_eq!(ra.get(key), rb.get(key), "{key} at step {s}");
        }
    }
}

#[test]
fn resume_is_bit_identical_on_one_rank() {
    let straight = Job::new("");
    ok(&straight.run(&[]));
    let split = Job::new("");
    ok(&split.run(&["--set", "train.max_steps=3"]));
    ok(&split.run(&["--resume", "auto"]));
    assert_same_run(&straight, &split, 6);
    let st: serde_json::Value =
        serde_json::from_slice(&file_bytes(&split.checkpoint(6).join("state.json"))).unwrap();
    assert_eq!(st["next_step"], 6);
}

#[test]
fn a_fresh_start_over_old_checkpoints_or_a_changed_schedule_is_refused() {
    let job = Job::new("");
    ok(&job.run(&["--set", "train.max_steps=3"]));
    let o = job.run(&[]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--resume auto"), "{err}");
    let o = job.run(&["--resume", "auto", "--set", "coba.warmup_steps=1"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("weighting settings"), "{err}");
    // Nothing was appended by the refused runs.
    assert_eq!(job.steps().len(), 3);
}

#[test]
fn resume_is_bit_identical_on_two_ranks() {
    let straight = Job::new("");
    let Some(o) = straight.mpirun(2, &["--set", "train.micro_batch_size=2"]) else {
        return;
    };
    ok(&o);
    let split = Job::new("");
    let two = ["--set", "train.micro_batch_size=2"];
    ok(&split
        .mpirun(2, &[two[0], two[1], "--set", "train.max_steps=3"])
        .unwrap());
    ok(&split
        .mpirun(2, &[two[0], two[1], "--resume", "auto"])
        .unwrap());
    assert_same_run(&straight, &split, 6);
}

#[test]
fn two_ranks_equal_one_rank_on_the_same_global_batch() {
    let two = Job::new("");
    let Some(o) = two.mpirun(
        2,
        &[
            "--set",
            "train.micro_batch_size=2",
            "--set",
            "train.max_steps=5",
        ],
    ) else {
        return;
    };
    ok(&o);
    assert_eq!(two.header()["world_size"], 2);
    let one = Job::new("");
    ok(&one.run(&[
        "--set",
        "train.max_steps=5",
        "--set",
        "checkpoint.every_steps=5",
    ]));
    let (p1, p2) = (params(&one.checkpoint(5)), params(&two.checkpoint(5)));
    assert_eq!(p1.keys().collect::<Vec<_>>(), p2.keys().collect::<Vec<_>>());
    for (name, a) in &p1 {
        let b = &p2[name];
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff / scale < 1e-5,
            "{name}: max diff {diff} (scale {scale})"
        );
    }
    let (s1, s2) = (one.steps(), two.steps());
    for (s, r1) in &s1 {
        for key in ["weights", "train_loss"] {
            let (a, b) = (weights(r1, key), weights(&s2[s], key));
            for (x, y) in a.iter().zip(&b) {
                let same = (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-6 * x.abs().max(1.0);
                assert!(same, "{key} step {s}: {a:?} vs {b:?}");
            }
        }
    }
}

#[test]
fn a_kill_during_a_checkpoint_write_resumes_from_the_previous_one() {
    let straight = Job::new("");
    ok(&straight.run(&["--set", "checkpoint.every_steps=2"]));
    let crashed = Job::new("");
    let o = crashed.run(&[
        "--set",
        "checkpoint.every_steps=2",
        "--set",
        "runtime.crash_in_checkpoint=4",
    ]);
    assert!(!o.status.success(), "the crash hook did not fire");
    assert!(crashed.checkpoint(2).join("state.json").is_file());
    assert!(
        !crashed.checkpoint(4).exists(),
        "a half-written checkpoint looks complete"
    );
    ok(&crashed.run(&["--set", "checkpoint.every_steps=2", "--resume", "auto"]));
    assert_same_run(&straight, &crashed, 6);
}

#[test]
fn a_nan_loss_stops_with_the_step_and_task_and_keeps_the_checkpoint() {
    let job = Job::new("inject_nan = { step = 4, task = \"echo\" }");
    let o = job.run(&[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("step 4") && err.contains("`echo`"), "{err}");
    assert!(
        err.contains("the last checkpoint (step 3) is intact"),
        "{err}"
    );
    assert!(job.checkpoint(3).join("state.json").is_file());
    assert_eq!(job.steps().keys().max(), Some(&3));
    // Before any checkpoint, the message says so (it used to say "checkpoint (none)").
    let job = Job::new("inject_nan = { step = 0, task = \"echo\" }");
    let o = job.run(&[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no checkpoint was written yet"), "{err}");
}

#[test]
fn sigterm_checkpoints_and_exits_cleanly() {
    let job = Job::new("");
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let child = Command::new(bin())
        .arg("--config")
        .arg(job.config())
        .args([
            "--set",
            "train.max_steps=100000",
            "--set",
            "checkpoint.every_steps=0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = job.out().join("metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 4 {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_slice(&file_bytes(&job.out().join("summary.json"))).unwrap();
    assert_eq!(summary["stopped_by"], "signal");
    let steps = summary["steps"].as_u64().unwrap();
    assert!(job.checkpoint(steps).join("state.json").is_file());
    assert_eq!(*job.steps().keys().max().unwrap() + 1, steps);
}

#[test]
fn config_errors_exit_2_naming_the_key() {
    let job = Job::new("");
    let o = job.run(&["--set", "train.lrr=1.0"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("train.lrr") && err.contains("did you mean `train.lr`"),
        "{err}"
    );
    let o = Command::new(bin())
        .args(["check", "--config"])
        .arg(job.config())
        .output()
        .unwrap();
    ok(&o);
    // `data stats --config` reads the tasks and [data] settings of the same file.
    let o = Command::new(bin())
        .args(["data", "stats", "--json", "--config"])
        .arg(job.config())
        .output()
        .unwrap();
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    for t in tasks {
        assert_eq!(
            (t["train"].as_u64(), t["valid"].as_u64()),
            (Some(32), Some(8)),
            "{t}"
        );
    }
}

/// `signal = "train"`: LBTW's weights follow the run's own logged training losses
/// (`w_i ∝ sqrt(l_i / l_i(0))`, `l_i` the latest training loss of task i up to the last probe,
/// `l_i(0)` the initial validation loss), computed here from metrics.jsonl; no validation
/// probe is logged; CoBa refuses the signal.
#[test]
fn train_signal_lbtw_weights_follow_the_logged_training_losses() {
    let job = Job::new("");
    ok(&job.run(&[
        "--set",
        "train.max_steps=9",
        "--set",
        "coba.method=lbtw",
        "--set",
        "coba.signal=train",
    ]));
    let l0 = weights(&job.header(), "initial_val_loss");
    let steps = job.steps();
    let mut latest: Vec<Option<f64>> = vec![None; 3];
    let mut at_probe: Option<Vec<f64>> = None;
    let mut computed = 0;
    for (s, rec) in &steps {
        assert!(rec.get("probe_val_loss").is_none() && rec.get("val_ratio").is_none());
        let w = weights(rec, "weights");
        if rec["weights_source"] == "computed" {
            let want: Vec<f64> = match &at_probe {
                None => vec![1.0 / 3.0; 3],
                Some(l) => {
                    let r: Vec<f64> = l.iter().zip(&l0).map(|(l, l0)| (l / l0).sqrt()).collect();
                    let sum: f64 = r.iter().sum();
                    r.iter().map(|x| x / sum).collect()
                }
            };
            for i in 0..3 {
                assert!(
                    (w[i] - want[i]).abs() <= 1e-12,
                    "step {s}: {w:?} vs {want:?}"
                );
            }
            computed += 1;
        }
        for (i, l) in weights(rec, "train_loss").iter().enumerate() {
            if l.is_finite() {
                latest[i] = Some(*l);
            }
        }
        if rec.get("probe_time_s").is_some() {
            at_probe = Some(latest.iter().map(|l| l.expect("every task seen")).collect());
        }
    }
    assert!(computed >= 3, "{computed} computed steps");
    let w8 = weights(&steps[&8], "weights");
    assert!(w8.iter().any(|w| (w - 1.0 / 3.0).abs() > 1e-6), "{w8:?}");

    // Resume keeps the carried training losses (state.json): bit-identical to one run.
    let train = ["--set", "coba.method=famo", "--set", "coba.signal=train"];
    let straight = Job::new("");
    ok(&straight.run(&train));
    let split = Job::new("");
    ok(&split.run(&[&train[..], &["--set", "train.max_steps=3"]].concat()));
    ok(&split.run(&[&train[..], &["--resume", "auto"]].concat()));
    assert_same_run(&straight, &split, 6);
    // A resume with the other signal is refused.
    let out = split.run(&[
        "--set",
        "coba.method=famo",
        "--set",
        "train.max_steps=8",
        "--resume",
        "auto",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let job = Job::new("");
    let out = job.run(&["--set", "train.max_steps=2", "--set", "coba.signal=train"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("signal"));
}

/// `compare` runs the training-loss variant and STL: `lbtw-train` trains with the train
/// signal (its state.json says so), `stl` trains one run per task, and each STL row is that
/// task's best ratio in its own run's metrics.jsonl; an impossible variant exits 2.
#[test]
fn compare_runs_training_loss_variants_and_stl() {
    let job = Job::new("");
    let cfg = job.config().display().to_string();
    let out = coba_dist(&[
        "compare",
        "--config",
        &cfg,
        "--methods",
        "uniform,lbtw-train,stl",
        "--set",
        "train.max_steps=6",
    ]);
    ok(&out);
    let table = String::from_utf8(out.stdout).unwrap();
    let st: serde_json::Value = serde_json::from_slice(&file_bytes(
        &job.out()
            .join("lbtw-train/checkpoints/step-00000006/state.json"),
    ))
    .unwrap();
    assert_eq!(st["weighting"]["method"], "lbtw");
    assert_eq!(st["weighting"]["signal"], "train");
    for task in ["add", "echo", "words"] {
        let dir = job.out().join("stl").join(task);
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let mut lines = text.lines();
        let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(header["tasks"], serde_json::json!([task]));
        let l0 = header["initial_val_loss"][task].as_f64().unwrap();
        // The task's best validation ratio over its own evaluations.
        let (best, step) = lines
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|r| Some((r["val_loss"][task].as_f64()? / l0, r["step"].as_u64()? + 1)))
            .fold((f64::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a });
        let row = format!("| {task} | stl | {best:.4} | {step} |");
        assert!(table.contains(&row), "{row} not in\n{table}");
    }
    let out = coba_dist(&["compare", "--config", &cfg, "--methods", "coba-train"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// `[eval] metrics`: at every evaluation the record holds each task's accuracy (`null` for
/// tasks without answers in the bundle), equal to `coba-dist eval --metrics accuracy` run on
/// the checkpoint written at the same step.
#[test]
fn accuracy_during_training_equals_eval_on_the_same_checkpoint() {
    let bundle = tempfile::tempdir().unwrap();
    let extra = format!(
        "[eval]\nmetrics = [\"accuracy\"]\ndata = {:?}\nmax_problems_per_task = 3\nmax_new_tokens = 4\n",
        bundle.path().display().to_string()
    );
    let job = Job::new(&extra);
    // Give the `add` task ids and a test split, and the bundle its answers.
    let add = job.dir.path().join("add.jsonl");
    let mut lines: Vec<serde_json::Value> = std::fs::read_to_string(&add)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut answers = String::new();
    for i in 0..4u64 {
        lines.push(serde_json::json!({"prompt": format!("{i} + 1 ="), "completion": format!("{}", i + 1), "split": "test"}));
        answers += &format!(
            "{}\n",
            serde_json::json!({"id": format!("add/t{i}"), "answer": format!("{}", i + 1)})
        );
    }
    let mut text = String::new();
    for (k, l) in lines.iter_mut().enumerate() {
        let id = if l["split"] == "test" {
            format!("add/t{}", k - 40)
        } else {
            format!("add/{k}")
        };
        l["id"] = serde_json::json!(id);
        text += &format!("{l}\n");
    }
    std::fs::write(&add, text).unwrap();
    std::fs::write(bundle.path().join("add_test.jsonl"), answers).unwrap();
    ok(&job.run(&[]));
    let steps = job.steps();
    let evals: Vec<u64> = steps
        .iter()
        .filter(|(_, r)| r.get("val_loss").is_some())
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(evals, [2, 5]);
    for (s, r) in &steps {
        assert_eq!(r.get("accuracy").is_some(), evals.contains(s), "step {s}");
    }
    let acc = &steps[&2]["accuracy"];
    assert!(acc["echo"].is_null() && acc["words"].is_null(), "{acc}");
    let logged = acc["add"].as_f64().unwrap();
    let model = job.checkpoint(3).join("model").display().to_string();
    let tok = tokenizer().display().to_string();
    let task = format!("add={}", add.display());
    let b = bundle.path().display().to_string();
    let out_dir = job.dir.path().join("eval-out").display().to_string();
    let out = coba_dist(&[
        "eval",
        "--metrics",
        "accuracy",
        "--model",
        &model,
        "--tokenizer",
        &tok,
        "--template",
        "chatml",
        "--task",
        &task,
        "--eval-data",
        &b,
        "--limit",
        "3",
        "--max-new-tokens",
        "4",
        "--out",
        &out_dir,
        "--json",
    ]);
    ok(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &report["rows"][0];
    assert_eq!(
        (row["task"].as_str(), row["total"].as_u64()),
        (Some("add"), Some(3))
    );
    assert_eq!(row["score"].as_f64().unwrap(), logged, "{report}");
}

/// GradNorm in the loop: each probe step logs the per-task head gradient norms, and the
/// weights of every computed step equal the library rule fed with the logged norms and probe
/// ratios; under `mpirun -n 2` (same global batch) the norms and weights equal one rank's.
#[test]
fn gradnorm_weights_follow_the_logged_norms_and_two_ranks_equal_one() {
    let args = [
        "--set",
        "train.max_steps=9",
        "--set",
        "coba.method=gradnorm",
    ];
    let one = Job::new("");
    ok(&one.run(&args));
    let l0 = weights(&one.header(), "initial_val_loss");
    let steps = one.steps();
    let mut rule = coba::GradNorm::new(3).unwrap();
    let mut observed = false;
    let mut checked = 0;
    for (s, rec) in &steps {
        if rec["weights_source"] == "computed" {
            let want = if observed {
                coba::TaskWeighter::compute(&mut rule, *s).weights
            } else {
                vec![1.0 / 3.0; 3]
            };
            let got = weights(rec, "weights");
            for i in 0..3 {
                assert!(
                    (got[i] - want[i]).abs() <= 1e-12,
                    "step {s}: {got:?} vs {want:?}"
                );
            }
            checked += 1;
        }
        if let Some(p) = rec.get("probe_val_loss") {
            let g = weights(rec, "head_grad_norm");
            // A task absent from the step's batch has no gradient (0).
            assert!(
                g.iter().all(|x| x.is_finite() && *x >= 0.0),
                "step {s}: {g:?}"
            );
            assert!(g.iter().any(|x| *x > 0.0), "step {s}: {g:?}");
            let losses: Vec<Option<f64>> = weights(&serde_json::json!({"l": p}), "l")
                .into_iter()
                .map(Some)
                .collect();
            let ratios: Vec<Option<f64>> = losses
                .iter()
                .zip(&l0)
                .map(|(l, l0)| l.map(|l| l / l0))
                .collect();
            coba::TaskWeighter::observe(
                &mut rule,
                &coba::Probe {
                    step: *s,
                    losses: &losses,
                    ratios: &ratios,
                    grad_norms: Some(&g),
                },
            )
            .unwrap();
            observed = true;
        } else {
            assert!(rec.get("head_grad_norm").is_none(), "step {s}");
        }
    }
    assert!(checked >= 3 && observed);
    let w8 = weights(&steps[&8], "weights");
    assert!(w8.iter().any(|w| (w - 1.0 / 3.0).abs() > 1e-6), "{w8:?}");

    let two = Job::new("");
    let Some(o) = two.mpirun(
        2,
        &[&args[..], &["--set", "train.micro_batch_size=2"]].concat(),
    ) else {
        return;
    };
    ok(&o);
    let two_steps = two.steps();
    for (s, r1) in &steps {
        for key in ["weights", "head_grad_norm"] {
            if r1.get(key).is_none() {
                continue;
            }
            let (a, b) = (weights(r1, key), weights(&two_steps[s], key));
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 1e-5 * x.abs().max(1e-3),
                    "{key} step {s}: {a:?} vs {b:?}"
                );
            }
        }
    }
}
