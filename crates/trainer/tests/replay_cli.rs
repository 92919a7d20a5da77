//! `coba-dist replay` end to end: every shared vector through the binary (weights and
//! `--explain` intermediates within 1e-9), and malformed files (exit 2, nothing on stdout).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TOL: f64 = 1e-9;

fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/coba")
}

fn coba_dist(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coba-dist"))
        .args(args)
        .output()
        .expect("run coba-dist")
}

fn close(what: &str, got: &str, want: &Value) {
    let g: f64 = got
        .parse()
        .unwrap_or_else(|_| panic!("{what}: `{got}` is not a float"));
    let w = want
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: expected a number, got {want}"));
    assert!((g - w).abs() <= TOL, "{what}: got {g}, want {w}");
}

fn check(json_path: &Path) {
    let name = json_path.file_stem().unwrap().to_string_lossy().to_string();
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap();
    let csv_path = json_path.with_extension("csv");
    let hp = &doc["hyperparameters"];
    let method = doc["method"].as_str().unwrap();
    let coba = method == "coba";
    let mut args: Vec<String> = vec![
        "replay".into(),
        "--losses".into(),
        csv_path.to_string_lossy().into(),
        "--method".into(),
        method.into(),
        "--warmup-steps".into(),
        hp["warmup_steps"].to_string(),
        "--update-interval".into(),
        hp["update_interval"].to_string(),
    ];
    if coba {
        for (flag, v) in [
            ("--history-length", hp["history_length"].to_string()),
            ("--tau", hp["tau"].to_string()),
            ("--variant", doc["variant"].as_str().unwrap().to_string()),
        ] {
            args.push(flag.into());
            args.push(v);
        }
        args.push("--explain".into());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = coba_dist(&argv);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let tasks: Vec<&str> = doc["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let k = tasks.len();
    let mut want_header = vec!["step".to_string(), "source".to_string()];
    want_header.extend(tasks.iter().map(|t| t.to_string()));
    if coba {
        want_header.extend(["df".to_string(), "total_slope".to_string()]);
        for p in ["rcs", "acs", "slope"] {
            want_header.extend(tasks.iter().map(|t| format!("{p}_{t}")));
        }
    }
    assert_eq!(header, want_header, "{name}: header");
    let expected = doc["expected"].as_array().unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), expected.len(), "{name}: one row per step");
    for (row, rec) in rows.iter().zip(expected) {
        let ctx = format!("{name} step {}", rec["step"]);
        assert_eq!(row.len(), header.len(), "{ctx}: cells");
        assert_eq!(row[0], rec["step"].to_string(), "{ctx}: step");
        assert_eq!(row[1], rec["source"].as_str().unwrap(), "{ctx}: source");
        for i in 0..k {
            close(&format!("{ctx} w[{i}]"), row[2 + i], &rec["weights"][i]);
        }
        if !coba {
            continue;
        }
        if row[1] == "computed" {
            close(&format!("{ctx} df"), row[2 + k], &rec["df"]);
            close(
                &format!("{ctx} total_slope"),
                row[3 + k],
                &rec["total_slope"],
            );
            for (j, key) in ["rcs", "acs", "task_slopes"].iter().enumerate() {
                for i in 0..k {
                    close(
                        &format!("{ctx} {key}[{i}]"),
                        row[4 + k + j * k + i],
                        &rec[key][i],
                    );
                }
            }
        } else {
            assert!(
                row[2 + k..].iter().all(|c| c.is_empty()),
                "{ctx}: explain cells empty"
            );
        }
    }
}

#[test]
fn every_shared_vector_through_the_cli() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(vector_dir())
        .expect("tests/data/coba exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 20);
    for p in &paths {
        check(p);
    }
}

fn write_tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coba-dist-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn malformed_file_exits_2_with_nothing_on_stdout() {
    let cases = [
        (
            "bad_number.csv",
            "step,a,b\n0,1,1\n1,0.9,oops\n",
            "line 3, column 3",
        ),
        ("cells.csv", "step,a,b\n0,1,1\n1,0.9\n", "line 3, column 2"),
        ("no_row0.csv", "step,a\n1,0.9\n", "line 2"),
        (
            "order.csv",
            "step,a\n0,1\n2,0.9\n1,0.8\n",
            "line 4, column 1",
        ),
        ("dup.csv", "step,a,a\n0,1,1\n", "line 1, column 3"),
        (
            "gap.csv",
            "step,a\n0,1\n1,0.9\n3,0.8\n",
            "step 2 is a probe step",
        ),
    ];
    for (file, text, want) in cases {
        let p = write_tmp(file, text);
        let out = coba_dist(&[
            "replay",
            "--losses",
            p.to_str().unwrap(),
            "--warmup-steps",
            "0",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(out.stdout.is_empty(), "{file}: stdout must be empty");
        assert!(stderr.contains(want), "{file}: `{stderr}` lacks `{want}`");
        assert!(
            stderr.contains(file),
            "{file}: `{stderr}` must name the file"
        );
    }
}

#[test]
fn invalid_settings_and_coba_only_flags_exit_2() {
    let p = write_tmp("ok.csv", "step,a,b\n0,1,1\n1,0.9,0.8\n");
    let path = p.to_str().unwrap();
    for args in [
        vec!["--tau", "0"],
        vec!["--history-length", "1"],
        vec!["--update-interval", "0"],
        vec!["--method", "lbtw", "--explain"],
        vec!["--method", "dwa", "--tau", "2.0"],
    ] {
        let mut argv = vec!["replay", "--losses", path];
        argv.extend(&args);
        let out = coba_dist(&argv);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty());
    }
}
