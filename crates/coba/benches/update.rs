//! Cost of one CoBa weight update (a probe plus a computation) after n probes.
//!
//! `cargo bench -p coba --bench update`. Target (issue 2): under 50 µs for K = 16 at 1,000
//! probes. Everything is O(K) amortized except the DF softmax over the n total slopes so far.

use coba::{MethodKind, Weighter, WeighterConfig};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use std::hint::black_box;

/// Smooth, noisy, task-dependent loss curves (deterministic).
fn loss(task: usize, step: u64) -> f64 {
    let t = step as f64;
    let rate = 0.002 * (1.0 + task as f64);
    let noise = 0.01 * ((step as f64 * 12.9898 + task as f64 * 78.233).sin());
    1.0 + 2.0 * (-rate * t).exp() + noise
}

/// A weighter that has taken `probes` probes (W = 0, H = 200, U = 1), ready for step probes + 1.
fn warmed(k: usize, probes: u64, method: MethodKind) -> Weighter {
    let config = WeighterConfig {
        method,
        warmup_steps: 0,
        history_length: 200,
        ..Default::default()
    };
    let initial: Vec<f64> = (0..k).map(|i| loss(i, 0)).collect();
    let mut w = Weighter::new(&config, &initial).expect("valid settings");
    for step in 0..=probes {
        w.weights_for_step(step).expect("in order");
        if step >= 1 {
            let l: Vec<Option<f64>> = (0..k).map(|i| Some(loss(i, step))).collect();
            w.observe_probe(step, &l).expect("valid probe");
        }
    }
    w
}

fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("coba_update");
    for probes in [1_000u64, 10_000] {
        for k in [3usize, 16, 100] {
            let base = warmed(k, probes, MethodKind::Coba);
            let step = probes + 1;
            let losses: Vec<Option<f64>> = (0..k).map(|i| Some(loss(i, step))).collect();
            group.bench_with_input(
                BenchmarkId::new(format!("K={k}"), format!("{probes} probes")),
                &(),
                |b, _| {
                    b.iter_batched(
                        || base.clone(),
                        |mut w| {
                            let weights = w.weights_for_step(step).expect("in order");
                            w.observe_probe(step, &losses).expect("valid probe");
                            black_box(weights)
                        },
                        BatchSize::LargeInput,
                    )
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, update);
criterion_main!(benches);
