//! Our training-mode Llama/Qwen2 against candle-transformers' inference models on identical
//! random weights: logits must agree to 1e-4.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama as ref_llama, qwen2 as ref_qwen2};
use model::{CausalLm, Llama, LlamaConfig, TokenBatch};
use std::collections::HashMap;

mod common;
use common::max_abs_diff;

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = model::init::SplitMix64::new(seed);
    (0..n)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect()
}

fn var_builder(model: &Llama) -> VarBuilder<'static> {
    let map: HashMap<String, Tensor> = model.tensors().into_iter().collect();
    VarBuilder::from_tensors(map, DType::F32, &Device::Cpu)
}

fn check_against_candle_llama(cfg: LlamaConfig, seed: u64) -> f64 {
    let dev = Device::Cpu;
    let model = Llama::new_random(cfg.clone(), seed, 0.1, DType::F32, &dev).unwrap();
    let ref_cfg = ref_llama::Config {
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        vocab_size: cfg.vocab_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.kv_heads(),
        use_flash_attn: false,
        rms_norm_eps: cfg.rms_norm_eps,
        rope_theta: cfg.rope_theta as f32,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: None,
        max_position_embeddings: cfg.max_position_embeddings,
        tie_word_embeddings: cfg.tie_word_embeddings,
    };
    let reference = ref_llama::Llama::load(var_builder(&model), &ref_cfg).unwrap();
    let (rows, seq) = (2, 12);
    let ids = tokens(rows * seq, cfg.vocab_size, seed + 7);
    let ours = model
        .logits(&TokenBatch::inputs(rows, seq, ids.clone()))
        .unwrap();
    assert_eq!(ours.dims(), &[rows, seq, cfg.vocab_size]);
    let mut worst = 0f64;
    // candle's Llama returns the last position's logits: run every prefix of every row.
    for r in 0..rows {
        for len in 1..=seq {
            let prefix = Tensor::new(&ids[r * seq..r * seq + len], &dev)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let mut cache = ref_llama::Cache::new(false, DType::F32, &ref_cfg, &dev).unwrap();
            let want = reference
                .forward(&prefix, 0, &mut cache)
                .unwrap()
                .squeeze(0)
                .unwrap();
            let got = ours.i((r, len - 1)).unwrap();
            worst = worst.max(max_abs_diff(&got, &want));
        }
    }
    worst
}

#[test]
fn llama_gqa_untied_logits_match_candle_transformers() {
    let mut cfg = LlamaConfig::tiny(101, 64, 2, 4, 2);
    cfg.rope_theta = 100_000.0;
    let diff = check_against_candle_llama(cfg, 1);
    eprintln!("llama gqa untied: max |logit diff| = {diff:.3e}");
    assert!(diff < 1e-4, "max abs diff {diff}");
}

#[test]
fn llama_mha_tied_logits_match_candle_transformers() {
    let mut cfg = LlamaConfig::tiny(89, 48, 3, 3, 3);
    cfg.tie_word_embeddings = true;
    cfg.rms_norm_eps = 1e-6;
    let diff = check_against_candle_llama(cfg, 2);
    eprintln!("llama mha tied: max |logit diff| = {diff:.3e}");
    assert!(diff < 1e-4, "max abs diff {diff}");
}

#[test]
fn qwen2_bias_logits_match_candle_transformers() {
    let dev = Device::Cpu;
    let mut cfg = LlamaConfig::tiny(97, 64, 2, 8, 2);
    cfg.model_type = "qwen2".into();
    cfg.rope_theta = 1_000_000.0;
    cfg.rms_norm_eps = 1e-6;
    let model = Llama::new_random(cfg.clone(), 3, 0.1, DType::F32, &dev).unwrap();
    assert!(model
        .params()
        .contains_key("model.layers.1.self_attn.k_proj.bias"));
    let ref_cfg = ref_qwen2::Config {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.kv_heads(),
        max_position_embeddings: cfg.max_position_embeddings,
        sliding_window: 4096,
        max_window_layers: cfg.num_hidden_layers,
        tie_word_embeddings: false,
        rope_theta: cfg.rope_theta,
        rms_norm_eps: cfg.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: candle_nn::Activation::Silu,
    };
    let mut reference = ref_qwen2::Model::new(&ref_cfg, var_builder(&model)).unwrap();
    let (rows, seq) = (2, 11);
    let ids = tokens(rows * seq, cfg.vocab_size, 11);
    let input = Tensor::from_vec(ids.clone(), (rows, seq), &dev).unwrap();
    let hidden = reference.forward(&input, 0, None).unwrap();
    let lm = model.params()["lm_head.weight"].as_tensor().clone();
    let want = hidden.broadcast_matmul(&lm.t().unwrap()).unwrap();
    let got = model.logits(&TokenBatch::inputs(rows, seq, ids)).unwrap();
    let diff = max_abs_diff(&got, &want);
    eprintln!("qwen2: max |logit diff| = {diff:.3e}");
    assert!(diff < 1e-4, "max abs diff {diff}");
}

#[test]
fn packed_segments_equal_separate_sequences() {
    // Two samples packed in one row (positions restart, attention stays in the segment) give
    // the same logits as each sample alone.
    let dev = Device::Cpu;
    let cfg = LlamaConfig::tiny(50, 32, 2, 4, 2);
    let model = Llama::new_random(cfg, 5, 0.1, DType::F32, &dev).unwrap();
    let a = tokens(5, 50, 1);
    let b = tokens(4, 50, 2);
    let packed = TokenBatch {
        rows: 1,
        seq_len: 9,
        input_ids: [a.clone(), b.clone()].concat(),
        position_ids: vec![0, 1, 2, 3, 4, 0, 1, 2, 3],
        segment_ids: vec![1, 1, 1, 1, 1, 2, 2, 2, 2],
        ..TokenBatch::default()
    };
    let lp = model.logits(&packed).unwrap();
    let la = model.logits(&TokenBatch::inputs(1, 5, a)).unwrap();
    let lb = model.logits(&TokenBatch::inputs(1, 4, b)).unwrap();
    assert!(max_abs_diff(&lp.narrow(1, 0, 5).unwrap(), &la) < 1e-5);
    assert!(max_abs_diff(&lp.narrow(1, 5, 4).unwrap(), &lb) < 1e-5);
}

#[test]
fn config_round_trips_hf_json() {
    let text = r#"{
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
      "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
      "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-05,
      "rope_theta": 100000, "vocab_size": 49152, "tie_word_embeddings": true,
      "max_position_embeddings": 8192, "bos_token_id": 1, "rope_scaling": null
    }"#;
    let cfg = LlamaConfig::from_json(text).unwrap();
    assert_eq!(cfg.head_dim(), 64);
    assert_eq!(cfg.kv_heads(), 3);
    assert_eq!(cfg.rope_theta, 100_000.0);
    assert!(cfg.tie_word_embeddings && !cfg.qkv_bias());
    let back = LlamaConfig::from_json(&cfg.to_json()).unwrap();
    assert_eq!(back, cfg);
    assert_eq!(back.extra["bos_token_id"], serde_json::json!(1));
    let shapes = model::parameter_shapes(&cfg);
    let total: usize = shapes.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(total, 134_515_008, "SmolLM2-135M parameter count");
    let bad = text.replace("\"silu\"", "\"gelu\"");
    assert!(LlamaConfig::from_json(&bad).is_err());
}
