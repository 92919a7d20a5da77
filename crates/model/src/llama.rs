//! The Llama-family decoder in training mode (Llama / CodeLlama / Mistral / Qwen2 / SmolLM2).
//!
//! Pre-norm decoder (Touvron et al. 2023): `x += o(attn(rope(q(n1(x))), rope(k(..)), v(..)))`,
//! `x += down(silu(gate(n2(x))) * up(n2(x)))`, final RMSNorm, LM head (optionally tied to the
//! embeddings). Parameters are candle [`Var`]s under Hugging Face names, kept name-sorted.

use super::batch::TokenBatch;
use super::config::LlamaConfig;
use super::error::ModelError;
use super::fused::{linear, merge_heads, rms_norm, split_heads, swiglu, RopeTables};
use super::init::SplitMix64;
use super::kv_cache::{positions, run_blocks, Attend, KvCache};
use super::lm::CausalLm;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::BTreeMap;

/// HF name of the token embedding.
pub const EMBED: &str = "model.embed_tokens.weight";
/// HF name of the final norm.
pub const FINAL_NORM: &str = "model.norm.weight";
/// HF name of the (untied) LM head.
pub const LM_HEAD: &str = "lm_head.weight";

/// Every parameter the config implies, HF name to shape, name-sorted.
pub fn parameter_shapes(cfg: &LlamaConfig) -> BTreeMap<String, Vec<usize>> {
    let (d, v, f) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let (hd, nh, nkv) = (cfg.head_dim(), cfg.num_attention_heads, cfg.kv_heads());
    let mut m = BTreeMap::new();
    m.insert(EMBED.to_string(), vec![v, d]);
    m.insert(FINAL_NORM.to_string(), vec![d]);
    if !cfg.tie_word_embeddings {
        m.insert(LM_HEAD.to_string(), vec![v, d]);
    }
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        m.insert(format!("{p}.input_layernorm.weight"), vec![d]);
        m.insert(format!("{p}.post_attention_layernorm.weight"), vec![d]);
        m.insert(format!("{p}.self_attn.q_proj.weight"), vec![nh * hd, d]);
        m.insert(format!("{p}.self_attn.k_proj.weight"), vec![nkv * hd, d]);
        m.insert(format!("{p}.self_attn.v_proj.weight"), vec![nkv * hd, d]);
        m.insert(format!("{p}.self_attn.o_proj.weight"), vec![d, nh * hd]);
        if cfg.qkv_bias() {
            m.insert(format!("{p}.self_attn.q_proj.bias"), vec![nh * hd]);
            m.insert(format!("{p}.self_attn.k_proj.bias"), vec![nkv * hd]);
            m.insert(format!("{p}.self_attn.v_proj.bias"), vec![nkv * hd]);
        }
        if cfg.o_bias() {
            m.insert(format!("{p}.self_attn.o_proj.bias"), vec![d]);
        }
        m.insert(format!("{p}.mlp.gate_proj.weight"), vec![f, d]);
        m.insert(format!("{p}.mlp.up_proj.weight"), vec![f, d]);
        m.insert(format!("{p}.mlp.down_proj.weight"), vec![d, f]);
    }
    m
}

/// Whether a parameter is a norm weight or a bias (no weight decay, `1 + noise` init for
/// norms).
pub fn is_norm_or_bias(name: &str) -> bool {
    name.ends_with(".bias") || name.contains("norm")
}

struct Layer {
    in_norm: Var,
    post_norm: Var,
    q: Var,
    k: Var,
    v: Var,
    o: Var,
    q_b: Option<Var>,
    k_b: Option<Var>,
    v_b: Option<Var>,
    o_b: Option<Var>,
    gate: Var,
    up: Var,
    down: Var,
}

/// A Llama-family causal LM whose parameters are trainable candle [`Var`]s.
pub struct Llama {
    cfg: LlamaConfig,
    dtype: DType,
    device: Device,
    params: BTreeMap<String, Var>,
    embed: Var,
    norm: Var,
    lm_head: Var,
    layers: Vec<Layer>,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("cfg", &self.cfg)
            .field("dtype", &self.dtype)
            .field("parameters", &CausalLm::num_parameters(self))
            .finish()
    }
}

impl Llama {
    /// A randomly initialised model, reproducible from `seed`: matrices and biases are
    /// `N(0, std^2)`, norm weights `1 + N(0, std^2)` (HF uses 0.02 and exactly 1/0; the noise
    /// on norms and biases makes reference checks see them).
    ///
    /// # Errors
    /// Invalid config or tensor allocation failure.
    pub fn new_random(
        cfg: LlamaConfig,
        seed: u64,
        std: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        let mut rng = SplitMix64::new(seed);
        let mut tensors = BTreeMap::new();
        for (name, shape) in parameter_shapes(&cfg) {
            let n: usize = shape.iter().product();
            let mut vals = rng.normal_vec(n, std);
            if name.contains("norm") {
                vals.iter_mut().for_each(|x| *x += 1.0);
            }
            let t = Tensor::from_vec(vals, shape, device)?.to_dtype(dtype)?;
            tensors.insert(name, t);
        }
        Self::from_tensors(cfg, tensors, dtype, device)
    }

    /// Builds the model from named tensors (any float dtype, converted to `dtype`).
    /// `lm_head.weight` is ignored when embeddings are tied, as is `*.rotary_emb.inv_freq`.
    ///
    /// # Errors
    /// [`ModelError::MissingParameter`], [`ModelError::UnexpectedParameter`],
    /// [`ModelError::Shape`], or an invalid config.
    pub fn from_tensors(
        cfg: LlamaConfig,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        let shapes = parameter_shapes(&cfg);
        let mut params = BTreeMap::new();
        for (name, t) in tensors {
            let Some(expected) = shapes.get(&name) else {
                if name.ends_with("rotary_emb.inv_freq")
                    || (cfg.tie_word_embeddings && name == LM_HEAD)
                {
                    continue;
                }
                return Err(ModelError::UnexpectedParameter(name));
            };
            if t.dims() != expected.as_slice() {
                return Err(ModelError::Shape {
                    name,
                    expected: expected.clone(),
                    got: t.dims().to_vec(),
                });
            }
            let t = t.to_device(device)?.to_dtype(dtype)?;
            params.insert(name, Var::from_tensor(&t)?);
        }
        if let Some(missing) = shapes.keys().find(|n| !params.contains_key(*n)) {
            return Err(ModelError::MissingParameter(missing.clone()));
        }
        let get = |n: &str| params[n].clone();
        let opt = |n: String| params.get(&n).cloned();
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Layer {
                    in_norm: get(&format!("{p}.input_layernorm.weight")),
                    post_norm: get(&format!("{p}.post_attention_layernorm.weight")),
                    q: get(&format!("{p}.self_attn.q_proj.weight")),
                    k: get(&format!("{p}.self_attn.k_proj.weight")),
                    v: get(&format!("{p}.self_attn.v_proj.weight")),
                    o: get(&format!("{p}.self_attn.o_proj.weight")),
                    q_b: opt(format!("{p}.self_attn.q_proj.bias")),
                    k_b: opt(format!("{p}.self_attn.k_proj.bias")),
                    v_b: opt(format!("{p}.self_attn.v_proj.bias")),
                    o_b: opt(format!("{p}.self_attn.o_proj.bias")),
                    gate: get(&format!("{p}.mlp.gate_proj.weight")),
                    up: get(&format!("{p}.mlp.up_proj.weight")),
                    down: get(&format!("{p}.mlp.down_proj.weight")),
                }
            })
            .collect();
        let embed = get(EMBED);
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            get(LM_HEAD)
        };
        Ok(Self {
            norm: get(FINAL_NORM),
            cfg,
            dtype,
            device: device.clone(),
            params,
            embed,
            lm_head,
            layers,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Final hidden states `(rows, seq, hidden)` of `batch`; with a `cache`, the batch (one
    /// row) follows the cached positions and is appended to the cache.
    fn hidden_states(
        &self,
        batch: &TokenBatch,
        track: bool,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor, ModelError> {
        batch.validate(self.cfg.vocab_size)?;
        let (rows, seq, d) = (batch.rows, batch.seq_len, self.cfg.hidden_size);
        let ids = Tensor::from_slice(&batch.input_ids, rows * seq, &self.device)?;
        let x = w(&self.embed, track)
            .index_select(&ids, 0)?
            .reshape((rows, seq, d))?;
        let start = cache.as_ref().map_or(0, |c| c.len());
        let tables = RopeTables::new(
            &positions(batch, start),
            rows,
            seq,
            self.cfg.head_dim(),
            self.cfg.rope_theta,
            self.dtype,
            &self.device,
        )?;
        let x = run_blocks(x, &self.layers, batch, cache, |x, l, attend| {
            self.block(x, l, &tables, attend, track)
        })?;
        Ok(rms_norm(&x, &w(&self.norm, track), self.cfg.rms_norm_eps)?)
    }

    fn block(
        &self,
        x: &Tensor,
        l: &Layer,
        tables: &RopeTables,
        attend: Attend<'_>,
        track: bool,
    ) -> candle_core::Result<Tensor> {
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.kv_heads(),
            self.cfg.head_dim(),
        );
        let eps = self.cfg.rms_norm_eps;
        let ow = |v: &Option<Var>| v.as_ref().map(|v| w(v, track));
        let h = rms_norm(x, &w(&l.in_norm, track), eps)?;
        let q = linear(&h, &w(&l.q, track), ow(&l.q_b).as_ref())?;
        let k = linear(&h, &w(&l.k, track), ow(&l.k_b).as_ref())?;
        let v = linear(&h, &w(&l.v, track), ow(&l.v_b).as_ref())?;
        let q = split_heads(&q, nh, Some(tables))?;
        let k = split_heads(&k, nkv, Some(tables))?;
        let v = split_heads(&v, nkv, None)?;
        let o = merge_heads(&attend.run(&q, &k, &v, 1.0 / (hd as f64).sqrt())?)?;
        let x = (x + linear(&o, &w(&l.o, track), ow(&l.o_b).as_ref())?)?;
        let h = rms_norm(&x, &w(&l.post_norm, track), eps)?;
        let g = linear(&h, &w(&l.gate, track), None)?;
        let u = linear(&h, &w(&l.up, track), None)?;
        x + linear(&swiglu(&g, &u)?, &w(&l.down, track), None)?
    }
}

impl CausalLm for Llama {
    fn hidden(&self, batch: &TokenBatch, track: bool) -> Result<Tensor, ModelError> {
        self.hidden_states(batch, track, None)
    }

    fn hidden_cached(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
    ) -> Result<Option<Tensor>, ModelError> {
        let batch = TokenBatch::inputs(1, ids.len(), ids.to_vec());
        self.hidden_states(&batch, false, Some(cache)).map(Some)
    }

    fn head(&self, track: bool) -> (Tensor, Option<Tensor>) {
        (w(&self.lm_head, track), None)
    }

    fn head_names(&self) -> (&'static str, Option<&'static str>) {
        let name = if self.cfg.tie_word_embeddings {
            EMBED
        } else {
            LM_HEAD
        };
        (name, None)
    }

    fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

/// The parameter as a graph leaf (`track`) or a detached view sharing its storage.
fn w(v: &Var, track: bool) -> Tensor {
    if track {
        v.as_tensor().clone()
    } else {
        v.as_tensor().detach()
    }
}
