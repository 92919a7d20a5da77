//! LoRA adapters (Hu et al. 2021) with PEFT's semantics (peft 0.21, `LoraLayer`): for a
//! targeted linear layer `W (out, in)`, `y = x W^T + (x A^T B^T) * s` with `A (r, in)`,
//! `B (out, r)`, `s = alpha / r` (`alpha / sqrt(r)` with rsLoRA). `A` is initialised
//! kaiming-uniform with `a = sqrt(5)`, i.e. `U(-1/sqrt(in), 1/sqrt(in))`, and `B = 0`, so a
//! fresh adapter leaves the model unchanged. Adapters are f32 (f64 over an f64 base) and the only trainable
//! parameters; the base is frozen and its matmul's backward computes no weight gradient
//! ([`crate::fused::frozen`]).
//!
//! Adapter names are PEFT's saved keys, e.g.
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.

use crate::error::ModelError;
use crate::init::{mix64, SplitMix64};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The projections of a Llama-family block LoRA can target (PEFT's module names).
pub const LLAMA_PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The projections of a Phi block LoRA can target (PEFT's module names; PEFT's
/// `"all-linear"` on `PhiForCausalLM`).
pub const PHI_PROJECTIONS: [&str; 6] = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"];

/// Every projection name of the supported architectures, each once (Llama's, then Phi's own):
/// a module's index here keys its dropout masks.
fn all_projections() -> impl Iterator<Item = &'static str> {
    let phi_own = PHI_PROJECTIONS
        .into_iter()
        .filter(|m| !LLAMA_PROJECTIONS.contains(m));
    LLAMA_PROJECTIONS.into_iter().chain(phi_own)
}

/// The sub-module path of a projection inside a decoder layer (`self_attn` or `mlp`).
pub fn projection_parent(module: &str) -> &'static str {
    match module {
        "gate_proj" | "up_proj" | "down_proj" | "fc1" | "fc2" => "mlp",
        _ => "self_attn",
    }
}

/// `[lora]` settings as PEFT's `LoraConfig` names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSettings {
    /// Rank r (>= 1).
    pub r: usize,
    /// alpha (the scale numerator).
    pub alpha: f64,
    /// Dropout on the input of A (PEFT `lora_dropout`): a training setting (no effect on a
    /// forward without dropout, a merge or an evaluation); training supports only 0 so far.
    pub dropout: f64,
    /// Targeted projections (names from [`LLAMA_PROJECTIONS`] or [`PHI_PROJECTIONS`], as the
    /// model has them), sorted.
    pub target_modules: Vec<String>,
    /// rsLoRA scaling `alpha / sqrt(r)`.
    pub use_rslora: bool,
}

impl LoraSettings {
    /// The scale `s` applied to `B A x`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Checks r, alpha, dropout and the module names.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the setting.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.r == 0 {
            return Err(ModelError::Config("`lora.r`: must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(ModelError::Config(format!(
                "`lora.alpha`: must be > 0, got {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::Config(format!(
                "`lora.dropout`: must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(ModelError::Config("`lora.target_modules`: empty".into()));
        }
        if let Some(m) = self
            .target_modules
            .iter()
            .find(|m| !all_projections().any(|p| p == m.as_str()))
        {
            return Err(ModelError::Config(format!(
                "`lora.target_modules`: unknown module `{m}` (expected \"all-linear\" or some of \
                 {} (Llama family), {} (Phi))",
                LLAMA_PROJECTIONS.join(", "),
                PHI_PROJECTIONS.join(", ")
            )));
        }
        Ok(())
    }
}

/// The adapters' dtype over a base of dtype `base`: f32 (PEFT keeps adapters in f32 over a
/// 16-bit base), f64 over an f64 base (gradient checks).
pub fn adapter_dtype(base: DType) -> DType {
    if base == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// HF name of projection `module`'s weight in layer `layer`
/// (`model.layers.{layer}.{parent}.{module}.weight`).
pub fn projection_weight_name(layer: usize, module: &str) -> String {
    format!(
        "model.layers.{layer}.{}.{module}.weight",
        projection_parent(module)
    )
}

/// PEFT's key of adapter matrix `ab` ("A" or "B") of `module` in layer `layer`.
pub fn adapter_name(layer: usize, module: &str, ab: char) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{module}.lora_{ab}.weight",
        projection_parent(module)
    )
}

/// One adapted projection: `A (r, in)` and `B (out, r)`.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// `lora_A`.
    pub a: Var,
    /// `lora_B`.
    pub b: Var,
}

/// The adapters of a model: per (layer, projection) an [`Adapter`], and the same variables by
/// PEFT name (the model's trainable parameters).
#[derive(Debug, Clone)]
pub struct Lora {
    /// The settings.
    pub settings: LoraSettings,
    layers: Vec<BTreeMap<String, Adapter>>,
    params: BTreeMap<String, Var>,
}

impl Lora {
    /// Fresh adapters for `shapes` (per layer: projection name → base weight `(out, in)`),
    /// `A ~ U(±1/sqrt(in))` drawn from `seed` in layer, then projection order; `B = 0`; in
    /// `dtype` (see [`adapter_dtype`]).
    ///
    /// # Errors
    /// Invalid settings, or a tensor failure.
    pub fn new(
        settings: LoraSettings,
        shapes: &[BTreeMap<String, (usize, usize)>],
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        settings.validate()?;
        let mut rng = SplitMix64::new(seed ^ 0x4C6F_5241); // "LoRA"
        let mut tensors = BTreeMap::new();
        for (i, layer) in shapes.iter().enumerate() {
            for m in &settings.target_modules {
                let Some(&(out_f, in_f)) = layer.get(m) else {
                    continue;
                };
                let bound = 1.0 / (in_f as f64).sqrt();
                let a: Vec<f64> = (0..settings.r * in_f)
                    .map(|_| (2.0 * rng.uniform() - 1.0) * bound)
                    .collect();
                let a = Tensor::from_vec(a, (settings.r, in_f), device)?.to_dtype(dtype)?;
                let b = Tensor::zeros((out_f, settings.r), dtype, device)?;
                tensors.insert(adapter_name(i, m, 'A'), a);
                tensors.insert(adapter_name(i, m, 'B'), b);
            }
        }
        Self::from_tensors(settings, shapes, tensors, dtype)
    }

    /// Adapters from named tensors (PEFT keys), e.g. a saved `adapter_model.safetensors`,
    /// converted to `dtype`.
    ///
    /// # Errors
    /// A missing, unexpected or misshapen adapter matrix.
    pub fn from_tensors(
        settings: LoraSettings,
        shapes: &[BTreeMap<String, (usize, usize)>],
        mut tensors: BTreeMap<String, Tensor>,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        settings.validate()?;
        check_modules(&settings, shapes)?;
        let r = settings.r;
        let mut layers = Vec::with_capacity(shapes.len());
        let mut params = BTreeMap::new();
        for (i, layer) in shapes.iter().enumerate() {
            let mut adapters = BTreeMap::new();
            for m in &settings.target_modules {
                let Some(&(out_f, in_f)) = layer.get(m) else {
                    continue;
                };
                let mut take = |ab: char, shape: [usize; 2]| -> Result<Var, ModelError> {
                    let name = adapter_name(i, m, ab);
                    let t = tensors
                        .remove(&name)
                        .ok_or_else(|| ModelError::MissingParameter(name.clone()))?;
                    if t.dims() != shape {
                        return Err(ModelError::Shape {
                            name,
                            expected: shape.to_vec(),
                            got: t.dims().to_vec(),
                        });
                    }
                    let v = Var::from_tensor(&t.to_dtype(dtype)?)?;
                    params.insert(name, v.clone());
                    Ok(v)
                };
                let a = take('A', [r, in_f])?;
                let b = take('B', [out_f, r])?;
                adapters.insert(m.clone(), Adapter { a, b });
            }
            layers.push(adapters);
        }
        if let Some(extra) = tensors.into_keys().next() {
            return Err(ModelError::UnexpectedParameter(extra));
        }
        Ok(Self {
            settings,
            layers,
            params,
        })
    }

    /// Adds `s B A` (computed in the adapters' dtype: f32, or f64 over an f64 base) to each
    /// adapted weight of `weights` (HF names, `model.layers.{i}.{parent}.{module}.weight`) and
    /// casts the result to `dtype`: PEFT's `merge_and_unload`.
    ///
    /// # Errors
    /// An adapted weight missing from `weights`, or a tensor failure.
    pub fn merge_into(
        &self,
        weights: &mut BTreeMap<String, Tensor>,
        dtype: DType,
    ) -> Result<(), ModelError> {
        let s = self.settings.scale();
        for (i, layer) in self.layers.iter().enumerate() {
            for (m, ad) in layer {
                let name = projection_weight_name(i, m);
                let w = weights
                    .get(&name)
                    .ok_or_else(|| ModelError::MissingParameter(name.clone()))?
                    .to_dtype(ad.a.dtype())?;
                let ba = ad.b.as_tensor().matmul(ad.a.as_tensor())?;
                let merged = (w + ba.affine(s, 0.0)?)?.to_dtype(dtype)?;
                weights.insert(name, merged);
            }
        }
        Ok(())
    }

    /// The adapter of `module` in layer `layer`, if targeted.
    pub fn get(&self, layer: usize, module: &str) -> Option<&Adapter> {
        self.layers.get(layer).and_then(|l| l.get(module))
    }

    /// The adapter matrices by PEFT name (f32 variables).
    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// Projection `module` of layer `layer` in a model with these adapters, for input
    /// `x (rows, seq, in)` over the frozen base `w (out, in)` (dense or quantized) and bias `b`
    /// (taken detached): when the projection is adapted, `x W^T (+ b) + s ((x ⊙ M) A^T) B^T`
    /// (one fused node on the CPU, see [`crate::fused::lora_linear`]), differentiable in A and
    /// B when `track`; otherwise the frozen product [`crate::fused::frozen`]. Both are
    /// differentiable in `x`. `M` is the dropout mask of [`dropout_mask`] when training
    /// (`track`) with dropout > 0 and `dropout_keys` (one per row) are given; none otherwise
    /// (PEFT's eval mode).
    ///
    /// # Errors
    /// A shape mismatch or tensor failure.
    pub fn project(
        &self,
        (layer, module): (usize, &str),
        x: &Tensor,
        w: &crate::quantized::Frozen,
        b: Option<&Tensor>,
        track: bool,
        dropout_keys: &[u64],
    ) -> candle_core::Result<Tensor> {
        let b = b.map(Tensor::detach);
        let Some(ad) = self.get(layer, module) else {
            return crate::fused::frozen(x, w, b.as_ref());
        };
        let v = |v: &Var| crate::layers::param(v, track);
        let p = self.settings.dropout;
        let mask = if track && p > 0.0 && !dropout_keys.is_empty() {
            let (rows, seq, in_f) = x.dims3()?;
            let m = dropout_mask(dropout_keys, (rows, seq, in_f), layer, module, p);
            Some(Tensor::from_vec(m, (rows, seq, in_f), x.device())?)
        } else {
            None
        };
        let (a, bm) = (v(&ad.a), v(&ad.b));
        crate::fused::lora_linear(
            x,
            w,
            b.as_ref(),
            &a,
            &bm,
            self.settings.scale(),
            mask.as_ref(),
        )
    }
}

/// Every targeted module must be a projection of the model (of its first layer: all layers
/// have the same).
fn check_modules(
    settings: &LoraSettings,
    shapes: &[BTreeMap<String, (usize, usize)>],
) -> Result<(), ModelError> {
    let Some(first) = shapes.first() else {
        return Ok(());
    };
    if let Some(m) = settings
        .target_modules
        .iter()
        .find(|m| !first.contains_key(*m))
    {
        return Err(ModelError::Config(format!(
            "`lora.target_modules`: `{m}` is not a projection of this model (it has {})",
            first.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

/// The inverted-dropout mask of projection `module` in layer `layer` for inputs of shape
/// `(rows, seq, in)`: each element is kept with probability `1 - p` and then `1/(1-p)`, else
/// 0. Element `(i, t, j)` is decided by `mix64` of row `i`'s key, the layer, the projection and
/// `(t, j)`: a pure function of them, so a row's masks do not depend on which rank or
/// micro-batch holds it, and a resumed step draws the same masks.
///
/// # Panics
/// Never; `keys` shorter than `rows` leaves the missing rows' masks at 1 (no dropout).
pub fn dropout_mask(
    keys: &[u64],
    (rows, seq, in_f): (usize, usize, usize),
    layer: usize,
    module: &str,
    p: f64,
) -> Vec<f32> {
    let module_id = all_projections()
        .position(|m| m == module)
        .unwrap_or(all_projections().count()) as u64;
    let keep = (1.0 / (1.0 - p)) as f32;
    // Drop when the 53-bit uniform falls below p.
    let threshold = (p * (1u64 << 53) as f64) as u64;
    let mut out = vec![1.0f32; rows * seq * in_f];
    for (i, row) in out.chunks_mut(seq * in_f).enumerate() {
        let Some(&key) = keys.get(i) else { continue };
        let stream = mix64(key ^ mix64(((layer as u64) << 8) | module_id));
        for (e, m) in row.iter_mut().enumerate() {
            let u = mix64(stream.wrapping_add(e as u64)) >> 11;
            *m = if u < threshold { 0.0 } else { keep };
        }
    }
    out
}
