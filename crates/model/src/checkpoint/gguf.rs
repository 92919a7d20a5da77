//! GGUF files (llama.cpp): metadata to [`LlamaConfig`], tensors dequantized (any type candle
//! reads: F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants) and renamed to HF names, or with the
//! projection weights kept quantized for QLoRA ([`load_gguf_quantized`]).
//!
//! llama.cpp's converter stores Llama's Q and K projection rows in an interleaved-pair RoPE
//! layout (`permute` in `convert_hf_to_gguf.py`); they are permuted back to HF's half-split
//! layout here. Qwen2 GGUFs use the half-split (NeoX) layout already and are not permuted.

use super::error::CheckpointError;
use crate::quantized::QuantizedWeight;
use crate::{Llama, LlamaConfig};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// HF name of a GGUF tensor name (`blk.3.attn_q.weight` to
/// `model.layers.3.self_attn.q_proj.weight`); `None` for names the model does not use.
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = tail.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undoes llama.cpp's Q/K permutation: rows of each head, stored as `(head_dim/2, 2)` pairs,
/// are reordered to HF's `(2, head_dim/2)` halves. `t` is `(heads * head_dim, ..)` (a weight
/// or a bias).
///
/// # Errors
/// A first dimension not divisible by `heads * 2`.
pub fn unpermute_rows(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let hd = dims[0] / heads;
    let mut split = vec![heads, hd / 2, 2];
    split.extend_from_slice(&dims[1..]);
    t.reshape(split)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// Loads a Llama or Qwen2 GGUF file, dequantizing every tensor to f32 and then to `dtype`.
///
/// # Errors
/// [`CheckpointError::Io`] / [`CheckpointError::Format`] for unreadable or malformed files,
/// missing metadata or an unsupported architecture; [`CheckpointError::Model`] when tensors do
/// not fit the config.
pub fn load_gguf(path: &Path, dtype: DType, device: &Device) -> Result<Llama, CheckpointError> {
    load_gguf_with(path, dtype, device, false)
}

/// [`load_gguf`] keeping the projection weights (`q_proj` .. `down_proj`) in the file's block
/// formats ([`QuantizedWeight`], Q and K rows unpermuted on each dequantization): QLoRA's
/// frozen base. Embeddings, norms and the LM head are dequantized to `dtype` as in
/// [`load_gguf`]; the model computes exactly what [`load_gguf`]'s does.
///
/// # Errors
/// As [`load_gguf`].
pub fn load_gguf_quantized(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<Llama, CheckpointError> {
    load_gguf_with(path, dtype, device, true)
}

fn load_gguf_with(
    path: &Path,
    dtype: DType,
    device: &Device,
    keep_quantized: bool,
) -> Result<Llama, CheckpointError> {
    let mut file = std::fs::File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    let mut reader = std::io::BufReader::new(&mut file);
    let content = Content::read(&mut reader).map_err(|e| {
        CheckpointError::format(
            path,
            format!(
                "not a readable GGUF file ({e}); a model path is a Hugging Face directory, a \
                 .gguf file, a training checkpoint or an adapter directory"
            ),
        )
    })?;
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| CheckpointError::format(path, "no general.architecture"))?;
    if arch != "llama" && arch != "qwen2" {
        return Err(CheckpointError::format(
            path,
            format!("unsupported architecture {arch:?} (llama, qwen2)"),
        ));
    }
    let num = |key: &str| -> Result<Option<f64>, CheckpointError> {
        let Some(v) = md.get(&format!("{arch}.{key}")) else {
            return Ok(None);
        };
        let x = match v {
            Value::U8(x) => *x as f64,
            Value::U16(x) => *x as f64,
            Value::U32(x) => *x as f64,
            Value::U64(x) => *x as f64,
            Value::I32(x) => *x as f64,
            Value::I64(x) => *x as f64,
            Value::F32(x) => *x as f64,
            Value::F64(x) => *x,
            other => {
                return Err(CheckpointError::format(
                    path,
                    format!("{arch}.{key} is not a number: {other:?}"),
                ))
            }
        };
        Ok(Some(x))
    };
    let need = |key: &str| -> Result<usize, CheckpointError> {
        num(key)?
            .map(|x| x as usize)
            .ok_or_else(|| CheckpointError::format(path, format!("no {arch}.{key}")))
    };
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let kv_heads = num("attention.head_count_kv")?.map_or(heads, |x| x as usize);
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| CheckpointError::format(path, "no token_embd.weight"))?;
    let vocab = embd.shape.dims()[0];
    let head_dim = num("attention.key_length")?.map(|x| x as usize);
    let cfg = LlamaConfig {
        model_type: arch.clone(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: need("feed_forward_length")?,
        num_hidden_layers: need("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv_heads),
        head_dim: head_dim.filter(|&h| h * heads != hidden),
        rms_norm_eps: num("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        rope_theta: num("rope.freq_base")?.unwrap_or(10_000.0),
        max_position_embeddings: num("context_length")?.map_or(2048, |x| x as usize),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: false,
        extra: BTreeMap::new(),
    };
    cfg.validate()?;
    let permute = arch == "llama";
    let mut tensors = Vec::new();
    let mut quantized = BTreeMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let Some(hf) = gguf_to_hf_name(name) else {
            continue;
        };
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| CheckpointError::format(path, format!("{name}: {e}")))?;
        let rope_heads = if !permute {
            None
        } else if hf.contains("self_attn.q_proj") {
            Some(heads)
        } else if hf.contains("self_attn.k_proj") {
            Some(kv_heads)
        } else {
            None
        };
        if keep_quantized && hf.ends_with("_proj.weight") {
            let w = QuantizedWeight::from_qtensor(q, rope_heads)
                .map_err(|e| CheckpointError::format(path, format!("{name}: {e}")))?;
            quantized.insert(hf, Arc::new(w));
            continue;
        }
        let mut t = q
            .dequantize(&Device::Cpu)
            .map_err(|e| CheckpointError::format(path, format!("{name}: {e}")))?;
        let conv = |r: candle_core::Result<Tensor>| {
            r.map_err(|e| CheckpointError::format(path, format!("{name}: {e}")))
        };
        if let Some(h) = rope_heads {
            t = conv(unpermute_rows(&t, h))?;
        }
        tensors.push((hf, t));
    }
    Ok(Llama::from_parts(cfg, tensors, quantized, dtype, device)?)
}
