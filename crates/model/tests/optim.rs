//! AdamW against a hand-computed update, state save/load, LR schedule values, clipping, and
//! gradient accumulation equal to one larger batch.

use candle_core::{DType, Device, Tensor, Var};
use model::optim::{accumulate, clip_grad_norm, global_norm, AdamW, AdamWConfig, LrSchedule};
use model::{CausalLm, Gradients, Llama, LlamaConfig, LossOptions, TokenBatch};
use std::collections::BTreeMap;

fn vec_of(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn params() -> BTreeMap<String, Var> {
    let dev = Device::Cpu;
    let mut p = BTreeMap::new();
    p.insert(
        "layer.weight".to_string(),
        Var::from_tensor(&Tensor::new(&[[1.0f32, -2.0]], &dev).unwrap()).unwrap(),
    );
    p.insert(
        "layer.bias".to_string(),
        Var::from_tensor(&Tensor::new(&[0.5f32], &dev).unwrap()).unwrap(),
    );
    p
}

fn grads(w: [f32; 2], b: f32) -> Gradients {
    let dev = Device::Cpu;
    let mut g = Gradients::new();
    g.insert("layer.weight".into(), Tensor::new(&[w], &dev).unwrap());
    g.insert("layer.bias".into(), Tensor::new(&[b], &dev).unwrap());
    g
}

/// Plain scalar AdamW (PyTorch's algorithm), written independently of the tensor code.
fn reference(p0: f64, gs: &[f64], lrs: &[f64], c: &AdamWConfig, decay: bool) -> f64 {
    let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
    for (t, (&g, &lr)) in gs.iter().zip(lrs).enumerate() {
        let t = (t + 1) as i32;
        if decay {
            p *= 1.0 - lr * c.weight_decay;
        }
        m = c.beta1 * m + (1.0 - c.beta1) * g;
        v = c.beta2 * v + (1.0 - c.beta2) * g * g;
        let mhat = m / (1.0 - c.beta1.powi(t));
        let vhat = v / (1.0 - c.beta2.powi(t));
        p -= lr * mhat / (vhat.sqrt() + c.eps);
    }
    p
}

#[test]
fn adamw_matches_hand_computed_steps_and_skips_decay_on_bias() {
    let c = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let p = params();
    let mut opt = AdamW::new(c);
    // Step 1 by hand: m̂ = g, v̂ = g², so p1 = p0 (1 - lr wd) - lr g / (|g| + eps).
    opt.step(&p, &grads([0.3, -0.04], 2.0), 0.01).unwrap();
    let w = vec_of(p["layer.weight"].as_tensor());
    assert!((w[0] - (1.0 * (1.0 - 0.001) - 0.01 * 0.3 / (0.3 + 1e-8))).abs() < 1e-6);
    assert!((w[1] - (-2.0 * (1.0 - 0.001) + 0.01 * 0.04 / (0.04 + 1e-8))).abs() < 1e-6);
    let b = vec_of(p["layer.bias"].as_tensor());
    assert!(
        (b[0] - (0.5 - 0.01)).abs() < 1e-6,
        "no decay on the bias: {}",
        b[0]
    );
    opt.step(&p, &grads([-0.1, 0.2], -1.0), 0.005).unwrap();
    opt.step(&p, &grads([0.05, 0.0], 0.5), 0.002).unwrap();
    let lrs = [0.01, 0.005, 0.002];
    let w = vec_of(p["layer.weight"].as_tensor());
    let b = vec_of(p["layer.bias"].as_tensor());
    assert!((w[0] - reference(1.0, &[0.3, -0.1, 0.05], &lrs, &c, true)).abs() < 1e-6);
    assert!((w[1] - reference(-2.0, &[-0.04, 0.2, 0.0], &lrs, &c, true)).abs() < 1e-6);
    assert!((b[0] - reference(0.5, &[2.0, -1.0, 0.5], &lrs, &c, false)).abs() < 1e-6);
    assert_eq!(opt.steps_taken(), 3);
    assert_eq!(opt.exp_avg("layer.bias").unwrap().dtype(), DType::F32);
}

#[test]
fn adamw_state_save_load_continues_identically() {
    let c = AdamWConfig {
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let (pa, pb) = (params(), params());
    let mut a = AdamW::new(c);
    a.step(&pa, &grads([0.3, -0.2], 1.0), 0.01).unwrap();
    let mut b = AdamW::new(c);
    b.step(&pb, &grads([0.3, -0.2], 1.0), 0.01).unwrap();
    let dir = tempfile::tempdir().unwrap();
    b.save(dir.path()).unwrap();
    let mut b = AdamW::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(b.steps_taken(), 1);
    assert_eq!(b.config(), &c);
    a.step(&pa, &grads([-0.1, 0.7], 0.2), 0.01).unwrap();
    b.step(&pb, &grads([-0.1, 0.7], 0.2), 0.01).unwrap();
    for n in pa.keys() {
        assert_eq!(vec_of(pa[n].as_tensor()), vec_of(pb[n].as_tensor()), "{n}");
    }
    assert!(AdamW::load(&dir.path().join("missing"), &Device::Cpu).is_err());
}

#[test]
fn adamw_refuses_missing_gradient() {
    let p = params();
    let mut g = grads([0.1, 0.1], 0.1);
    g.remove("layer.bias");
    let mut opt = AdamW::new(AdamWConfig::default());
    assert!(opt.step(&p, &g, 0.1).is_err());
    assert_eq!(opt.steps_taken(), 0);
    assert_eq!(vec_of(p["layer.weight"].as_tensor()), vec![1.0, -2.0]);
}

#[test]
fn schedules_warm_up_then_decay() {
    let s = LrSchedule::Cosine {
        max_lr: 1e-3,
        min_lr: 1e-4,
        warmup_steps: 10,
        total_steps: 110,
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(s.lr(0), 1e-4));
    assert!(close(s.lr(4), 5e-4));
    assert!(close(s.lr(9), 1e-3));
    assert!(close(s.lr(10), 1e-3));
    assert!(close(s.lr(60), 5.5e-4), "half way: {}", s.lr(60));
    // A quarter of the way: min + (max-min) (1 + cos(pi/4)) / 2.
    let q = 1e-4 + 0.9e-3 * (1.0 + std::f64::consts::FRAC_1_SQRT_2) / 2.0;
    assert!(close(s.lr(35), q));
    assert!(close(s.lr(110), 1e-4));
    assert!(close(s.lr(1000), 1e-4));
    let c = LrSchedule::Constant {
        lr: 2e-5,
        warmup_steps: 0,
    };
    assert!(close(c.lr(0), 2e-5) && close(c.lr(99), 2e-5));
    let parsed: LrSchedule = serde_json::from_str(
        r#"{"kind":"cosine","max_lr":0.001,"min_lr":0.0001,"warmup_steps":10,"total_steps":110}"#,
    )
    .unwrap();
    assert_eq!(parsed, s);
}

#[test]
fn clipping_scales_to_max_norm() {
    let mut g = grads([3.0, 0.0], 4.0);
    assert!((global_norm(&g).unwrap() - 5.0).abs() < 1e-9);
    let before = clip_grad_norm(&mut g, 1.0).unwrap();
    assert!((before - 5.0).abs() < 1e-9);
    assert!((global_norm(&g).unwrap() - 1.0).abs() < 1e-6);
    assert!((vec_of(&g["layer.weight"])[0] - 0.6).abs() < 1e-6);
    let mut small = grads([0.3, 0.0], 0.4);
    clip_grad_norm(&mut small, 1.0).unwrap();
    assert!(
        (vec_of(&small["layer.bias"])[0] - 0.4).abs() < 1e-7,
        "below max: untouched"
    );
}

#[test]
fn grad_accumulation_equals_one_larger_batch() {
    let dev = Device::Cpu;
    let cfg = LlamaConfig::tiny(61, 32, 2, 4, 2);
    let model = Llama::new_random(cfg, 4, 0.05, DType::F32, &dev).unwrap();
    let mut rng = model::init::SplitMix64::new(17);
    let (rows, seq) = (4, 9);
    let n = rows * seq;
    let full = TokenBatch {
        rows,
        seq_len: seq,
        input_ids: (0..n).map(|_| (rng.next_u64() % 61) as u32).collect(),
        labels: (0..n).map(|_| (rng.next_u64() % 61) as u32).collect(),
        loss_mask: (0..n).map(|i| u8::from(i % seq >= 2)).collect(),
        task_ids: (0..n).map(|i| ((i / seq) % 2) as u32).collect(),
        ..TokenBatch::default()
    };
    // Objective: per-task mean over the whole step, weights 0.25 and 0.75.
    let tokens_per_task = [14.0, 14.0];
    let scale = [0.25 / tokens_per_task[0], 0.75 / tokens_per_task[1]];
    let opts = LossOptions::default();
    let big = model.forward_backward(&full, &scale, opts).unwrap();
    let half = |r0: usize| {
        let sl = |v: &Vec<u32>| v[r0 * seq..(r0 + 2) * seq].to_vec();
        TokenBatch {
            rows: 2,
            seq_len: seq,
            input_ids: sl(&full.input_ids),
            labels: sl(&full.labels),
            loss_mask: full.loss_mask[r0 * seq..(r0 + 2) * seq].to_vec(),
            task_ids: sl(&full.task_ids),
            ..TokenBatch::default()
        }
    };
    let mut acc = Gradients::new();
    let mut objective = 0.0;
    for r0 in [0, 2] {
        let out = model.forward_backward(&half(r0), &scale, opts).unwrap();
        objective += out.report.objective;
        accumulate(&mut acc, out.grads).unwrap();
    }
    assert!((objective - big.report.objective).abs() < 1e-6 * big.report.objective);
    let mut diff_sq = 0.0;
    let mut ref_sq = 0.0;
    for (name, g) in &big.grads {
        let a = vec_of(&acc[name]);
        let b = vec_of(g);
        diff_sq += a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
        ref_sq += b.iter().map(|y| y * y).sum::<f64>();
        assert!(b.iter().any(|&y| y != 0.0), "{name} has a gradient");
    }
    let rel = (diff_sq / ref_sq).sqrt();
    eprintln!("accumulated vs big batch: relative L2 difference {rel:.2e}");
    assert!(rel < 1e-5, "relative difference {rel}");
}

#[test]
fn f16_parameters_train_through_an_f32_master_copy_that_survives_save_load() {
    // Adam's normalised update is ~lr per step; at 1.0 one f16 ulp is 2^-10 ~ 9.8e-4, so
    // lr = 1e-4 moves an f16 weight only through the master copy (rounding would drop it).
    let p = Var::from_tensor(
        &Tensor::ones(1, DType::F32, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap(),
    )
    .unwrap();
    let params: BTreeMap<String, Var> = [("w".to_string(), p.clone())].into_iter().collect();
    let g = |_: usize| -> Gradients {
        [(
            "w".to_string(),
            Tensor::new(&[0.5f32], &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap(),
        )]
        .into_iter()
        .collect()
    };
    let c = AdamWConfig::default();
    let mut opt = AdamW::new(c);
    for i in 0..60 {
        opt.step(&params, &g(i), 1e-4).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    opt.save(dir.path()).unwrap();
    let mut resumed = AdamW::load(dir.path(), &Device::Cpu).unwrap();
    for i in 60..120 {
        resumed.step(&params, &g(i), 1e-4).unwrap();
    }
    // The independent reference: the same 120 updates in f64 from 1.0.
    let want = reference(1.0, &[0.5; 120], &[1e-4; 120], &c, true);
    let master = vec_of(resumed.master("w").unwrap())[0];
    // f32 master: 120 roundings of ~1.2e-7 each, far below one f16 ulp (9.8e-4).
    assert!((master - want).abs() < 1e-5, "master {master} vs {want}");
    assert!(
        want < 1.0 - 0.01,
        "the test must move the weight by several f16 ulps"
    );
    // The parameter is the master's f16 rounding (within half an ulp, 2^-11 near 0.99).
    let got = vec_of(p.as_tensor())[0];
    assert!(
        (got - master).abs() <= 2f64.powi(-11),
        "param {got} vs master {master}"
    );
    assert_eq!(p.as_tensor().dtype(), DType::F16);
}
