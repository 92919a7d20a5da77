//! Key/value cache for autoregressive decoding: each decoder layer keeps the keys and values
//! of the positions seen so far, so a new token costs one position's forward, not a re-run
//! over the whole sequence.

use super::batch::TokenBatch;
use super::error::ModelError;
use super::fused::{attention, AttentionMask};
use super::layers::{repeat_kv, softmax_last};
use candle_core::{Result, Tensor};

/// Keys and values of every layer for a batch of sequences, in the model's dtype. A batch of
/// several rows is left-padded to one length: `pad[r]` leading positions of row r are filler
/// that no real position attends to.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
    pad: Vec<usize>,
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

    /// A cache for `pad.len()` left-padded rows (`pad[r]` filler positions at the start of
    /// row r); [`KvCache::new`] is one unpadded row.
    pub fn with_padding(pad: Vec<usize>) -> Self {
        Self {
            pad,
            ..Self::default()
        }
    }

    /// Rows held (1 for an unpadded cache).
    pub fn rows(&self) -> usize {
        self.pad.len().max(1)
    }

    /// Leading filler positions of each row (empty: one unpadded row).
    pub fn padding(&self) -> &[usize] {
        &self.pad
    }

    /// Keeps only rows `keep` (indices into the current rows, in the new order), e.g. to drop
    /// finished sequences from a batched decode.
    ///
    /// # Errors
    /// A tensor failure.
    pub fn retain_rows(&mut self, keep: &[usize]) -> Result<()> {
        let pad = if self.pad.is_empty() {
            vec![0; 1]
        } else {
            self.pad.clone()
        };
        self.pad = keep.iter().map(|&r| pad[r]).collect();
        let Some(device) = self
            .layers
            .iter()
            .find_map(|l| l.k.as_ref().map(|k| k.device().clone()))
        else {
            return Ok(());
        };
        let idx: Vec<u32> = keep.iter().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(idx, keep.len(), &device)?;
        for l in &mut self.layers {
            l.k = l.k.take().map(|k| k.index_select(&idx, 0)).transpose()?;
            l.v = l.v.take().map(|v| v.index_select(&idx, 0)).transpose()?;
        }
        Ok(())
    }

    /// RoPE positions of `seq` new positions of every row: absolute index minus the row's
    /// padding (0 on filler positions), row-major.
    pub(crate) fn padded_positions(&self, seq: usize) -> Vec<u32> {
        let rows = self.rows();
        (0..rows)
            .flat_map(|r| {
                let pad = self.pad.get(r).copied().unwrap_or(0);
                (self.len..self.len + seq).map(move |j| j.saturating_sub(pad) as u32)
            })
            .collect()
    }

    /// The per-layer caches for `n_layers` layers (created empty on first use), to be filled
    /// by a forward over `new` more positions; [`KvCache::advance`] commits them.
    pub(crate) fn layers(&mut self, n_layers: usize) -> (&mut [LayerCache], &[usize]) {
        if self.layers.len() != n_layers {
            self.layers = (0..n_layers).map(|_| LayerCache::default()).collect();
            self.len = 0;
        }
        (&mut self.layers, &self.pad)
    }

    /// Records that `n` positions were appended to every layer.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

/// One layer's cached keys and values, `(rows, kv_heads, len, head_dim)` each.
#[derive(Debug, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

/// RoPE positions of `batch`, row-major: its own `position_ids`, else after the `cache`'s
/// positions net of each row's padding ([`KvCache::padded_positions`]), else `0..seq` on
/// every row.
pub(crate) fn positions(batch: &TokenBatch, cache: Option<&KvCache>) -> Vec<u32> {
    match cache {
        _ if !batch.position_ids.is_empty() => batch.position_ids.clone(),
        Some(c) if c.rows() == batch.rows => c.padded_positions(batch.seq_len),
        _ => {
            let start = cache.map_or(0, |c| c.len()) as u32;
            let end = start + batch.seq_len as u32;
            (0..batch.rows).flat_map(|_| start..end).collect()
        }
    }
}

/// Runs the decoder `layers` over `x` `(rows, seq, hidden)` with `block`: under the batch's
/// causal/segment mask, or, with a `cache` (its rows, no packing), after the cached
/// positions, appending the new keys and values to it.
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
            if batch.rows != cache.rows() || !batch.segment_ids.is_empty() {
                return Err(ModelError::Batch(format!(
                    "a KV cache of {} unpacked row(s) got a batch of {} row(s){}",
                    cache.rows(),
                    batch.rows,
                    if batch.segment_ids.is_empty() {
                        ""
                    } else {
                        " with segments"
                    }
                )));
            }
            let (caches, pad) = cache.layers(layers.len());
            for (layer, lc) in layers.iter().zip(caches) {
                x = block(&x, layer, Attend::Cached(lc, pad))?;
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
    /// Over the cached positions plus the new ones (decoding; no segments), with each row's
    /// left padding.
    Cached(&'a mut LayerCache, &'a [usize]),
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
            Attend::Cached(cache, pad) => {
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
                let (rows, n, total) = (q.dim(0)?, q.dim(2)?, k.dim(2)?);
                let past = total - n;
                // Query i sits at position past + i: keys j <= past + i are visible, except a
                // row's filler positions (a filler query sees itself, so no row is empty).
                let mask: Vec<f32> = (0..rows)
                    .flat_map(|r| {
                        let p = pad.get(r).copied().unwrap_or(0);
                        (0..n).flat_map(move |i| {
                            (0..total).map(move |j| {
                                if j <= past + i && (j >= p || j == past + i) {
                                    0.0
                                } else {
                                    f32::NEG_INFINITY
                                }
                            })
                        })
                    })
                    .collect();
                let mask =
                    Tensor::from_vec(mask, (rows, 1, n, total), q.device())?.to_dtype(q.dtype())?;
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
