//! The Llama-family decoder in training mode (Llama / CodeLlama / Mistral / Qwen2 / SmolLM2).
//!
//! Pre-norm decoder (Touvron et al. 2023): `x += o(attn(rope(q(n1(x))), rope(k(..)), v(..)))`,
//! `x += down(silu(gate(n2(x))) * up(n2(x)))`, final RMSNorm, LM head (optionally tied to the
//! embeddings). Parameters are candle [`Var`]s under Hugging Face names, kept name-sorted.

use super::batch::TokenBatch;
use super::config::LlamaConfig;
use super::error::ModelError;
use super::fused::{frozen, linear, merge_heads, rms_norm, split_heads, swiglu, RopeTables};
use super::init::SplitMix64;
use super::kv_cache::{positions, run_blocks, Attend, KvCache};
use super::layers::param as w;
use super::lm::CausalLm;
use super::lora::{projection_weight_name, Lora};
use super::quantized::{BaseWeight, QuantizedWeight};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::BTreeMap;
use std::sync::Arc;

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
    /// The layer's index (its LoRA adapters' key).
    index: usize,
    in_norm: Var,
    post_norm: Var,
    q: BaseWeight,
    k: BaseWeight,
    v: BaseWeight,
    o: BaseWeight,
    q_b: Option<Var>,
    k_b: Option<Var>,
    v_b: Option<Var>,
    o_b: Option<Var>,
    gate: BaseWeight,
    up: BaseWeight,
    down: BaseWeight,
}

impl Layer {
    /// The projections by PEFT module name.
    fn projections(&self) -> [(&'static str, &BaseWeight); 7] {
        [
            ("q_proj", &self.q),
            ("k_proj", &self.k),
            ("v_proj", &self.v),
            ("o_proj", &self.o),
            ("gate_proj", &self.gate),
            ("up_proj", &self.up),
            ("down_proj", &self.down),
        ]
    }

    fn projections_mut(&mut self) -> [(&'static str, &mut BaseWeight); 7] {
        [
            ("q_proj", &mut self.q),
            ("k_proj", &mut self.k),
            ("v_proj", &mut self.v),
            ("o_proj", &mut self.o),
            ("gate_proj", &mut self.gate),
            ("up_proj", &mut self.up),
            ("down_proj", &mut self.down),
        ]
    }
}

/// A Llama-family causal LM whose parameters are trainable candle [`Var`]s.
pub struct Llama {
    cfg: LlamaConfig,
    dtype: DType,
    device: Device,
    /// The dense parameters (all of them unless the base is quantized).
    params: BTreeMap<String, Var>,
    /// Quantized projection weights by HF name (QLoRA's frozen base).
    quantized: BTreeMap<String, Arc<QuantizedWeight>>,
    embed: Var,
    norm: Var,
    lm_head: Var,
    layers: Vec<Layer>,
    /// LoRA adapters: when present they are the only trainable parameters.
    lora: Option<Lora>,
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
        Self::from_parts(cfg, tensors, BTreeMap::new(), dtype, device)
    }

    /// [`Llama::from_tensors`] with some projection weights (`*_proj.weight`) quantized
    /// instead of dense: they are frozen, so the model can only train LoRA adapters (QLoRA).
    ///
    /// # Errors
    /// As [`Llama::from_tensors`]; a quantized tensor that is not a projection weight.
    pub fn from_parts(
        cfg: LlamaConfig,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        quantized: BTreeMap<String, Arc<QuantizedWeight>>,
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
        for (name, q) in &quantized {
            let Some(expected) = shapes.get(name).filter(|_| name.ends_with("_proj.weight")) else {
                return Err(ModelError::UnexpectedParameter(name.clone()));
            };
            if params.contains_key(name) {
                return Err(ModelError::Config(format!(
                    "{name}: given both dense and quantized"
                )));
            }
            let (o, i) = q.dims();
            if expected.as_slice() != [o, i] {
                return Err(ModelError::Shape {
                    name: name.clone(),
                    expected: expected.clone(),
                    got: vec![o, i],
                });
            }
        }
        let have = |n: &String| params.contains_key(n) || quantized.contains_key(n);
        if let Some(missing) = shapes.keys().find(|n| !have(n)) {
            return Err(ModelError::MissingParameter(missing.clone()));
        }
        let get = |n: &str| params[n].clone();
        let base = |n: &str| match quantized.get(n) {
            Some(q) => BaseWeight::Quantized(q.clone()),
            None => BaseWeight::Dense(params[n].clone()),
        };
        let opt = |n: String| params.get(&n).cloned();
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Layer {
                    index: i,
                    in_norm: get(&format!("{p}.input_layernorm.weight")),
                    post_norm: get(&format!("{p}.post_attention_layernorm.weight")),
                    q: base(&format!("{p}.self_attn.q_proj.weight")),
                    k: base(&format!("{p}.self_attn.k_proj.weight")),
                    v: base(&format!("{p}.self_attn.v_proj.weight")),
                    o: base(&format!("{p}.self_attn.o_proj.weight")),
                    q_b: opt(format!("{p}.self_attn.q_proj.bias")),
                    k_b: opt(format!("{p}.self_attn.k_proj.bias")),
                    v_b: opt(format!("{p}.self_attn.v_proj.bias")),
                    o_b: opt(format!("{p}.self_attn.o_proj.bias")),
                    gate: base(&format!("{p}.mlp.gate_proj.weight")),
                    up: base(&format!("{p}.mlp.up_proj.weight")),
                    down: base(&format!("{p}.mlp.down_proj.weight")),
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
            quantized,
            embed,
            lm_head,
            layers,
            lora: None,
        })
    }

    /// Per layer, the `(out, in)` shape of each projection LoRA can target.
    pub fn projection_shapes(&self) -> Vec<BTreeMap<String, (usize, usize)>> {
        self.layers
            .iter()
            .map(|l| {
                l.projections()
                    .into_iter()
                    .filter_map(|(n, w)| Some((n.to_string(), w.dims().ok()?)))
                    .collect()
            })
            .collect()
    }

    /// Replaces every dense projection weight (`q_proj` .. `down_proj`) by its quantization to
    /// `format` (QLoRA's frozen base): from now on they are not parameters. Call before
    /// attaching adapters; projections already quantized are kept.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the weight when its input size is not a multiple of the
    /// format's block.
    pub fn quantize_base(&mut self, format: GgmlDType) -> Result<(), ModelError> {
        for l in &mut self.layers {
            let index = l.index;
            for (m, w) in l.projections_mut() {
                let BaseWeight::Dense(v) = w else { continue };
                let name = projection_weight_name(index, m);
                let q = QuantizedWeight::quantize(v.as_tensor(), format).map_err(|e| match e {
                    ModelError::Config(m) => ModelError::Config(format!("{name}: {m}")),
                    other => other,
                })?;
                let q = Arc::new(q);
                self.params.remove(&name);
                self.quantized.insert(name, q.clone());
                *w = BaseWeight::Quantized(q);
            }
        }
        Ok(())
    }

    /// The quantized projection weights by HF name (empty unless the base is quantized).
    pub fn quantized(&self) -> &BTreeMap<String, Arc<QuantizedWeight>> {
        &self.quantized
    }

    /// Elements of the base model, quantized weights included.
    pub fn base_num_parameters(&self) -> usize {
        let dense: usize = self.params.values().map(|v| v.elem_count()).sum();
        let q: usize = self
            .quantized
            .values()
            .map(|q| q.dims().0 * q.dims().1)
            .sum();
        dense + q
    }

    /// Attaches LoRA adapters: from now on they are [`CausalLm::params`] (the trainable
    /// parameters) and the base weights are frozen.
    pub fn set_lora(&mut self, lora: Lora) {
        self.lora = Some(lora);
    }

    /// The adapters, if attached.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// The base model's dense parameters by HF name (also with adapters attached; without
    /// the quantized projections, see [`Llama::quantized`]).
    pub fn base_params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// The base weights with the adapters merged in, by HF name: `W + s B A` computed in f32
    /// and cast to the model dtype (what PEFT's `merge_and_unload` gives; a quantized weight
    /// is dequantized first). Without adapters, the base weights.
    ///
    /// # Errors
    /// A tensor failure.
    pub fn merged_tensors(&self) -> Result<BTreeMap<String, Tensor>, ModelError> {
        let mut out: BTreeMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        for (n, q) in &self.quantized {
            out.insert(n.clone(), q.dequantize(self.dtype, &self.device)?);
        }
        if let Some(lora) = &self.lora {
            lora.merge_into(&mut out, self.dtype)?;
        }
        Ok(out)
    }

    /// `x W^T (+ b)` of projection `module` in layer `layer`, plus its LoRA delta when
    /// adapted (then the base is frozen).
    #[allow(clippy::too_many_arguments)]
    fn proj(
        &self,
        layer: usize,
        module: &str,
        x: &Tensor,
        wv: &BaseWeight,
        bv: Option<&Var>,
        track: bool,
        dropout_keys: &[u64],
    ) -> candle_core::Result<Tensor> {
        let b = |b: &Var| b.as_tensor().clone();
        match (&self.lora, wv) {
            (Some(lora), _) => {
                let at = (layer, module);
                lora.project(at, x, &wv.frozen(), bv.map(b).as_ref(), track, dropout_keys)
            }
            (None, BaseWeight::Dense(v)) => {
                let b = bv.map(|b| w(b, track));
                linear(x, &w(v, track), b.as_ref())
            }
            (None, BaseWeight::Quantized(_)) => frozen(x, &wv.frozen(), bv.map(b).as_ref()),
        }
    }

    /// Whether base weights join the graph (not when adapters are attached: frozen base).
    fn track_base(&self, track: bool) -> bool {
        track && self.lora.is_none()
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
        let x = w(&self.embed, self.track_base(track))
            .index_select(&ids, 0)?
            .reshape((rows, seq, d))?;
        let tables = RopeTables::new(
            &positions(batch, cache.as_deref()),
            rows,
            seq,
            self.cfg.head_dim(),
            self.cfg.rope_theta,
            self.dtype,
            &self.device,
        )?;
        let keys = &batch.dropout_keys;
        let x = run_blocks(x, &self.layers, batch, cache, |x, l, attend| {
            self.block(x, l, &tables, attend, track, keys)
        })?;
        let tb = self.track_base(track);
        Ok(rms_norm(&x, &w(&self.norm, tb), self.cfg.rms_norm_eps)?)
    }

    fn block(
        &self,
        x: &Tensor,
        l: &Layer,
        tables: &RopeTables,
        attend: Attend<'_>,
        track: bool,
        dropout_keys: &[u64],
    ) -> candle_core::Result<Tensor> {
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.kv_heads(),
            self.cfg.head_dim(),
        );
        let eps = self.cfg.rms_norm_eps;
        let i = l.index;
        let tb = self.track_base(track);
        let p = |m: &str, x: &Tensor, wv: &BaseWeight, bv: &Option<Var>| {
            self.proj(i, m, x, wv, bv.as_ref(), track, dropout_keys)
        };
        let h = rms_norm(x, &w(&l.in_norm, tb), eps)?;
        let q = p("q_proj", &h, &l.q, &l.q_b)?;
        let k = p("k_proj", &h, &l.k, &l.k_b)?;
        let v = p("v_proj", &h, &l.v, &l.v_b)?;
        let q = split_heads(&q, nh, Some(tables))?;
        let k = split_heads(&k, nkv, Some(tables))?;
        let v = split_heads(&v, nkv, None)?;
        let o = merge_heads(&attend.run(&q, &k, &v, 1.0 / (hd as f64).sqrt())?)?;
        let x = (x + p("o_proj", &o, &l.o, &l.o_b)?)?;
        let h = rms_norm(&x, &w(&l.post_norm, tb), eps)?;
        let g = p("gate_proj", &h, &l.gate, &None)?;
        let u = p("up_proj", &h, &l.up, &None)?;
        x + p("down_proj", &swiglu(&g, &u)?, &l.down, &None)?
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
        let rows = cache.rows();
        let batch = TokenBatch::inputs(rows, ids.len() / rows, ids.to_vec());
        self.hidden_states(&batch, false, Some(cache)).map(Some)
    }

    fn head(&self, track: bool) -> (Tensor, Option<Tensor>) {
        (w(&self.lm_head, self.track_base(track)), None)
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
        match &self.lora {
            Some(l) => l.params(),
            None => &self.params,
        }
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
