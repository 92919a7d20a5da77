//! Key/value cache for autoregressive decoding: each decoder layer keeps the keys and values
//! of the positions seen so far, so a new token costs one position's forward, not a re-run
//! over the whole sequence.

use super::batch::TokenBatch;
use super::error::ModelError;
use super::fused::{attention, AttentionMask};
use super::layers::repeat_kv;
use super::matmul::matmul;
use super::softmax_node::softmax_last;
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
    /// finished sequences from a batched decode, and drops the leading positions that are
    /// filler in every kept row (so a continuously refilled batch does not grow without end).
    /// Keeping no rows empties the cache (as [`KvCache::new`]) without a tensor op: candle's
    /// CUDA `index_select` launches a zero-size grid for zero ids, which the driver refuses.
    ///
    /// # Errors
    /// A tensor failure.
    pub fn retain_rows(&mut self, keep: &[usize]) -> Result<()> {
        if keep.is_empty() {
            *self = Self::default();
            return Ok(());
        }
        let pad = if self.pad.is_empty() {
            vec![0; 1]
        } else {
            self.pad.clone()
        };
        let kept: Vec<usize> = keep.iter().map(|&r| pad[r]).collect();
        let trim = kept.iter().copied().min().unwrap_or(0).min(self.len);
        self.pad = kept.iter().map(|p| p - trim).collect();
        let Some(device) = self
            .layers
            .iter()
            .find_map(|l| l.k.as_ref().map(|k| k.device().clone()))
        else {
            self.len -= trim;
            return Ok(());
        };
        let idx: Vec<u32> = keep.iter().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(idx, keep.len(), &device)?;
        let new_len = self.len - trim;
        for l in &mut self.layers {
            let (k, v) = l.filled()?;
            let cut = |t: Option<Tensor>| -> Result<Option<Tensor>> {
                t.map(|t| t.index_select(&idx, 0)?.narrow(2, trim, new_len))
                    .transpose()
            };
            l.set_filled(cut(k)?, cut(v)?)?;
        }
        self.len = new_len;
        Ok(())
    }

    /// Appends the rows of `other` (e.g. new prompts, prefilled on their own) after this
    /// cache's rows, left-padding them to this cache's length: their positions keep their
    /// RoPE positions, the filler is masked.
    ///
    /// # Errors
    /// `other` longer than this cache, different layer counts, or a tensor failure.
    pub fn append_rows(&mut self, other: KvCache) -> std::result::Result<(), ModelError> {
        if other.len > self.len || other.layers.len() != self.layers.len() {
            return Err(ModelError::Batch(format!(
                "appending a KV cache of {} positions x {} layers to one of {} x {}",
                other.len,
                other.layers.len(),
                self.len,
                self.layers.len()
            )));
        }
        let own = if self.pad.is_empty() {
            vec![0]
        } else {
            self.pad.clone()
        };
        let shift = self.len - other.len;
        let theirs: Vec<usize> = if other.pad.is_empty() {
            vec![shift]
        } else {
            other.pad.iter().map(|p| p + shift).collect()
        };
        for (mine, new) in self.layers.iter_mut().zip(other.layers) {
            let (k1, v1) = mine.filled()?;
            let (k2, v2) = new.filled()?;
            let (k2, v2) = (left_pad(k2, shift)?, left_pad(v2, shift)?);
            mine.set_filled(cat_rows(k1, k2)?, cat_rows(v1, v2)?)?;
        }
        self.pad = own.into_iter().chain(theirs).collect();
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

/// `t` `(rows, kv, len, hd)` with `n` zero positions in front.
fn left_pad(t: Option<Tensor>, n: usize) -> Result<Option<Tensor>> {
    let Some(t) = t else { return Ok(None) };
    if n == 0 {
        return Ok(Some(t));
    }
    let (rows, kv, _, hd) = t.dims4()?;
    let zeros = Tensor::zeros((rows, kv, n, hd), t.dtype(), t.device())?;
    Ok(Some(Tensor::cat(&[&zeros, &t], 2)?))
}

fn cat_rows(a: Option<Tensor>, b: Option<Tensor>) -> Result<Option<Tensor>> {
    Ok(match (a, b) {
        (Some(a), Some(b)) => Some(Tensor::cat(&[&a, &b], 0)?),
        (a, b) => a.or(b),
    })
}

/// One layer's cached keys and values: buffers `(rows, kv_heads, capacity, head_dim)` of
/// which the first `len` positions are filled. New positions are written in place
/// (`slice_set`); the capacity grows by 256 positions or a quarter when full, so a decode step
/// copies one position, not the whole cache.
#[derive(Debug, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl LayerCache {
    /// Writes `k`, `v` `(rows, kv_heads, n, hd)` after the cached positions; returns views of
    /// all `len + n` positions.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(2)?;
        let need = self.len + n;
        let cap = match &self.k {
            Some(b) => b.dim(2)?,
            None => 0,
        };
        if need > cap {
            // Room for 256 more positions, or a quarter more for long caches: a decode step
            // rarely reallocates, and a long cache does not double its memory.
            let new_cap = (need + 256).max(cap + cap / 4);
            self.k = Some(grow(self.k.take(), k, self.len, new_cap)?);
            self.v = Some(grow(self.v.take(), v, self.len, new_cap)?);
        }
        let (kb, vb) = match (&self.k, &self.v) {
            (Some(kb), Some(vb)) => (kb, vb),
            _ => candle_core::bail!("KV cache buffers missing"),
        };
        kb.slice_set(&k.contiguous()?, 2, self.len)?;
        vb.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = need;
        Ok((kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?))
    }

    /// The filled part, `(rows, kv_heads, len, hd)` each (contiguous copies).
    fn filled(&self) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let part = |b: &Option<Tensor>| -> Result<Option<Tensor>> {
            b.as_ref()
                .map(|b| b.narrow(2, 0, self.len)?.contiguous())
                .transpose()
        };
        Ok((part(&self.k)?, part(&self.v)?))
    }

    /// Replaces the buffers by ones holding exactly `k`, `v` (and room to grow).
    fn set_filled(&mut self, k: Option<Tensor>, v: Option<Tensor>) -> Result<()> {
        self.len = match &k {
            Some(k) => k.dim(2)?,
            None => 0,
        };
        let cap = self.len + 256;
        let len = self.len;
        let place = |t: Option<Tensor>| -> Result<Option<Tensor>> {
            t.map(|t| {
                let buf = grow(None, &t, 0, cap)?;
                if len > 0 {
                    buf.slice_set(&t.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            })
            .transpose()
        };
        self.k = place(k)?;
        self.v = place(v)?;
        Ok(())
    }
}

/// A zero buffer like `like` `(rows, kv, _, hd)` with `cap` positions, holding the first
/// `len` positions of `old` (if any).
fn grow(old: Option<Tensor>, like: &Tensor, len: usize, cap: usize) -> Result<Tensor> {
    let (rows, kv, _, hd) = like.dims4()?;
    let buf = Tensor::zeros((rows, kv, cap, hd), like.dtype(), like.device())?;
    if let Some(old) = old {
        if len > 0 {
            buf.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
        }
    }
    Ok(buf)
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
                let (k, v) = cache.append(k, v)?;
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
                let mask = Tensor::from_vec(mask, (rows, 1, 1, n, total), q.device())?
                    .to_dtype(q.dtype())?;
                // Grouped-query attention without repeating the cache: query heads
                // g * rep .. (g + 1) * rep share key/value head g (the order `repeat_kv` uses).
                let (heads, hd) = (q.dim(1)?, q.dim(3)?);
                let kvh = heads / rep;
                let qg = q.contiguous()?.reshape((rows, kvh, rep * n, hd))?;
                let scores = matmul(&qg, &k.t()?)?
                    .affine(scale, 0.0)?
                    .reshape((rows, kvh, rep, n, total))?
                    .broadcast_add(&mask)?
                    .reshape((rows, kvh, rep * n, total))?;
                matmul(&softmax_last(&scores)?, &v)?.reshape((rows, heads, n, hd))
            }
        }
    }
}
