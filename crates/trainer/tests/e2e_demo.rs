//! End to end: a shortened `configs/demo.toml` (the embedded default: the six shipped tasks,
//! the SmolLM2 tokenizer, CoBa) under `mpirun -n 2`, then assertions on what it wrote:
//! weights sum to 1 and leave uniform after W, every task's validation ratio first falls
//! below 1, checkpoint and `best/` exist and `best/` reproduces its logged validation loss
//! through `coba-dist eval`, and the plots are non-empty PNGs.
//!
//! Needs `mpirun` and a binary built with `--features collectives/mpi` (the README's test
//! command); without them it runs the same job on one process and says so (under `CI=true`
//! missing MPI is a failure).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn mpirun() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mpirun"))
            .find(|p| p.is_file())
    });
    if found.is_none() || !collectives::MPI_COMPILED {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true but mpirun is missing or the binary lacks the `mpi` feature"
        );
        eprintln!("NOTE: no MPI: running the shortened demo on one process");
        return None;
    }
    found
}

#[test]
fn shortened_demo_on_two_ranks_writes_what_it_promises() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let bin = env!("CARGO_BIN_EXE_coba-dist");
    let sets = [
        format!("output_dir={:?}", out.display().to_string()),
        format!(
            "data.cache_dir={:?}",
            tmp.path().join("cache").display().to_string()
        ),
        "train.max_steps=12".into(),
        "train.micro_batch_size=2".into(),
        "train.eval_interval=6".into(),
        "train.eval_micro_batch_size=16".into(),
        "train.lr_warmup_steps=2".into(),
        "model.arch.hidden_size=32".into(),
        "model.arch.num_hidden_layers=1".into(),
        "model.arch.num_attention_heads=2".into(),
        "model.arch.num_key_value_heads=1".into(),
        "model.arch.intermediate_size=64".into(),
        "data.max_seq_len=128".into(),
        "coba.warmup_steps=4".into(),
        "coba.history_length=4".into(),
        "coba.update_interval=2".into(),
        "coba.probe_samples_per_task=2".into(),
        "checkpoint.every_steps=6".into(),
        "runtime.threads=1".into(),
    ];
    let mut cmd = match mpirun() {
        Some(m) => {
            let mut c = Command::new(m);
            c.args(["-n", "2", "--oversubscribe"])
                .arg(bin)
                .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
            if !Path::new("/usr/bin/ssh").exists() {
                c.env("OMPI_MCA_plm", "isolated");
            }
            c
        }
        None => Command::new(bin),
    };
    for s in &sets {
        cmd.arg("--set").arg(s);
    }
    let o = cmd.current_dir(repo_root()).output().unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let header = &lines[0];
    let tasks: Vec<String> = header["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(tasks.len(), 6);
    let steps = &lines[1..];
    assert_eq!(steps.len(), 12);
    let k = tasks.len() as f64;
    let mut moved = false;
    for s in steps {
        let w: Vec<f64> = tasks
            .iter()
            .map(|t| s["weights"][t].as_f64().unwrap())
            .collect();
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{s}");
        let step = s["step"].as_u64().unwrap();
        if step < 4 {
            assert!(
                w.iter().all(|x| (x - 1.0 / k).abs() < 1e-15),
                "warm-up step {step}"
            );
        } else {
            moved |= w.iter().any(|x| (x - 1.0 / k).abs() > 1e-6);
        }
    }
    assert!(moved, "weights never left uniform after W");
    let first_eval = steps.iter().find(|s| s.get("val_loss").is_some()).unwrap();
    for t in &tasks {
        let ratio = first_eval["val_loss"][t].as_f64().unwrap()
            / header["initial_val_loss"][t].as_f64().unwrap();
        assert!(ratio < 1.0, "task {t}: first validation ratio {ratio}");
    }

    assert!(out.join("checkpoints/step-00000012/state.json").is_file());
    let best = out.join("best");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(best.join("summary.json")).unwrap()).unwrap();
    let o = Command::new(bin)
        .args(["eval", "--json", "--micro-batch", "7", "--config"])
        .arg(out.join("config.toml"))
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let eval: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for r in eval["tasks"].as_array().unwrap() {
        let name = r["name"].as_str().unwrap();
        let logged = summary["val_loss"][name].as_f64().unwrap();
        let now = r["nll"].as_f64().unwrap();
        assert!(
            (logged - now).abs() < 1e-4,
            "best/ {name}: logged {logged}, eval {now}"
        );
    }

    // best/ is self-contained: generate finds its tokenizer.json.
    let o = Command::new(bin)
        .args([
            "generate",
            "--max-new-tokens",
            "3",
            "--prompt",
            "Add 2 and 3.",
            "--model",
        ])
        .arg(&best)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    for f in [
        "val_ratio.png",
        "val_ratio_normalized.png",
        "weights.png",
        "df.png",
        "train_loss.png",
    ] {
        let bytes = std::fs::read(out.join("plots").join(f)).unwrap();
        assert!(bytes.len() > 1000, "{f}: {} bytes", bytes.len());
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{f}");
    }
}
