//! `coba-dist data stats` end to end (issue 12, item 10: `--set` overrides on `--config`).

mod harness;

use harness::{coba_dist, text};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn tokenizer_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/tokenizers/smollm2/tokenizer.json")
}

/// A config with one task: `short` samples of a few tokens and `long` samples of about 200
/// words each.
fn setup(dir: &Path, short: usize, long: usize) -> PathBuf {
    let words = "word ".repeat(200);
    let mut body = String::new();
    for i in 0..short {
        body.push_str(&format!(
            "{{\"prompt\": \"q{i}\", \"completion\": \"a{i}\"}}\n"
        ));
    }
    for i in 0..long {
        body.push_str(&format!(
            "{{\"prompt\": \"p{i}\", \"completion\": \"{words}\"}}\n"
        ));
    }
    let data = dir.join("t.jsonl");
    std::fs::write(&data, body).unwrap();
    let toml = format!(
        r#"output_dir = "{out}"
[model]
tokenizer = "{tok}"
[model.arch]
hidden_size = 32
num_hidden_layers = 1
num_attention_heads = 4
[data]
tasks = [{{ name = "t", paths = ["{data}"] }}]
"#,
        out = dir.join("out").display(),
        tok = tokenizer_path().display(),
        data = data.display()
    );
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, toml).unwrap();
    cfg
}

/// Issue 12, item 10: `data stats --config F --set data.max_seq_len=N` applies the override.
#[test]
fn data_stats_accepts_set() {
    let dir = tempfile::tempdir().unwrap();
    let (short, long) = (20, 6);
    let cfg = setup(dir.path(), short, long);
    let cfg = cfg.to_str().unwrap();
    let truncated = |o: &Output| -> u64 {
        assert!(o.status.success(), "{}", text(o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["tasks"][0]["truncated"].as_u64().unwrap()
    };
    // `data stats --config cfg ARGS`.
    let stats = |args: &[&str]| coba_dist(&[&["data", "stats", "--config", cfg], args].concat());
    let set_32 = ["--set", "data.max_seq_len=32"];
    // Default max_seq_len (1024): the ~200-word samples fit.
    assert_eq!(truncated(&stats(&["--json"])), 0);
    // 32 positions: every long sample is truncated, no short one (a few tokens each).
    let o = stats(&[&set_32[..], &["--json"]].concat());
    assert_eq!(truncated(&o), long as u64);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["max_seq_len"], 32);
    // The table form shows it too, and --set without --config is a usage error.
    let o = stats(&set_32);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("drop_long") && out.contains("trunc"), "{out}");
    let tok = tokenizer_path();
    let o = coba_dist(&[
        "data",
        "stats",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--task",
        "t=x.jsonl",
        "--set",
        "data.max_seq_len=32",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
