//! Frozen base weights held in a GGML block format: the base of QLoRA (Dettmers et al. 2023),
//! with llama.cpp's block formats (Q4_0, Q4_1, Q8_0, K-quants ...) instead of NF4.
//!
//! A quantized projection is dequantized on the fly, one projection at a time, to the model
//! dtype and multiplied exactly like a dense frozen weight ([`crate::fused::frozen`],
//! [`crate::fused::lora_linear`]). The forward therefore equals, bit for bit, the same model
//! with its base dequantized once on load; only the memory differs (the dense copy lives for one
//! product). candle's `QMatMul` is not used: it quantizes the activations to Q8 too (≈0.4%
//! relative error) and has no backward.
//!
//! Rows are held in chunks so that dequantization runs on every core (candle dequantizes a
//! tensor on one thread).

use crate::error::ModelError;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor, Var};
use std::borrow::Cow;
use std::sync::Arc;

/// Rows per dequantization chunk (a `(256, in)` block of the weight).
const CHUNK_ROWS: usize = 256;

/// A frozen `(out, in)` weight in a GGML block format, in HF's row order.
pub struct QuantizedWeight {
    /// Row chunks of the weight as stored, each `(rows, in)`.
    chunks: Vec<QTensor>,
    /// `(out, in)`.
    dims: (usize, usize),
    format: GgmlDType,
    /// Heads of llama.cpp's interleaved RoPE row order (Q and K of a Llama GGUF), undone after
    /// dequantizing ([`crate::checkpoint::unpermute_rows`]); `None`: HF order already.
    unpermute_heads: Option<usize>,
}

impl std::fmt::Debug for QuantizedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedWeight")
            .field("dims", &self.dims)
            .field("format", &self.format)
            .field("unpermute_heads", &self.unpermute_heads)
            .finish()
    }
}

impl QuantizedWeight {
    /// Wraps a 2-D quantized tensor `(out, in)` as read from a GGUF file; `unpermute_heads`:
    /// the rows are in llama.cpp's RoPE order for that many heads.
    ///
    /// # Errors
    /// [`ModelError::Config`] for a tensor that is not 2-D or rows not divisible into heads.
    pub fn from_qtensor(q: QTensor, unpermute_heads: Option<usize>) -> Result<Self, ModelError> {
        let (out_f, in_f) = q.shape().dims2()?;
        if let Some(h) = unpermute_heads {
            if h == 0 || out_f % (2 * h) != 0 {
                return Err(ModelError::Config(format!(
                    "a ({out_f}, {in_f}) weight does not split into {h} RoPE heads"
                )));
            }
        }
        let format = q.dtype();
        let row_bytes = in_f / format.block_size() * format.type_size();
        let data = q.data()?;
        let mut chunks = Vec::with_capacity(out_f.div_ceil(CHUNK_ROWS));
        for start in (0..out_f).step_by(CHUNK_ROWS) {
            let rows = CHUNK_ROWS.min(out_f - start);
            let bytes = &data[start * row_bytes..(start + rows) * row_bytes];
            let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, format)?;
            chunks.push(QTensor::new(storage, (rows, in_f))?);
        }
        Ok(Self {
            chunks,
            dims: (out_f, in_f),
            format,
            unpermute_heads,
        })
    }

    /// Quantizes a dense `(out, in)` weight to `format`.
    ///
    /// # Errors
    /// [`ModelError::Config`] when `in` is not a multiple of the format's block (32, or 256 for
    /// the K-quants).
    pub fn quantize(w: &Tensor, format: GgmlDType) -> Result<Self, ModelError> {
        let (out_f, in_f) = w.dims2()?;
        if in_f % format.block_size() != 0 {
            return Err(ModelError::Config(format!(
                "a ({out_f}, {in_f}) weight cannot be quantized to {}: its input size {in_f} is \
                 not a multiple of the format's block of {} (q4_0, q4_1, q5_0, q5_1 and q8_0 \
                 have blocks of 32)",
                format_name(format),
                format.block_size()
            )));
        }
        let w = w.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        Self::from_qtensor(QTensor::quantize(&w, format)?, None)
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        self.dims
    }

    /// The block format.
    pub fn format(&self) -> GgmlDType {
        self.format
    }

    /// Bytes the quantized weight occupies.
    pub fn bytes(&self) -> usize {
        self.chunks.iter().map(QTensor::storage_size_in_bytes).sum()
    }

    /// The dense `(out, in)` weight in HF row order, in `dtype` on `device`. Chunks are
    /// dequantized in parallel; the values do not depend on the thread count.
    ///
    /// # Errors
    /// A tensor failure.
    pub fn dequantize(&self, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let threads = candle_core::utils::get_num_threads().clamp(1, self.chunks.len().max(1));
        let per = self.chunks.len().div_ceil(threads).max(1);
        let groups: Vec<candle_core::Result<Vec<Tensor>>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .chunks
                .chunks(per)
                .map(|g| s.spawn(move || g.iter().map(|c| c.dequantize(&Device::Cpu)).collect()))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(candle_core::Error::Msg("dequantize thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut parts = Vec::with_capacity(self.chunks.len());
        for g in groups {
            parts.extend(g?);
        }
        let mut w = Tensor::cat(&parts, 0)?;
        if let Some(h) = self.unpermute_heads {
            w = crate::checkpoint::unpermute_rows(&w, h)?;
        }
        w.to_dtype(dtype)?.to_device(device)
    }
}

/// A frozen base weight as a product takes it: dense, or quantized and dequantized per use.
#[derive(Debug, Clone)]
pub enum Frozen {
    /// A dense `(out, in)` tensor (taken detached).
    Dense(Tensor),
    /// A quantized weight.
    Quantized(Arc<QuantizedWeight>),
}

impl Frozen {
    /// `(out, in)`.
    ///
    /// # Errors
    /// A dense tensor that is not 2-D.
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            Frozen::Dense(t) => t.dims2(),
            Frozen::Quantized(q) => Ok(q.dims()),
        }
    }

    /// The dense weight in `dtype` on `device` (a detached view for a dense weight of that
    /// dtype, a fresh dequantized tensor otherwise).
    ///
    /// # Errors
    /// A tensor failure.
    pub fn tensor(&self, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Frozen::Dense(t) => t.detach().to_dtype(dtype)?.to_device(device),
            Frozen::Quantized(q) => q.dequantize(dtype, device),
        }
    }
}

/// A projection's base weight inside a model: a trainable (or LoRA-frozen) variable, or a
/// quantized frozen weight (QLoRA).
#[derive(Debug, Clone)]
pub enum BaseWeight {
    /// A dense parameter.
    Dense(Var),
    /// A quantized frozen weight.
    Quantized(Arc<QuantizedWeight>),
}

impl BaseWeight {
    /// `(out, in)`.
    ///
    /// # Errors
    /// A dense variable that is not 2-D.
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        self.frozen().dims()
    }

    /// The weight as a frozen operand.
    pub fn frozen(&self) -> Frozen {
        match self {
            BaseWeight::Dense(v) => Frozen::Dense(v.as_tensor().detach()),
            BaseWeight::Quantized(q) => Frozen::Quantized(q.clone()),
        }
    }
}

/// The setting's name of a block format (`q4_k` for `Q4K`), the inverse of [`parse_format`].
pub fn format_name(f: GgmlDType) -> String {
    let debug = format!("{f:?}").to_ascii_lowercase();
    match debug.strip_suffix('k') {
        Some(head) if !head.ends_with('_') => format!("{head}_k"),
        _ => debug,
    }
}

/// The GGML block format a setting names: `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q8_0`, `q2_k`,
/// `q3_k`, `q4_k`, `q5_k`, `q6_k` (case-insensitive).
///
/// # Errors
/// Any other name, with the list.
pub fn parse_format(name: &str) -> Result<GgmlDType, String> {
    let f = match name.to_ascii_lowercase().as_str() {
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_0" => GgmlDType::Q5_0,
        "q5_1" => GgmlDType::Q5_1,
        "q8_0" => GgmlDType::Q8_0,
        "q2_k" => GgmlDType::Q2K,
        "q3_k" => GgmlDType::Q3K,
        "q4_k" => GgmlDType::Q4K,
        "q5_k" => GgmlDType::Q5K,
        "q6_k" => GgmlDType::Q6K,
        _ => {
            return Err(format!(
                "expected a block format (q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, \
                 q5_k, q6_k), got \"{name}\""
            ))
        }
    };
    Ok(f)
}
