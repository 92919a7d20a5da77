//! Checkpoints: HF directories (single file, sharded, f16/bf16) and GGUF files (F32, F16,
//! Q8_0, Q4_0, Q4_1, llama.cpp's Q/K permutation), plus loading our saved dir in
//! candle-transformers.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, IndexOp, Tensor};
use model::checkpoint::{load_gguf, load_hf_dir, load_model, save_hf_dir, CheckpointError};
use model::{CausalLm, Llama, LlamaConfig, Model, TokenBatch};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

mod common;
use common::max_abs_diff;

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

/// llama.cpp's `permute` (convert_hf_to_gguf.py), written independently of the loader:
/// `w.reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
fn llama_cpp_permute(w: &Tensor, n_head: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    let v = w.to_vec2::<f32>().unwrap();
    let hd = rows / n_head;
    let mut out = vec![0f32; rows * cols];
    for h in 0..n_head {
        for half in 0..2 {
            for i in 0..hd / 2 {
                // source row (h, half, i) goes to row (h, i, half)
                let dst = h * hd + i * 2 + half;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&v[h * hd + half * (hd / 2) + i]);
            }
        }
    }
    Tensor::from_vec(out, (rows, cols), w.device()).unwrap()
}

fn hf_to_gguf_name(n: &str) -> String {
    n.replace("model.embed_tokens.weight", "token_embd.weight")
        .replace("model.norm.weight", "output_norm.weight")
        .replace("lm_head.weight", "output.weight")
        .replace("model.layers.", "blk.")
        .replace("input_layernorm", "attn_norm")
        .replace("post_attention_layernorm", "ffn_norm")
        .replace("self_attn.q_proj", "attn_q")
        .replace("self_attn.k_proj", "attn_k")
        .replace("self_attn.v_proj", "attn_v")
        .replace("self_attn.o_proj", "attn_output")
        .replace("mlp.gate_proj", "ffn_gate")
        .replace("mlp.up_proj", "ffn_up")
        .replace("mlp.down_proj", "ffn_down")
}

/// Writes `model` as a llama.cpp-style GGUF with matrices in `qtype` (1-D tensors F32).
fn write_gguf(model: &Llama, qtype: GgmlDType, path: &Path) {
    let c = model.config();
    let mut qs: BTreeMap<String, QTensor> = BTreeMap::new();
    for (n, t) in model.tensors() {
        let t = if n.contains("q_proj") {
            llama_cpp_permute(&t, c.num_attention_heads)
        } else if n.contains("k_proj") {
            llama_cpp_permute(&t, c.kv_heads())
        } else {
            t
        };
        let ty = if t.rank() == 1 { GgmlDType::F32 } else { qtype };
        qs.insert(hf_to_gguf_name(&n), QTensor::quantize(&t, ty).unwrap());
    }
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", Value::U32(c.hidden_size as u32)),
        ("llama.block_count", Value::U32(c.num_hidden_layers as u32)),
        (
            "llama.feed_forward_length",
            Value::U32(c.intermediate_size as u32),
        ),
        (
            "llama.attention.head_count",
            Value::U32(c.num_attention_heads as u32),
        ),
        (
            "llama.attention.head_count_kv",
            Value::U32(c.kv_heads() as u32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_norm_eps as f32),
        ),
        ("llama.rope.freq_base", Value::F32(c.rope_theta as f32)),
        (
            "llama.context_length",
            Value::U32(c.max_position_embeddings as u32),
        ),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
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
