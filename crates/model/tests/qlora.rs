//! QLoRA: LoRA over a base whose projection weights stay quantized (GGML block formats). The
//! reference is the same model with the base dequantized once (the dense LoRA path, itself
//! checked against finite differences in `lora.rs`): logits, losses and adapter gradients must
//! equal it bit for bit, the quantized weights must take their block format's bytes, and no
//! base gradient may be computed.

#[path = "common/gguf.rs"]
mod gguf;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use model::checkpoint::{load_gguf, load_gguf_quantized};
use model::lora::{LoraSettings, LLAMA_PROJECTIONS};
use model::{CausalLm, Llama, LlamaConfig, LossOptions, Model, TokenBatch};

fn settings(modules: &[&str]) -> LoraSettings {
    LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: modules.iter().map(|m| m.to_string()).collect(),
        use_rslora: false,
    }
}

/// d = 64, ffn = 96, 2 layers, 4 heads (2 KV): every projection's input is a multiple of the
/// 32-element blocks.
fn tiny(dtype: DType) -> Llama {
    let mut cfg = LlamaConfig::tiny(70, 64, 2, 4, 2);
    cfg.intermediate_size = 96;
    cfg.tie_word_embeddings = false;
    Llama::new_random(cfg, 11, 0.1, dtype, &Device::Cpu).unwrap()
}

fn batch() -> TokenBatch {
    let ids: Vec<u32> = (0..18).map(|i| (i * 11 + 5) % 70).collect();
    let mut b = TokenBatch::from_sequence(&ids, 3, 0);
    b.task_ids.iter_mut().skip(10).for_each(|t| *t = 1);
    b
}

/// Sets every B to deterministic non-zero values (so the adapters change the output).
fn perturb_b(m: &Model) {
    for (n, v) in m.params() {
        if n.contains("lora_B") {
            let k = v.elem_count();
            let vals: Vec<f32> = (0..k).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.02).collect();
            v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Logits, losses and adapter gradients of two models with the same adapters are identical.
fn assert_same_training_math(dense: &Model, quantized: &Model) {
    let b = batch();
    assert_eq!(
        values(&dense.logits(&b).unwrap()),
        values(&quantized.logits(&b).unwrap()),
        "logits"
    );
    let opts = LossOptions::default();
    let scale = [0.7, 1.3];
    let d = dense.forward_backward(&b, &scale, opts).unwrap();
    let q = quantized.forward_backward(&b, &scale, opts).unwrap();
    assert_eq!(d.report.objective, q.report.objective, "objective");
    assert_eq!(
        d.grads.keys().collect::<Vec<_>>(),
        q.grads.keys().collect::<Vec<_>>()
    );
    assert!(q.grads.keys().all(|n| n.contains("lora_")), "adapters only");
    for (n, g) in &d.grads {
        assert_eq!(values(g), values(&q.grads[n]), "gradient of {n}");
    }
}

#[test]
fn a_gguf_base_kept_quantized_trains_exactly_like_its_dequantized_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-q4_1.gguf");
    gguf::write_gguf(&tiny(DType::F32), GgmlDType::Q4_1, &path);
    let dense = load_gguf(&path, DType::F32, &Device::Cpu).unwrap();
    let quantized = load_gguf_quantized(&path, DType::F32, &Device::Cpu).unwrap();

    // Every projection (Q and K in llama.cpp's permuted row order) is held quantized; the
    // rest is dense, and the parameter count is the model's.
    assert_eq!(quantized.quantized().len(), 2 * LLAMA_PROJECTIONS.len());
    assert!(quantized
        .base_params()
        .keys()
        .all(|n| !n.ends_with("_proj.weight")));
    assert_eq!(
        quantized.base_num_parameters(),
        dense
            .params()
            .values()
            .map(|v| v.elem_count())
            .sum::<usize>()
    );
    // Q4_1: 20 bytes per 32 weights, against 128 dense.
    for (n, q) in quantized.quantized() {
        let (o, i) = q.dims();
        assert_eq!(q.format(), GgmlDType::Q4_1);
        assert_eq!(q.bytes(), o * i / 32 * 20, "{n}");
    }
    // Dequantized, the weights are the dense load's (Q/K rows back in HF order).
    let merged = quantized.merged_tensors().unwrap();
    for (n, v) in dense.params() {
        assert_eq!(values(v.as_tensor()), values(&merged[n]), "{n}");
    }

    let mut dense: Model = dense.into();
    let mut quantized: Model = quantized.into();
    // q_proj and o_proj adapted, the other projections frozen and quantized.
    let s = settings(&["q_proj", "o_proj", "down_proj"]);
    dense.attach_lora(s.clone(), 3, None).unwrap();
    quantized.attach_lora(s, 3, None).unwrap();
    perturb_b(&dense);
    perturb_b(&quantized);
    assert_same_training_math(&dense, &quantized);
}

#[test]
fn quantizing_a_dense_base_equals_lora_on_the_dequantized_weights() {
    let original = tiny(DType::F32);
    let mut q = tiny(DType::F32);
    q.quantize_base(GgmlDType::Q8_0).unwrap();
    // The reference: a dense model from the dequantized weights.
    let dequantized = q.merged_tensors().unwrap();
    for (n, v) in original.params() {
        let w = v.as_tensor();
        if !n.ends_with("_proj.weight") {
            assert_eq!(values(w), values(&dequantized[n]), "{n} stays dense");
            continue;
        }
        let scale = w.abs().unwrap().max_keepdim(1).unwrap();
        let err = (w - &dequantized[n])
            .unwrap()
            .abs()
            .unwrap()
            .broadcast_div(&scale.maximum(1e-30).unwrap())
            .unwrap();
        let worst = values(&err).into_iter().fold(0f32, f32::max);
        // Q8_0: a step d = max|block| / 127 stored in f16 (relative error 2^-11), so at most
        // half a step plus 127 * d * 2^-11 per weight, relative to the row's largest weight.
        let bound = (0.5 + 127.0 / 2048.0) / 127.0;
        assert!(worst <= bound, "{n}: {worst} > {bound}");
    }
    let dense = Llama::from_tensors(
        original.config().clone(),
        dequantized,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let mut dense: Model = dense.into();
    let mut quantized: Model = q.into();
    let s = settings(&LLAMA_PROJECTIONS);
    dense.attach_lora(s.clone(), 9, None).unwrap();
    quantized.attach_lora(s, 9, None).unwrap();
    perturb_b(&dense);
    perturb_b(&quantized);
    assert_same_training_math(&dense, &quantized);

    // The graph holds no gradient shaped like a base projection.
    let b = batch();
    let h = quantized.hidden(&b, true).unwrap();
    let store = h.sum_all().unwrap().backward().unwrap();
    let base_shapes = [vec![64, 64], vec![32, 64], vec![96, 64], vec![64, 96]];
    for id in store.get_ids() {
        let g = store.get_id(*id).unwrap();
        assert!(
            !base_shapes.contains(&g.dims().to_vec()),
            "a base-weight-shaped gradient {:?}",
            g.dims()
        );
    }
}

#[test]
fn quantized_f64_models_dequantize_to_f64_and_block_misfits_are_named() {
    // f64 (gradient checks): the dequantized weights are the f32 values widened.
    let mut q64 = tiny(DType::F64);
    q64.quantize_base(GgmlDType::Q8_0).unwrap();
    let mut q32 = tiny(DType::F32);
    q32.quantize_base(GgmlDType::Q8_0).unwrap();
    let (a, b) = (q64.merged_tensors().unwrap(), q32.merged_tensors().unwrap());
    let n = "model.layers.1.mlp.down_proj.weight";
    assert_eq!(a[n].dtype(), DType::F64);
    assert_eq!(values(&a[n].to_dtype(DType::F32).unwrap()), values(&b[n]));
    let logits = q64.logits(&batch()).unwrap();
    assert_eq!(logits.dtype(), DType::F64);

    // Q4_K packs 256 weights per block: a 64-wide input does not fit.
    let err = tiny(DType::F32)
        .quantize_base(GgmlDType::Q4K)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.0.self_attn.q_proj.weight") && err.contains("256"),
        "{err}"
    );
    assert_eq!(
        model::quantized::parse_format("Q4_K").unwrap(),
        GgmlDType::Q4K
    );
    assert!(model::quantized::parse_format("nf4")
        .unwrap_err()
        .contains("q8_0"));
}
