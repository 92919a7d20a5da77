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

/// A task absent from the batch (`G_1 = 0`): the means run over tasks 0 and 2, task 1's
/// weight and Adam state stay put; worked by hand. Probe 1: `mean(w G) = (2 + 1) / 2 = 1.5`,
/// `mean r = (1.2 + 0.9) / 2 = 1.05`, targets `1.5 (1.2 / 1.05)^1.5 = 1.833 < 2` (w_0 falls)
/// and `1.5 (0.9 / 1.05)^1.5 = 1.190 > 1` (w_2 rises); a first Adam step moves a weight by
/// `lr g / (|g| + ε)`.
#[test]
fn an_absent_task_neither_moves_nor_drags_the_means() {
    let lr = coba::GRADNORM_LR;
    let first_step = |g: f64| lr * g / (g.abs() + 1e-8);
    let mut rule = GradNorm::new(3).unwrap();
    let probe = |step, ratios: &[f64; 3], g: &[f64; 3], rule: &mut GradNorm| {
        let r: Vec<Option<f64>> = ratios.iter().copied().map(Some).collect();
        rule.observe(&Probe {
            step,
            losses: &r,
            ratios: &r,
            grad_norms: Some(g),
        })
        .unwrap();
    };
    probe(5, &[1.2, 0.7, 0.9], &[2.0, 0.0, 1.0], &mut rule);
    let w = [1.0 - first_step(2.0), 1.0, 1.0 - first_step(-1.0)];
    let sum: f64 = w.iter().sum();
    let want: Vec<f64> = w.iter().map(|x| x * 3.0 / sum / 3.0).collect();
    let got = rule.compute(5).weights;
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-12, "{got:?} vs {want:?}");
    }
    assert!(got[0] < got[1] && got[1] < got[2], "{got:?}");
    // Probe 2: only task 1 present: its target is its own weighted norm (r / mean r = 1), so
    // the sign is 0 and nothing moves.
    let before: Vec<f64> = rule.compute(6).weights;
    probe(10, &[1.0, 0.8, 1.0], &[0.0, 3.0, 0.0], &mut rule);
    let after = rule.compute(10).weights;
    for (a, b) in after.iter().zip(&before) {
        assert!((a - b).abs() < 1e-12, "{after:?} vs {before:?}");
    }
    // No task present: no update at all.
    probe(20, &[0.5, 0.5, 0.5], &[0.0, 0.0, 0.0], &mut rule);
    assert_eq!(rule.compute(20).weights, after);
}
