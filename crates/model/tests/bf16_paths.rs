//! The device-generic (composed) paths a GPU runs, in bf16 on the CPU, for what `bf16.rs`
//! (norms, softmax, cross-entropy, a full Llama step) leaves out: Phi, LoRA and QLoRA over a
//! bf16 base, the KV cache and batched generation, GradNorm's head gradients and merged
//! adapters. Each is compared with f32 on the same bf16-rounded weights: a path that mixes
//! dtypes fails outright (candle refuses a bf16 x f32 op), one that sums a statistic in 16 bits
//! misses the tolerance.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use common::{as_f64, assert_bf16_step_agrees, cosine, max_abs_diff, perturb_lora_b};
use model::head_grads::head_task_gradients;
use model::lora::{LoraSettings, LLAMA_PROJECTIONS};
use model::{
    CausalLm, KvCache, Llama, LlamaConfig, LossOptions, Model, Phi, PhiConfig, StepOutput,
    TokenBatch,
};

/// A model's parameters rounded to bf16 (what both the bf16 model and its f32 twin load).
fn rounded(m: &dyn CausalLm) -> Vec<(String, Tensor)> {
    m.tensors()
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::BF16).unwrap()))
        .collect()
}

/// d = 64, ffn = 96 (multiples of the 32-wide quantization blocks), 2 layers, GQA 4/2,
/// untied head. Returns the bf16 model and the f32 model of the same rounded weights.
fn llama_pair() -> (Model, Model) {
    let mut cfg = LlamaConfig::tiny(80, 64, 2, 4, 2);
    cfg.intermediate_size = 96;
    cfg.tie_word_embeddings = false;
    let src = Llama::new_random(cfg.clone(), 7, 0.08, DType::F32, &Device::Cpu).unwrap();
    let w = rounded(&src);
    let bf16 = Llama::from_tensors(cfg.clone(), w.clone(), DType::BF16, &Device::Cpu).unwrap();
    let f32 = Llama::from_tensors(cfg, w, DType::F32, &Device::Cpu).unwrap();
    (bf16.into(), f32.into())
}

/// Phi with partial rotary, GQA 4/2 and a head bias; bf16 and f32 on the same weights.
fn phi_pair() -> (Model, Model) {
    let mut cfg = PhiConfig::tiny(80, 64, 2, 4);
    cfg.num_key_value_heads = Some(2);
    let src = Phi::new_random(cfg.clone(), 8, 0.08, DType::F32, &Device::Cpu).unwrap();
    let w = rounded(&src);
    let bf16 = Phi::from_tensors(cfg.clone(), w.clone(), DType::BF16, &Device::Cpu).unwrap();
    let f32 = Phi::from_tensors(cfg, w, DType::F32, &Device::Cpu).unwrap();
    (bf16.into(), f32.into())
}

fn batch() -> TokenBatch {
    let ids: Vec<u32> = (0..44).map(|i| (i * 13 + 5) % 80).collect();
    let mut b = TokenBatch::from_sequence(&ids, 4, 0);
    b.task_ids.iter_mut().skip(24).for_each(|t| *t = 1);
    b
}

fn step(m: &Model) -> StepOutput {
    m.forward_backward(&batch(), &[1.0 / 24.0, 1.0 / 16.0], LossOptions::default())
        .unwrap()
}

fn assert_steps_agree(bf16: &Model, f32: &Model, what: &str) {
    assert_bf16_step_agrees(&step(bf16), &step(f32), bf16.params(), what);
}

fn settings() -> LoraSettings {
    LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: LLAMA_PROJECTIONS.map(String::from).to_vec(),
        use_rslora: false,
    }
}

/// Attaches the same adapters to both (seeded A, f32 over either base) and gives every B the
/// same non-zero values, so the adapters change the output.
fn attach(m: &mut Model) {
    m.attach_lora(settings(), 3, None).unwrap();
    perturb_lora_b(m, 0.01);
}

#[test]
fn a_bf16_phi_step_matches_f32() {
    let (bf16, f32) = phi_pair();
    assert_steps_agree(&bf16, &f32, "phi");
}

#[test]
fn lora_over_a_bf16_base_keeps_f32_adapters_and_matches_f32() {
    let (mut bf16, mut f32) = llama_pair();
    attach(&mut bf16);
    attach(&mut f32);
    for (n, v) in bf16.params() {
        if n.contains("lora_") {
            assert_eq!(v.dtype(), DType::F32, "{n}: adapters stay f32 over bf16");
        }
    }
    assert_steps_agree(&bf16, &f32, "lora");
    // Merging folds the f32 adapters into the bf16 base: within bf16 rounding of f32's merge.
    let (mb, mf) = (
        bf16.merged_tensors().unwrap(),
        f32.merged_tensors().unwrap(),
    );
    for (name, w) in &mf {
        let got = &mb[name];
        assert_eq!(got.dtype(), DType::BF16, "{name}");
        let d = max_abs_diff(&got.to_dtype(DType::F32).unwrap(), w);
        let scale = as_f64(w).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            d <= scale / 128.0,
            "{name}: merged differ by {d} (max |w| {scale})"
        );
    }
}

#[test]
fn qlora_over_a_bf16_base_matches_f32() {
    let (mut bf16, mut f32) = llama_pair();
    bf16.quantize_base(GgmlDType::Q8_0).unwrap();
    f32.quantize_base(GgmlDType::Q8_0).unwrap();
    attach(&mut bf16);
    attach(&mut f32);
    assert_steps_agree(&bf16, &f32, "qlora");
}

#[test]
fn gradnorm_head_gradients_of_a_bf16_model_match_f32() {
    for (what, (bf16, f32)) in [("llama", llama_pair()), ("phi", phi_pair())] {
        let b = batch();
        let got = head_task_gradients(&bf16, &b, 2).unwrap();
        let want = head_task_gradients(&f32, &b, 2).unwrap();
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.dtype(), DType::F32, "{what} task {k}");
            let c = cosine(&as_f64(g), &as_f64(w));
            assert!(c > 0.99, "{what} task {k}: cosine {c}");
        }
    }
}

#[test]
fn bf16_kv_cache_decoding_follows_the_full_forward() {
    for (what, (bf16, _)) in [("llama", llama_pair()), ("phi", phi_pair())] {
        let ids: Vec<u32> = vec![3, 17, 5, 28, 0, 9, 9, 14, 1, 40, 77];
        let full = bf16
            .hidden(&TokenBatch::inputs(1, ids.len(), ids.clone()), false)
            .unwrap();
        assert_eq!(full.dtype(), DType::BF16);
        // A prompt of 6, then one token at a time.
        let mut cache = KvCache::new();
        let mut parts = vec![bf16.hidden_cached(&ids[..6], &mut cache).unwrap().unwrap()];
        for &t in &ids[6..] {
            parts.push(bf16.hidden_cached(&[t], &mut cache).unwrap().unwrap());
        }
        let got = Tensor::cat(&parts, 1).unwrap();
        let scale = as_f64(&full).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let d = max_abs_diff(&got, &full);
        assert!(
            d <= 0.03 * scale,
            "{what}: cached vs full {d} (max |h| {scale})"
        );
        // Batched greedy decoding with rows finishing and refilled: each prompt gets its own
        // number of tokens, all in the vocabulary.
        let prompts: Vec<Vec<u32>> = vec![vec![4, 11, 2], vec![7], vec![1, 2, 3, 4, 5, 6]];
        let out = bf16
            .generate_batch(&prompts, 6, 2, &mut |r, o| o.len() >= 2 + 2 * r)
            .unwrap();
        let lens: Vec<usize> = out.iter().map(Vec::len).collect();
        assert_eq!(lens, [2, 4, 6], "{what}");
        assert!(out.iter().flatten().all(|&t| t < 80), "{what}");
    }
}
