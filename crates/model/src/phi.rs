//! Phi-1 / Phi-1.5 / Phi-2 (Microsoft; HF `PhiForCausalLM`) in training mode: LayerNorm,
//! partial rotary embeddings, GELU MLP, attention and MLP in parallel on the same normed
//! input (`x + attn(ln(x)) + mlp(ln(x))`), biases everywhere, LM head with a bias.

use super::batch::TokenBatch;
use super::error::ModelError;
use super::fused::{linear, merge_heads, split_heads, RopeTables};
use super::init::SplitMix64;
use super::kv_cache::{positions, run_blocks, Attend, KvCache};
use super::layers::layer_norm;
use super::layers::param as w;
use super::lm::CausalLm;
use super::lora::Lora;
use super::quantized::Frozen;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_partial() -> f64 {
    0.5
}
fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "gelu_new".into()
}
fn default_model_type() -> String {
    "phi".into()
}
fn default_max_pos() -> usize {
    2048
}

/// Phi hyper-parameters (HF `PhiConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhiConfig {
    /// Always `"phi"`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads; absent means equal to the query heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// `"gelu_new"` / `"gelu_pytorch_tanh"` (tanh approximation) or `"gelu"` (erf).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// RoPE base θ.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Fraction of each head's features that are rotated (Phi-1.5: 0.5).
    #[serde(default = "default_partial")]
    pub partial_rotary_factor: f64,
    /// Longest trained position (informational).
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// LM head weight shared with the embeddings (its bias stays separate).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Every other field of the file, written back unchanged.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl PhiConfig {
    /// Parses and validates a `config.json` text.
    ///
    /// # Errors
    /// [`ModelError::Config`] / [`ModelError::Unsupported`] (`qk_layernorm`, other
    /// activations, RoPE scaling).
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let cfg: Self =
            serde_json::from_str(text).map_err(|e| ModelError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Pretty JSON for `config.json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Rotated features per head (`partial_rotary_factor * head_dim`, as HF truncates).
    pub fn rotary_dim(&self) -> usize {
        (self.partial_rotary_factor * self.head_dim() as f64) as usize
    }

    /// Checks sizes and rejects what the model does not implement.
    ///
    /// # Errors
    /// See [`PhiConfig::from_json`].
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.hidden_size == 0 || self.num_attention_heads == 0 || self.num_hidden_layers == 0 {
            return bad(
                "hidden_size, num_attention_heads and num_hidden_layers must be > 0".into(),
            );
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad("hidden_size is not a multiple of num_attention_heads".into());
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return bad("num_attention_heads is not a multiple of num_key_value_heads".into());
        }
        let rot = self.rotary_dim();
        if rot == 0 || !rot.is_multiple_of(2) || rot > self.head_dim() {
            return bad(format!(
                "rotary dim {rot} must be even, > 0 and <= head_dim"
            ));
        }
        if self.model_type != "phi" {
            return Err(ModelError::Unsupported(format!(
                "model_type {:?}",
                self.model_type
            )));
        }
        if !matches!(
            self.hidden_act.as_str(),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu"
        ) {
            return Err(ModelError::Unsupported(format!(
                "hidden_act {}",
                self.hidden_act
            )));
        }
        if self.extra.get("qk_layernorm").and_then(|v| v.as_bool()) == Some(true) {
            return Err(ModelError::Unsupported("qk_layernorm".into()));
        }
        if let Some(s) = self.extra.get("rope_scaling") {
            if !s.is_null() {
                return Err(ModelError::Unsupported(format!("rope_scaling {s}")));
            }
        }
        Ok(())
    }

    /// A tiny config for tests.
    pub fn tiny(vocab: usize, hidden: usize, layers: usize, heads: usize) -> Self {
        Self {
            model_type: "phi".into(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: hidden * 4,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: None,
            hidden_act: "gelu_new".into(),
            layer_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            partial_rotary_factor: 0.5,
            max_position_embeddings: 512,
            tie_word_embeddings: false,
            extra: BTreeMap::new(),
        }
    }
}

/// Every Phi parameter, HF name to shape, name-sorted.
pub fn phi_parameter_shapes(cfg: &PhiConfig) -> BTreeMap<String, Vec<usize>> {
    let (d, v, f) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let (hd, nh, nkv) = (cfg.head_dim(), cfg.num_attention_heads, cfg.kv_heads());
    let mut m = BTreeMap::new();
    let lin = |m: &mut BTreeMap<String, Vec<usize>>, name: String, out: usize, inp: usize| {
        m.insert(format!("{name}.weight"), vec![out, inp]);
        m.insert(format!("{name}.bias"), vec![out]);
    };
    lin(&mut m, "lm_head".into(), v, d);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        lin(&mut m, format!("{p}.self_attn.q_proj"), nh * hd, d);
        lin(&mut m, format!("{p}.self_attn.k_proj"), nkv * hd, d);
        lin(&mut m, format!("{p}.self_attn.v_proj"), nkv * hd, d);
        lin(&mut m, format!("{p}.self_attn.dense"), d, nh * hd);
        lin(&mut m, format!("{p}.mlp.fc1"), f, d);
        lin(&mut m, format!("{p}.mlp.fc2"), d, f);
        m.insert(format!("{p}.input_layernorm.weight"), vec![d]);
        m.insert(format!("{p}.input_layernorm.bias"), vec![d]);
    }
    if cfg.tie_word_embeddings {
        m.remove("lm_head.weight");
    }
    m.insert("model.embed_tokens.weight".into(), vec![v, d]);
    m.insert("model.final_layernorm.weight".into(), vec![d]);
    m.insert("model.final_layernorm.bias".into(), vec![d]);
    m
}

struct Lin {
    w: Var,
    b: Var,
}

struct PhiLayer {
    /// The layer's index (its LoRA adapters' key).
    index: usize,
    ln_w: Var,
    ln_b: Var,
    q: Lin,
    k: Lin,
    v: Lin,
    dense: Lin,
    fc1: Lin,
    fc2: Lin,
}

impl PhiLayer {
    /// The projections by PEFT module name.
    fn projections(&self) -> [(&'static str, &Lin); 6] {
        [
            ("q_proj", &self.q),
            ("k_proj", &self.k),
            ("v_proj", &self.v),
            ("dense", &self.dense),
            ("fc1", &self.fc1),
            ("fc2", &self.fc2),
        ]
    }
}

/// A Phi causal LM whose parameters are trainable candle [`Var`]s.
pub struct Phi {
    cfg: PhiConfig,
    dtype: DType,
    device: Device,
    params: BTreeMap<String, Var>,
    embed: Var,
    ln_w: Var,
    ln_b: Var,
    head: Lin,
    layers: Vec<PhiLayer>,
    /// LoRA adapters: when present they are the only trainable parameters.
    lora: Option<Lora>,
}

impl std::fmt::Debug for Phi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phi")
            .field("cfg", &self.cfg)
            .field("dtype", &self.dtype)
            .field("parameters", &CausalLm::num_parameters(self))
            .finish()
    }
}

impl Phi {
    /// A random model reproducible from `seed`: matrices and biases `N(0, std^2)`, norm
    /// weights `1 + N(0, std^2)`.
    ///
    /// # Errors
    /// Invalid config or tensor allocation failure.
    pub fn new_random(
        cfg: PhiConfig,
        seed: u64,
        std: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        let mut rng = SplitMix64::new(seed);
        let mut tensors = BTreeMap::new();
        for (name, shape) in phi_parameter_shapes(&cfg) {
            let n: usize = shape.iter().product();
            let mut vals = rng.normal_vec(n, std);
            if name.contains("layernorm.weight") {
                vals.iter_mut().for_each(|x| *x += 1.0);
            }
            tensors.insert(
                name,
                Tensor::from_vec(vals, shape, device)?.to_dtype(dtype)?,
            );
        }
        Self::from_tensors(cfg, tensors, dtype, device)
    }

    /// Builds the model from named tensors (converted to `dtype`); `lm_head.weight` is ignored
    /// when tied.
    ///
    /// # Errors
    /// Missing, unexpected or mis-shaped parameters, or an invalid config.
    pub fn from_tensors(
        cfg: PhiConfig,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        let shapes = phi_parameter_shapes(&cfg);
        let mut params = BTreeMap::new();
        for (name, t) in tensors {
            let Some(expected) = shapes.get(&name) else {
                if name.ends_with("rotary_emb.inv_freq")
                    || (cfg.tie_word_embeddings && name == "lm_head.weight")
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
        let lin = |p: &str| Lin {
            w: get(&format!("{p}.weight")),
            b: get(&format!("{p}.bias")),
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                PhiLayer {
                    index: i,
                    ln_w: get(&format!("{p}.input_layernorm.weight")),
                    ln_b: get(&format!("{p}.input_layernorm.bias")),
                    q: lin(&format!("{p}.self_attn.q_proj")),
                    k: lin(&format!("{p}.self_attn.k_proj")),
                    v: lin(&format!("{p}.self_attn.v_proj")),
                    dense: lin(&format!("{p}.self_attn.dense")),
                    fc1: lin(&format!("{p}.mlp.fc1")),
                    fc2: lin(&format!("{p}.mlp.fc2")),
                }
            })
            .collect();
        let embed = get("model.embed_tokens.weight");
        let head = Lin {
            w: if cfg.tie_word_embeddings {
                embed.clone()
            } else {
                get("lm_head.weight")
            },
            b: get("lm_head.bias"),
        };
        Ok(Self {
            ln_w: get("model.final_layernorm.weight"),
            ln_b: get("model.final_layernorm.bias"),
            cfg,
            dtype,
            device: device.clone(),
            params,
            embed,
            head,
            layers,
            lora: None,
        })
    }

    /// Per layer, the `(out, in)` shape of each projection LoRA can target
    /// ([`crate::lora::PHI_PROJECTIONS`]).
    pub fn projection_shapes(&self) -> Vec<BTreeMap<String, (usize, usize)>> {
        self.layers
            .iter()
            .map(|l| {
                l.projections()
                    .into_iter()
                    .filter_map(|(n, p)| Some((n.to_string(), p.w.dims2().ok()?)))
                    .collect()
            })
            .collect()
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

    /// The base model's parameters by HF name (also with adapters attached).
    pub fn base_params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// The base weights with the adapters merged in (`W + s B A`, see
    /// [`Lora::merge_into`]); without adapters, the base weights.
    ///
    /// # Errors
    /// A tensor failure.
    pub fn merged_tensors(&self) -> Result<BTreeMap<String, Tensor>, ModelError> {
        let mut out: BTreeMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        if let Some(lora) = &self.lora {
            lora.merge_into(&mut out, self.dtype)?;
        }
        Ok(out)
    }

    /// Whether base weights join the graph (not when adapters are attached: frozen base).
    fn track_base(&self, track: bool) -> bool {
        track && self.lora.is_none()
    }

    /// `x W^T + b` of projection `module` of layer `layer`, plus its LoRA delta when adapted
    /// (then the base is frozen).
    fn proj(
        &self,
        (layer, module): (usize, &str),
        x: &Tensor,
        p: &Lin,
        track: bool,
        dropout_keys: &[u64],
    ) -> candle_core::Result<Tensor> {
        let Some(lora) = &self.lora else {
            return linear(x, &w(&p.w, track), Some(&w(&p.b, track)));
        };
        let base = Frozen::Dense(p.w.as_tensor().detach());
        let at = (layer, module);
        lora.project(at, x, &base, Some(p.b.as_tensor()), track, dropout_keys)
    }

    /// The configuration.
    pub fn config(&self) -> &PhiConfig {
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
        let tb = self.track_base(track);
        let x = w(&self.embed, tb)
            .index_select(&ids, 0)?
            .reshape((rows, seq, d))?;
        let tables = RopeTables::new(
            &positions(batch, cache.as_deref()),
            rows,
            seq,
            self.cfg.rotary_dim(),
            self.cfg.rope_theta,
            self.dtype,
            &self.device,
        )?;
        let keys = &batch.dropout_keys;
        let x = run_blocks(x, &self.layers, batch, cache, |x, l, attend| {
            self.block(x, l, &tables, attend, track, keys)
        })?;
        Ok(layer_norm(
            &x,
            &w(&self.ln_w, tb),
            &w(&self.ln_b, tb),
            self.cfg.layer_norm_eps,
        )?)
    }

    fn block(
        &self,
        x: &Tensor,
        l: &PhiLayer,
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
        let i = l.index;
        let lin = |x: &Tensor, m: &str, p: &Lin| self.proj((i, m), x, p, track, dropout_keys);
        let tb = self.track_base(track);
        let h = layer_norm(x, &w(&l.ln_w, tb), &w(&l.ln_b, tb), self.cfg.layer_norm_eps)?;
        let q = split_heads(&lin(&h, "q_proj", &l.q)?, nh, Some(tables))?;
        let k = split_heads(&lin(&h, "k_proj", &l.k)?, nkv, Some(tables))?;
        let v = split_heads(&lin(&h, "v_proj", &l.v)?, nkv, None)?;
        let o = merge_heads(&attend.run(&q, &k, &v, 1.0 / (hd as f64).sqrt())?)?;
        let attn = lin(&o, "dense", &l.dense)?;
        let f = lin(&h, "fc1", &l.fc1)?;
        let f = if self.cfg.hidden_act == "gelu" {
            f.gelu_erf()?
        } else {
            f.gelu()?
        };
        let mlp = lin(&f, "fc2", &l.fc2)?;
        (x + attn)? + mlp
    }
}

impl CausalLm for Phi {
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
        let tb = self.track_base(track);
        (w(&self.head.w, tb), Some(w(&self.head.b, tb)))
    }

    fn head_names(&self) -> (&'static str, Option<&'static str>) {
        let name = if self.cfg.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        (name, Some("lm_head.bias"))
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
