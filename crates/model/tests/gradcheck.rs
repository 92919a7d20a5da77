//! Finite-difference gradient check (f64) of every parameter kind, through the chunked
//! two-phase loss backward, for untied Llama (GQA), tied Llama and Qwen2 (biases).

use candle_core::{DType, Device, Tensor};
use model::{CausalLm, Llama, LlamaConfig, LossOptions, Phi, PhiConfig, TokenBatch};
use std::collections::BTreeMap;

fn batch(vocab: u32) -> TokenBatch {
    let mut rng = model::init::SplitMix64::new(99);
    let mut tok = || (rng.next_u64() % vocab as u64) as u32;
    let (rows, seq) = (2, 7);
    let n = rows * seq;
    TokenBatch {
        rows,
        seq_len: seq,
        input_ids: (0..n).map(|_| tok()).collect(),
        labels: (0..n).map(|_| tok()).collect(),
        loss_mask: vec![0, 1, 1, 1, 0, 1, 1, /* row 2 */ 1, 1, 0, 1, 1, 1, 0],
        // Row 1 packs two samples; row 2 holds one.
        position_ids: vec![0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6],
        segment_ids: vec![1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1],
        task_ids: vec![0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        dropout_keys: Vec::new(),
    }
}

/// The objective from the no-graph evaluation: sum_k scale_k * nll_sum_k.
fn objective(model: &dyn CausalLm, b: &TokenBatch, scale: &[f64], opts: LossOptions) -> f64 {
    let r = model.evaluate(b, opts).unwrap();
    r.per_task
        .iter()
        .enumerate()
        .map(|(k, t)| scale[k] * t.nll_sum)
        .sum()
}

fn set_elem(t: &Tensor, i: usize, delta: f64) -> Tensor {
    let mut v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    v[i] += delta;
    Tensor::from_vec(v, t.dims(), t.device()).unwrap()
}

/// Returns the worst relative error per parameter kind (layer index stripped).
fn gradcheck(cfg: LlamaConfig, seed: u64) -> BTreeMap<String, f64> {
    let model = Llama::new_random(cfg, seed, 0.3, DType::F64, &Device::Cpu).unwrap();
    gradcheck_model(&model, seed)
}

fn gradcheck_model(model: &dyn CausalLm, seed: u64) -> BTreeMap<String, f64> {
    let vocab = model.vocab_size();
    let b = batch(vocab as u32);
    let scale = [0.7, 1.3];
    // 3 tokens per loss chunk: exercises the chunked two-phase backward.
    let opts = LossOptions {
        chunk_elems: 3 * vocab,
    };
    let out = model.forward_backward(&b, &scale, opts).unwrap();
    let obj = objective(model, &b, &scale, opts);
    assert!((out.report.objective - obj).abs() < 1e-10 * obj.abs().max(1.0));
    assert_eq!(out.report.per_task[0].tokens, 3);
    assert_eq!(out.report.per_task[1].tokens, 7);
    let eps = 1e-5;
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    let mut rng = model::init::SplitMix64::new(seed);
    for (name, var) in model.params() {
        let orig = var.as_tensor().copy().unwrap();
        let n = orig.elem_count();
        let grad = out.grads[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let picks = [
            0,
            n - 1,
            (rng.next_u64() % n as u64) as usize,
            (rng.next_u64() % n as u64) as usize,
        ];
        for &i in &picks {
            var.set(&set_elem(&orig, i, eps)).unwrap();
            let up = objective(model, &b, &scale, opts);
            var.set(&set_elem(&orig, i, -eps)).unwrap();
            let down = objective(model, &b, &scale, opts);
            var.set(&orig).unwrap();
            let numeric = (up - down) / (2.0 * eps);
            let analytic = grad[i];
            // Floor 1e-4: central-difference round-off is ~1e-10 absolute here.
            let rel = (numeric - analytic).abs() / numeric.abs().max(analytic.abs()).max(1e-4);
            let kind = name
                .split('.')
                .filter(|p| p.parse::<usize>().is_err())
                .collect::<Vec<_>>()
                .join(".");
            let w = worst.entry(kind).or_insert(0.0);
            *w = w.max(rel);
        }
    }
    worst
}

fn assert_all_below(worst: &BTreeMap<String, f64>, tol: f64, what: &str) {
    for (kind, rel) in worst {
        eprintln!("{what}: {kind:<45} max rel err {rel:.2e}");
    }
    for (kind, rel) in worst {
        assert!(*rel < tol, "{what}: {kind} rel err {rel}");
    }
}

#[test]
fn gradcheck_llama_gqa_untied() {
    let cfg = LlamaConfig::tiny(23, 16, 2, 4, 2);
    let worst = gradcheck(cfg, 1);
    assert_eq!(worst.len(), 12, "every parameter kind checked: {worst:?}");
    assert_all_below(&worst, 1e-5, "llama");
}

#[test]
fn gradcheck_llama_tied() {
    let mut cfg = LlamaConfig::tiny(19, 12, 1, 2, 1);
    cfg.tie_word_embeddings = true;
    let worst = gradcheck(cfg, 2);
    assert!(!worst.contains_key("lm_head.weight"));
    assert_all_below(&worst, 1e-5, "llama tied");
}

#[test]
fn gradcheck_qwen2_biases() {
    let mut cfg = LlamaConfig::tiny(21, 16, 1, 4, 2);
    cfg.model_type = "qwen2".into();
    let worst = gradcheck(cfg, 3);
    for b in ["q_proj.bias", "k_proj.bias", "v_proj.bias"] {
        assert!(
            worst.contains_key(&format!("model.layers.self_attn.{b}")),
            "{b}"
        );
    }
    assert_all_below(&worst, 1e-5, "qwen2");
}

#[test]
fn gradcheck_phi() {
    let mut cfg = PhiConfig::tiny(22, 16, 2, 2);
    cfg.num_key_value_heads = Some(1);
    let model = Phi::new_random(cfg, 4, 0.3, DType::F64, &Device::Cpu).unwrap();
    let worst = gradcheck_model(&model, 4);
    // embed, final LN (w, b), head (w, b), per layer: LN (w, b), q/k/v/dense/fc1/fc2 (w, b).
    assert_eq!(worst.len(), 19, "every parameter kind checked: {worst:?}");
    assert_all_below(&worst, 1e-5, "phi");
}

#[test]
fn gradcheck_phi_erf_gelu_tied() {
    let mut cfg = PhiConfig::tiny(18, 16, 1, 2);
    cfg.hidden_act = "gelu".into();
    cfg.tie_word_embeddings = true;
    let model = Phi::new_random(cfg, 5, 0.3, DType::F64, &Device::Cpu).unwrap();
    let worst = gradcheck_model(&model, 5);
    assert!(worst.contains_key("lm_head.bias") && !worst.contains_key("lm_head.weight"));
    assert_all_below(&worst, 1e-5, "phi tied");
}
