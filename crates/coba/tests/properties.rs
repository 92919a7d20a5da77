//! Property tests: invariants every weighting method keeps on arbitrary loss curves.

use coba::{MethodKind, Source, Variant, Weighter, WeighterConfig};
use proptest::prelude::*;

/// One replay scenario: settings, initial losses, and a probe for every step 1..=steps
/// (`None` = absent, only generated for CoBa).
#[derive(Debug, Clone)]
struct Scenario {
    config: WeighterConfig,
    initial: Vec<f64>,
    probes: Vec<Vec<Option<f64>>>,
}

/// Losses in nats: mostly realistic, sometimes extreme (`extreme = true`) to exercise guards.
fn loss(extreme: bool) -> BoxedStrategy<f64> {
    if extreme {
        prop_oneof![
            8 => 0.05f64..8.0,
            1 => 1e-6f64..1e-3,
            1 => 1e3f64..1e6,
        ]
        .boxed()
    } else {
        (0.05f64..8.0).boxed()
    }
}

fn method() -> impl Strategy<Value = MethodKind> {
    prop::sample::select(MethodKind::ALL.to_vec())
}

fn scenario(
    method: impl Strategy<Value = MethodKind>,
    extreme: bool,
) -> impl Strategy<Value = Scenario> {
    (
        method,
        1usize..6,
        0u64..12,
        2usize..16,
        prop_oneof![Just(5.0), 0.1f64..20.0],
        1u64..4,
        prop::bool::ANY,
        1usize..60,
    )
        .prop_flat_map(move |(method, k, w, h, tau, u, paper, steps)| {
            let absent_ok = method == MethodKind::Coba;
            let cell = prop_oneof![
                9 => loss(extreme).prop_map(Some),
                1 => if absent_ok { Just(None).boxed() } else { loss(extreme).prop_map(Some).boxed() },
            ];
            (
                Just(WeighterConfig {
                    method,
                    variant: if paper { Variant::Paper } else { Variant::Mftcoder },
                    warmup_steps: w,
                    history_length: h,
                    tau,
                    update_interval: u,
                    signal: coba::Signal::Valid,
                }),
                prop::collection::vec(loss(extreme), k),
                prop::collection::vec(prop::collection::vec(cell, k), steps),
            )
        })
        .prop_map(|(config, initial, probes)| Scenario {
            config,
            initial,
            probes,
        })
}

/// Replays the scenario with tasks reordered by `perm` and task losses scaled by `scale`;
/// returns the weights of every step (in the permuted task order).
fn run(s: &Scenario, perm: &[usize], scale: &[f64]) -> Vec<Vec<f64>> {
    let initial: Vec<f64> = perm.iter().map(|&i| s.initial[i] * scale[i]).collect();
    let mut w = Weighter::new(&s.config, &initial).unwrap();
    let mut out = Vec::new();
    for step in 0..=s.probes.len() as u64 {
        out.push(w.weights_for_step(step).unwrap().weights);
        if w.is_probe_step(step) && step >= 1 {
            let row = &s.probes[step as usize - 1];
            let losses: Vec<Option<f64>> =
                perm.iter().map(|&i| row[i].map(|l| l * scale[i])).collect();
            // GradNorm's head gradient norms: the unscaled losses (permuted with the tasks,
            // untouched by the loss scaling), a stand-in with the same structure.
            let norms: Vec<f64> = perm.iter().map(|&i| row[i].unwrap_or(1.0)).collect();
            let norms = (s.config.method == MethodKind::Gradnorm).then_some(&norms[..]);
            w.observe_probe_with_grads(step, &losses, norms).unwrap();
        }
    }
    out
}

fn identity(k: usize) -> Vec<usize> {
    (0..k).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn weights_are_positive_and_sum_to_one(s in scenario(method(), false)) {
        let k = s.initial.len();
        for (step, w) in run(&s, &identity(k), &vec![1.0; k]).iter().enumerate() {
            prop_assert!(w.iter().all(|x| x.is_finite() && *x > 0.0), "step {step}: {w:?}");
            prop_assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "step {step}: {w:?}");
        }
    }

    /// Extreme losses (1e-6 .. 1e6): no NaN, no panic; a weight may underflow to 0 (DWA's
    /// softmax of a 1e11 loss ratio), but the weights stay finite, >= 0 and sum to 1.
    #[test]
    fn extreme_losses_give_finite_weights(s in scenario(method(), true)) {
        let k = s.initial.len();
        for (step, w) in run(&s, &identity(k), &vec![1.0; k]).iter().enumerate() {
            prop_assert!(w.iter().all(|x| x.is_finite() && *x >= 0.0), "step {step}: {w:?}");
            prop_assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "step {step}: {w:?}");
        }
    }

    #[test]
    fn permuting_tasks_permutes_weights(
        (s, perm) in scenario(method(), true).prop_flat_map(|s| {
            let k = s.initial.len();
            (Just(s), Just(identity(k)).prop_shuffle())
        })
    ) {
        let k = s.initial.len();
        let base = run(&s, &identity(k), &vec![1.0; k]);
        let permuted = run(&s, &perm, &vec![1.0; k]);
        for (step, (b, p)) in base.iter().zip(&permuted).enumerate() {
            for (j, &i) in perm.iter().enumerate() {
                prop_assert!((p[j] - b[i]).abs() < 1e-9, "step {step} task {i}: {} vs {}", p[j], b[i]);
            }
        }
    }

    #[test]
    fn scaling_a_task_changes_nothing(
        (s, scale) in scenario(prop::sample::select(vec![
            MethodKind::Coba, MethodKind::Uniform, MethodKind::Lbtw, MethodKind::Dwa,
        ]), true).prop_flat_map(|s| {
            let k = s.initial.len();
            (Just(s), prop::collection::vec(prop_oneof![Just(1.0), 0.1f64..10.0], k))
        })
    ) {
        let k = s.initial.len();
        let base = run(&s, &identity(k), &vec![1.0; k]);
        let scaled = run(&s, &identity(k), &scale);
        for (step, (b, c)) in base.iter().zip(&scaled).enumerate() {
            for i in 0..k {
                prop_assert!((b[i] - c[i]).abs() < 1e-9, "step {step} task {i}: {} vs {}", b[i], c[i]);
            }
        }
    }

    #[test]
    fn one_task_gets_weight_one(s in scenario(method(), true).prop_filter("K = 1", |s| s.initial.len() == 1)) {
        for w in run(&s, &[0], &[1.0]) {
            prop_assert!((w[0] - 1.0).abs() < 1e-15, "{w:?}");
        }
    }

    #[test]
    fn restored_state_continues_identically(s in scenario(method(), true), cut in 0usize..60) {
        let k = s.initial.len();
        let total = s.probes.len() as u64;
        let cut = (cut as u64).min(total);
        let mut w = Weighter::new(&s.config, &s.initial).unwrap();
        let mut restored: Option<Weighter> = None;
        for step in 0..=total {
            if step == cut {
                let json = serde_json::to_string(&w).unwrap();
                restored = Some(serde_json::from_str(&json).unwrap());
            }
            let a = w.weights_for_step(step).unwrap();
            if let Some(r) = restored.as_mut() {
                let b = r.weights_for_step(step).unwrap();
                prop_assert_eq!(&a, &b, "step {}", step);
            }
            if w.is_probe_step(step) {
                let losses = s.probes[step as usize - 1].clone();
                let norms: Vec<f64> = losses.iter().map(|l| l.unwrap_or(1.0)).collect();
                let norms = (s.config.method == MethodKind::Gradnorm).then_some(&norms[..]);
                w.observe_probe_with_grads(step, &losses, norms).unwrap();
                if let Some(r) = restored.as_mut() {
                    r.observe_probe_with_grads(step, &losses, norms).unwrap();
                }
            }
        }
        prop_assert!(restored.is_some());
        prop_assert_eq!(k, w.num_tasks());
    }
}

#[test]
fn warmup_then_computed_sources_follow_the_schedule() {
    let config = WeighterConfig {
        warmup_steps: 3,
        update_interval: 2,
        history_length: 4,
        ..Default::default()
    };
    let mut w = Weighter::new(&config, &[1.0, 2.0]).unwrap();
    let mut sources = Vec::new();
    for step in 0..8u64 {
        sources.push(w.weights_for_step(step).unwrap().source);
        if w.is_probe_step(step) {
            w.observe_probe(step, &[Some(0.9), Some(1.9)]).unwrap();
        }
    }
    use Source::*;
    assert_eq!(
        sources,
        vec![Warmup, Warmup, Warmup, Warmup, Computed, Carried, Computed, Carried]
    );
}
