//! A llama.cpp-style GGUF writer for tests, independent of the loader (which undoes what
//! [`llama_cpp_permute`] does).

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use model::{CausalLm, Llama};
use std::collections::BTreeMap;
use std::path::Path;

/// llama.cpp's `permute` (convert_hf_to_gguf.py), written independently of the loader:
/// `w.reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
pub fn llama_cpp_permute(w: &Tensor, n_head: usize) -> Tensor {
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
pub fn write_gguf(model: &Llama, qtype: GgmlDType, path: &Path) {
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
