//! Every scenario in `tests/data/coba/*.json` (MFTCoder's CoBa with guards, and the baselines),
//! replayed through the library: weights and intermediates within 1e-9.

use coba::{MethodKind, Source, Variant, Weighter, WeighterConfig};
use serde_json::Value;
use std::path::PathBuf;

const TOL: f64 = 1e-9;

fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/coba")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= TOL,
            "{what}[{i}]: got {g}, want {w} (diff {:e})",
            (g - w).abs()
        );
    }
}

/// Replays one JSON scenario; returns the number of steps checked.
fn check_scenario(path: &std::path::Path) -> usize {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let hp = &doc["hyperparameters"];
    let config = WeighterConfig {
        method: doc["method"]
            .as_str()
            .unwrap()
            .parse::<MethodKind>()
            .unwrap(),
        variant: doc["variant"]
            .as_str()
            .map(|v| v.parse::<Variant>().unwrap())
            .unwrap_or_default(),
        warmup_steps: hp["warmup_steps"].as_u64().unwrap(),
        history_length: hp["history_length"].as_u64().unwrap() as usize,
        tau: hp["tau"].as_f64().unwrap(),
        update_interval: hp["update_interval"].as_u64().unwrap(),
        signal: coba::Signal::Valid,
    };
    let initial = floats(&doc["initial_loss"]);
    let valid = doc["valid_loss"].as_object().unwrap();
    let mut weighter = Weighter::new(&config, &initial).unwrap();
    let expected = doc["expected"].as_array().unwrap();
    for record in expected {
        let step = record["step"].as_u64().unwrap();
        let got = weighter.weights_for_step(step).unwrap();
        let ctx = format!("{name} step {step}");
        let source = match record["source"].as_str().unwrap() {
            "warmup" => Source::Warmup,
            "computed" => Source::Computed,
            "carried" => Source::Carried,
            other => panic!("{ctx}: unknown source {other}"),
        };
        assert_eq!(got.source, source, "{ctx}: source");
        assert_close(
            &format!("{ctx} weights"),
            &got.weights,
            &floats(&record["weights"]),
        );
        if source == Source::Computed && config.method == MethodKind::Coba {
            let ex = got.explain.as_ref().expect("coba explains computed steps");
            assert_close(&format!("{ctx} rcs"), &ex.rcs, &floats(&record["rcs"]));
            assert_close(&format!("{ctx} acs"), &ex.acs, &floats(&record["acs"]));
            assert_close(
                &format!("{ctx} task_slopes"),
                &ex.task_slopes,
                &floats(&record["task_slopes"]),
            );
            assert_close(
                &format!("{ctx} total_slope"),
                &[ex.total_slope],
                &[record["total_slope"].as_f64().unwrap()],
            );
            assert_close(
                &format!("{ctx} df"),
                &[ex.df],
                &[record["df"].as_f64().unwrap()],
            );
            assert_eq!(
                ex.acs_window as u64,
                record["acs_window"].as_u64().unwrap(),
                "{ctx} m"
            );
            assert_eq!(
                ex.df_len as u64,
                record["df_len"].as_u64().unwrap(),
                "{ctx} n"
            );
            assert_eq!(
                ex.floor_applied,
                record["floor_applied"].as_bool().unwrap(),
                "{ctx} floor_applied"
            );
        }
        if weighter.is_probe_step(step) {
            if let Some(losses) = valid.get(&step.to_string()) {
                let losses: Vec<Option<f64>> = floats(losses).into_iter().map(Some).collect();
                weighter.observe_probe(step, &losses).unwrap();
            }
        }
    }
    expected.len()
}

#[test]
fn every_shared_vector_replays_within_1e9() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(vector_dir())
        .expect("tests/data/coba exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 20,
        "expected the full vector set, found {}",
        paths.len()
    );
    let mut failures = Vec::new();
    for p in &paths {
        match std::panic::catch_unwind(|| check_scenario(p)) {
            Ok(steps) => assert!(steps > 0),
            Err(e) => failures.push(format!(
                "{}: {}",
                p.display(),
                e.downcast_ref::<String>().cloned().unwrap_or_default()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} scenarios failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
