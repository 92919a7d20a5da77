//! GradNorm against `tests/data/gradnorm/vectors.json`, written by a numpy reference from the
//! paper's equations (`tests/data/gradnorm/reference.py`), at 1e-9; and through the scheduled
//! `Weighter`, which refuses a probe without gradient norms.

use coba::{GradNorm, MethodKind, Probe, TaskWeighter, WeightError, Weighter, WeighterConfig};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/gradnorm/vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn gradnorm_weights_equal_the_numpy_reference() {
    let doc = vectors();
    let l0 = floats(&doc["initial_losses"]);
    let mut rule = GradNorm::new(3).unwrap();
    assert_eq!(
        rule.compute(0).weights,
        vec![1.0 / 3.0; 3],
        "uniform before a probe"
    );
    let steps = doc["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 30);
    for s in steps {
        let losses: Vec<Option<f64>> = floats(&s["losses"]).into_iter().map(Some).collect();
        let ratios: Vec<Option<f64>> = losses
            .iter()
            .zip(&l0)
            .map(|(l, l0)| l.map(|l| l / l0))
            .collect();
        let g = floats(&s["grad_norms"]);
        rule.observe(&Probe {
            step: s["step"].as_u64().unwrap(),
            losses: &losses,
            ratios: &ratios,
            grad_norms: Some(&g),
        })
        .unwrap();
        let got = rule.compute(0).weights;
        let want = floats(&s["weights_after"]);
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-9,
                "step {}: {got:?} vs {want:?}",
                s["step"]
            );
        }
    }
}

#[test]
fn the_scheduled_weighter_feeds_norms_and_refuses_a_probe_without_them() {
    let doc = vectors();
    let config = WeighterConfig {
        method: MethodKind::Gradnorm,
        warmup_steps: 0,
        update_interval: 1,
        ..Default::default()
    };
    let l0 = floats(&doc["initial_losses"]);
    let mut w = Weighter::new(&config, &l0).unwrap();
    w.weights_for_step(0).unwrap();
    let s = &doc["steps"][0];
    let losses: Vec<Option<f64>> = floats(&s["losses"]).into_iter().map(Some).collect();
    let e = w.clone().observe_probe(1, &losses).unwrap_err();
    assert!(matches!(e, WeightError::OutOfOrder { .. }), "{e}");
    w.weights_for_step(1).unwrap();
    let e = w.clone().observe_probe(1, &losses).unwrap_err();
    assert!(matches!(e, WeightError::MissingGradNorms { .. }), "{e}");
    w.observe_probe_with_grads(1, &losses, Some(&floats(&s["grad_norms"])))
        .unwrap();
    let got = w.weights_for_step(2).unwrap().weights;
    let want = floats(&s["weights_after"]);
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-9, "{got:?} vs {want:?}");
    }
}
