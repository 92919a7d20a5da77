//! Key/value cache for autoregressive decoding: each decoder layer keeps the keys and values
//! of the positions seen so far, so a new token costs one position's forward, not a re-run
//! over the whole sequence.

use super::batch::TokenBatch;
use super::error::ModelError;
use super::fused::{attention, AttentionMask};
use super::layers::{repeat_kv, softmax_last};
use candle_core::{Result, Tensor};

/// Keys and values of every layer for one sequence (batch row 1), in the model's dtype.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    /// An empty cache (layers are added on first use).
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions cached so far (the RoPE position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The per-layer caches for `n_layers` layers (created empty on first use), to be filled
    /// by a forward over `new` more positions; [`KvCache::advance`] commits them.
    pub(crate) fn layers(&mut self, n_layers: usize) -> &mut [LayerCache] {
        if self.layers.len() != n_layers {
            self.layers = (0..n_layers).map(|_| LayerCache::default()).collect();
            self.len = 0;
        }
        &mut self.layers
    }

    /// Records that `n` positions were appended to every layer.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

/// One layer's cached keys and values, `(1, kv_heads, len, head_dim)` each.
#[derive(Debug, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

/// RoPE positions of `batch`, row-major: its own `position_ids`, or `start..start + seq` on
/// every row (`start` is the number of cached positions, 0 without a cache).
pub(crate) fn positions(batch: &TokenBatch, start: usize) -> Vec<u32> {
    if batch.position_ids.is_empty() {
        let (start, end) = (start as u32, (start + batch.seq_len) as u32);
        (0..batch.rows).flat_map(|_| start..end).collect()
    } else {
        batch.position_ids.clone()
    }
}

/// Runs the decoder `layers` over `x` `(rows, seq, hidden)` with `block`: under the batch's
/// causal/segment mask, or, with a `cache` (one row, no packing), after the cached positions,
/// appending the new keys and values to it.
///
/// # Errors
/// A malformed batch or a tensor failure.
pub(crate) fn run_blocks<L>(
    mut x: Tensor,
    layers: &[L],
    batch: &TokenBatch,
    cache: Option<&mut KvCache>,
    block: impl Fn(&Tensor, &L, Attend<'_>) -> Result<Tensor>,
) -> std::result::Result<Tensor, ModelError> {
    match cache {
        None => {
            let mask = AttentionMask::new(batch.rows, batch.seq_len, &batch.segment_ids)?;
            for layer in layers {
                x = block(&x, layer, Attend::Batch(&mask))?;
            }
        }
        Some(cache) => {
            if batch.rows != 1 || !batch.segment_ids.is_empty() {
                return Err(ModelError::Batch(
                    "a KV cache holds one unpacked sequence".into(),
                ));
            }
            for (layer, lc) in layers.iter().zip(cache.layers(layers.len())) {
                x = block(&x, layer, Attend::Cached(lc))?;
            }
            cache.advance(batch.seq_len);
        }
    }
    Ok(x)
}

/// How a decoder block attends.
pub(crate) enum Attend<'a> {
    /// Over the batch's own positions under its causal/segment mask (training, evaluation).
    Batch(&'a AttentionMask),
    /// Over the cached positions plus the new ones (decoding; batch row 1, no segments).
    Cached(&'a mut LayerCache),
}

impl Attend<'_> {
    /// `softmax(scale q k^T + mask) v`: `q` is `(rows, heads, n, hd)`, `k` and `v` are
    /// `(rows, kv_heads, n, hd)` for the new positions (RoPE applied); returns
    /// `(rows, heads, n, hd)`. With a cache, `k` and `v` are appended to it first and query
    /// `i` attends every cached position and the new ones up to itself.
    ///
    /// # Errors
    /// A tensor failure.
    pub(crate) fn run(self, q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        let rep = q.dim(1)? / k.dim(1)?;
        match self {
            Attend::Batch(mask) => {
                let k = repeat_kv(k, rep)?.contiguous()?;
                let v = repeat_kv(v, rep)?.contiguous()?;
                attention(q, &k, &v, scale, mask)
            }
            Attend::Cached(cache) => {
                let k = match cache.k.take() {
                    Some(past) => Tensor::cat(&[&past, k], 2)?,
                    None => k.clone(),
                };
                let v = match cache.v.take() {
                    Some(past) => Tensor::cat(&[&past, v], 2)?,
                    None => v.clone(),
                };
                cache.k = Some(k.clone());
                cache.v = Some(v.clone());
                let (n, total) = (q.dim(2)?, k.dim(2)?);
                let past = total - n;
                // Query i sits at position past + i: keys j <= past + i are visible.
                let mask: Vec<f32> = (0..n)
                    .flat_map(|i| {
                        (0..total).map(move |j| {
                            if j <= past + i {
                                0.0
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (n, total), q.device())?.to_dtype(q.dtype())?;
                let k = repeat_kv(&k, rep)?.contiguous()?;
                let v = repeat_kv(&v, rep)?.contiguous()?;
                let scores = q
                    .matmul(&k.t()?)?
                    .affine(scale, 0.0)?
                    .broadcast_add(&mask)?;
                softmax_last(&scores)?.matmul(&v)
            }
        }
    }
}
