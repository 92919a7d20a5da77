//! Our training-mode Phi against candle-transformers' Phi on identical random weights, and the
//! HF directory round trip.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::phi as ref_phi;
use model::checkpoint::{load_hf_dir, save_hf_dir};
use model::{CausalLm, Model, Phi, PhiConfig, TokenBatch};
use std::collections::HashMap;

mod common;
use common::max_abs_diff;

fn check(cfg: PhiConfig, seed: u64) -> f64 {
    let dev = Device::Cpu;
    let model = Phi::new_random(cfg.clone(), seed, 0.1, DType::F32, &dev).unwrap();
    // candle's Phi config has crate-private fields: build it from the HF JSON, as users do.
    let mut json: serde_json::Value = serde_json::from_str(&cfg.to_json()).unwrap();
    json["qk_layernorm"] = serde_json::json!(false);
    json["num_key_value_heads"] = serde_json::json!(cfg.kv_heads());
    let ref_cfg: ref_phi::Config = serde_json::from_value(json).unwrap();
    let map: HashMap<String, Tensor> = model.tensors().into_iter().collect();
    let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
    let mut reference = ref_phi::Model::new(&ref_cfg, vb).unwrap();
    let (rows, seq) = (2, 10);
    let mut rng = model::init::SplitMix64::new(seed);
    let ids: Vec<u32> = (0..rows * seq)
        .map(|_| (rng.next_u64() % cfg.vocab_size as u64) as u32)
        .collect();
    let ours = model
        .logits(&TokenBatch::inputs(rows, seq, ids.clone()))
        .unwrap();
    let mut worst = 0f64;
    for r in 0..rows {
        for len in 1..=seq {
            reference.clear_kv_cache();
            let prefix = Tensor::new(&ids[r * seq..r * seq + len], &dev)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let want = reference.forward(&prefix).unwrap().squeeze(0).unwrap();
            worst = worst.max(max_abs_diff(&ours.i((r, len - 1)).unwrap(), &want));
        }
    }
    worst
}

#[test]
fn phi_logits_match_candle_transformers() {
    let diff = check(PhiConfig::tiny(83, 64, 2, 4), 1);
    eprintln!("phi: max |logit diff| = {diff:.3e}");
    assert!(diff < 1e-4, "max abs diff {diff}");
}

#[test]
fn phi_gqa_full_rotary_logits_match_candle_transformers() {
    let mut cfg = PhiConfig::tiny(71, 48, 2, 4);
    cfg.num_key_value_heads = Some(2);
    cfg.partial_rotary_factor = 1.0;
    cfg.rope_theta = 50_000.0;
    let diff = check(cfg, 2);
    eprintln!("phi gqa: max |logit diff| = {diff:.3e}");
    assert!(diff < 1e-4, "max abs diff {diff}");
}

#[test]
fn phi_hf_dir_round_trip() {
    let cfg: PhiConfig = PhiConfig::from_json(
        r#"{"model_type": "phi", "vocab_size": 51, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_act": "gelu_new",
            "layer_norm_eps": 1e-5, "partial_rotary_factor": 0.5, "rope_theta": 10000.0,
            "qk_layernorm": false, "tie_word_embeddings": false, "resid_pdrop": 0.0}"#,
    )
    .unwrap();
    assert_eq!(cfg.rotary_dim(), 4);
    let model: Model = Phi::new_random(cfg, 3, 0.1, DType::F32, &Device::Cpu)
        .unwrap()
        .into();
    let dir = tempfile::tempdir().unwrap();
    save_hf_dir(&model, dir.path()).unwrap();
    let back = load_hf_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let phi = back.as_phi().expect("model_type phi loads as Phi");
    assert_eq!(phi.config().extra["resid_pdrop"], serde_json::json!(0.0));
    for (n, v) in model.params() {
        assert_eq!(
            max_abs_diff(v.as_tensor(), back.params()[n].as_tensor()),
            0.0,
            "{n}"
        );
    }
    let bad = r#"{"model_type": "phi", "vocab_size": 5, "hidden_size": 8, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "qk_layernorm": true}"#;
    assert!(PhiConfig::from_json(bad).is_err());
}
