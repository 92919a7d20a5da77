//! Checkpoints: HF directories (single file, sharded, f16/bf16) and GGUF files (F32, F16,
//! Q8_0, Q4_0, Q4_1, llama.cpp's Q/K permutation), plus loading our saved dir in
//! candle-transformers.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, IndexOp, Tensor};
use model::checkpoint::{load_gguf, load_hf_dir, load_model, save_hf_dir, CheckpointError};
use model::{CausalLm, Llama, LlamaConfig, Model, TokenBatch};
use std::collections::HashMap;
use std::path::Path;

mod common;
use common::max_abs_diff;
#[path = "common/gguf.rs"]
mod gguf;
use gguf::write_gguf;

fn tiny(tied: bool) -> Llama {
    let mut cfg = LlamaConfig::tiny(64, 64, 2, 4, 2);
    cfg.intermediate_size = 96;
    cfg.tie_word_embeddings = tied;
    cfg.rope_theta = 100_000.0;
    Llama::new_random(cfg, 8, 0.1, DType::F32, &Device::Cpu).unwrap()
}

fn assert_same_params(a: &dyn CausalLm, b: &dyn CausalLm, tol: f64) {
    assert_eq!(
        a.params().keys().collect::<Vec<_>>(),
        b.params().keys().collect::<Vec<_>>()
    );
    for (n, v) in a.params() {
        let d = max_abs_diff(v.as_tensor(), b.params()[n].as_tensor());
        assert!(d <= tol, "{n}: {d}");
    }
}

#[test]
fn hf_dir_round_trip_and_candle_transformers_loads_it() {
    let dir = tempfile::tempdir().unwrap();
    for tied in [false, true] {
        let model: Model = tiny(tied).into();
        let path = dir.path().join(format!("tied-{tied}"));
        save_hf_dir(&model, &path).unwrap();
        let st =
            candle_core::safetensors::load(path.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(st.contains_key("lm_head.weight"), !tied);
        let back = load_model(&path, DType::F32, &Device::Cpu).unwrap();
        assert_same_params(&model, &back, 0.0);
        assert_eq!(back.as_llama().unwrap().config(), &{
            let mut c = model.as_llama().unwrap().config().clone();
            c.extra.insert(
                "architectures".into(),
                serde_json::json!(["LlamaForCausalLM"]),
            );
            c.extra
                .insert("torch_dtype".into(), serde_json::json!("float32"));
            c
        });

        // candle-transformers reads our config.json and safetensors as they are.
        use candle_transformers::models::llama as r;
        let text = std::fs::read_to_string(path.join("config.json")).unwrap();
        let rcfg: r::LlamaConfig = serde_json::from_str(&text).unwrap();
        let rcfg = rcfg.into_config(false);
        let vb = unsafe {
            candle_nn::VarBuilder::from_mmaped_safetensors(
                &[path.join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
            .unwrap()
        };
        let reference = r::Llama::load(vb, &rcfg).unwrap();
        let ids = [5u32, 9, 33, 2, 17, 60];
        let mut cache = r::Cache::new(false, DType::F32, &rcfg, &Device::Cpu).unwrap();
        let input = Tensor::new(&ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want = reference
            .forward(&input, 0, &mut cache)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let got = model
            .logits(&TokenBatch::inputs(1, 6, ids.to_vec()))
            .unwrap();
        let d = max_abs_diff(&got.i((0, 5)).unwrap(), &want);
        assert!(d < 1e-4, "tied={tied}: {d}");
    }
}

fn write_config(model: &Llama, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), model.config().to_json()).unwrap();
}

#[test]
fn hf_dir_half_precision_and_shards() {
    let model = tiny(false);
    let dir = tempfile::tempdir().unwrap();
    for dt in [DType::F16, DType::BF16] {
        let path = dir.path().join(format!("{dt:?}"));
        write_config(&model, &path);
        let half: HashMap<String, Tensor> = model
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.to_dtype(dt).unwrap()))
            .collect();
        candle_core::safetensors::save(&half, path.join("model.safetensors")).unwrap();
        let back = load_hf_dir(&path, DType::F32, &Device::Cpu).unwrap();
        for (n, v) in back.params() {
            let want = half[n].to_dtype(DType::F32).unwrap();
            assert_eq!(max_abs_diff(v.as_tensor(), &want), 0.0, "{dt:?} {n}");
        }
    }
    // Two shards and an index.
    let path = dir.path().join("sharded");
    write_config(&model, &path);
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (i, (n, t)) in model.tensors().into_iter().enumerate() {
        let file = if i % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        map.insert(n.clone(), serde_json::json!(file));
        if i % 2 == 0 {
            a.insert(n, t);
        } else {
            b.insert(n, t);
        }
    }
    candle_core::safetensors::save(&a, path.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, path.join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(path.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let back = load_hf_dir(&path, DType::F32, &Device::Cpu).unwrap();
    assert_same_params(&model, &back, 0.0);
}

#[test]
fn hf_dir_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_hf_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
    let model = tiny(false);
    write_config(&model, dir.path());
    let err = load_hf_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, CheckpointError::Io { .. }),
        "no weights: {err}"
    );
    let mut t: HashMap<String, Tensor> = model.tensors().into_iter().collect();
    t.remove("model.layers.1.mlp.up_proj.weight");
    candle_core::safetensors::save(&t, dir.path().join("model.safetensors")).unwrap();
    let err = load_hf_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}

#[test]
fn gguf_f32_round_trip_is_exact_and_quantized_types_load() {
    let dir = tempfile::tempdir().unwrap();
    for tied in [false, true] {
        let model = tiny(tied);
        let path = dir.path().join(format!("m-{tied}.gguf"));
        write_gguf(&model, GgmlDType::F32, &path);
        let back = load_gguf(&path, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(back.config().tie_word_embeddings, tied);
        assert_eq!(back.config().rope_theta, 100_000.0);
        assert_same_params(&model, &back, 0.0);
    }
    let model = tiny(false);
    let ids: Vec<u32> = (0..16).map(|i| (i * 7 % 64) as u32).collect();
    let want = model
        .logits(&TokenBatch::inputs(1, 16, ids.clone()))
        .unwrap();
    // (type, max relative weight error, max logit difference)
    for (ty, werr, lerr) in [
        (GgmlDType::F16, 1e-3, 5e-3),
        (GgmlDType::Q8_0, 1e-2, 0.1),
        (GgmlDType::Q4_0, 0.2, 1.0),
        (GgmlDType::Q4_1, 0.2, 1.0),
    ] {
        let path = dir.path().join(format!("{ty:?}.gguf"));
        write_gguf(&model, ty, &path);
        let back = load_gguf(&path, DType::F32, &Device::Cpu).unwrap();
        for (n, v) in model.params() {
            let scale = v
                .as_tensor()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let d = max_abs_diff(v.as_tensor(), back.params()[n].as_tensor()) / f64::from(scale);
            assert!(d < werr, "{ty:?} {n}: relative error {d}");
        }
        let got = back
            .logits(&TokenBatch::inputs(1, 16, ids.clone()))
            .unwrap();
        let d = max_abs_diff(&got, &want);
        eprintln!("{ty:?}: max |logit diff| vs f32 = {d:.2e}");
        assert!(d < lerr, "{ty:?}: {d}");
    }
}

#[test]
fn gguf_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.gguf");
    std::fs::write(&path, b"not a gguf file at all").unwrap();
    assert!(matches!(
        load_gguf(&path, DType::F32, &Device::Cpu),
        Err(CheckpointError::Format { .. })
    ));
    assert!(matches!(
        load_gguf(&dir.path().join("absent.gguf"), DType::F32, &Device::Cpu),
        Err(CheckpointError::Io { .. })
    ));
}
