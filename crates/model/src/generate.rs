//! Autoregressive decoding with a KV cache (one forward over the prompt, then one position per
//! new token), or by re-running the whole sequence for models without one.

use super::batch::TokenBatch;
use super::error::ModelError;
use super::init::SplitMix64;
use super::kv_cache::KvCache;
use super::lm::CausalLm;
use super::matmul::matmul;
use candle_core::{DType, Tensor, D};

/// How the next token is picked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Most likely token.
    Greedy,
    /// Sample from `softmax(logits / temperature)` with a seeded generator.
    Temperature {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Generator seed.
        seed: u64,
    },
}

/// See [`CausalLm::generate_until`].
pub(crate) fn generate<M: CausalLm + ?Sized>(
    m: &M,
    prompt: &[u32],
    max_new: usize,
    sampling: Sampling,
    done: &mut dyn FnMut(&[u32]) -> bool,
) -> Result<Vec<u32>, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::Batch("empty prompt".into()));
    }
    let mut rng = match sampling {
        Sampling::Temperature { seed, .. } => SplitMix64::new(seed),
        Sampling::Greedy => SplitMix64::new(0),
    };
    let (w, b) = m.head(false);
    let mut tokens = prompt.to_vec();
    let mut out = Vec::new();
    let mut cache = KvCache::new();
    // The ids the next forward appends to the cache: the prompt, then each new token.
    let mut pending = prompt.to_vec();
    for _ in 0..max_new {
        let h = match m.hidden_cached(&pending, &mut cache)? {
            Some(h) => h,
            None => m.hidden(&TokenBatch::inputs(1, tokens.len(), tokens.clone()), false)?,
        };
        let last = h.narrow(1, h.dim(1)? - 1, 1)?.squeeze(1)?;
        let logits = matmul(&last, &w.t()?)?;
        let logits = match &b {
            Some(b) => logits.broadcast_add(b)?,
            None => logits,
        };
        let logits = logits.squeeze(0)?.to_dtype(DType::F64)?;
        let next = match sampling {
            Sampling::Greedy => logits.argmax(D::Minus1)?.to_scalar::<u32>()?,
            Sampling::Temperature { temperature, .. } => {
                let l = logits.to_vec1::<f64>()?;
                sample(&l, temperature, rng.uniform())
            }
        };
        tokens.push(next);
        out.push(next);
        pending = vec![next];
        if done(&out) {
            break;
        }
    }
    Ok(out)
}

/// See [`CausalLm::generate_batch`].
pub(crate) fn generate_batch<M: CausalLm + ?Sized>(
    m: &M,
    prompts: &[Vec<u32>],
    max_new: usize,
    max_rows: usize,
    done: &mut dyn FnMut(usize, &[u32]) -> bool,
) -> Result<Vec<Vec<u32>>, ModelError> {
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(ModelError::Batch("empty prompt".into()));
    }
    let mut outs: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    if prompts.is_empty() || max_new == 0 {
        return Ok(outs);
    }
    // Longest first: a later prompt always fits, left-padded, into the running cache.
    let mut queue: Vec<usize> = (0..prompts.len()).collect();
    queue.sort_by_key(|&r| (prompts[r].len(), std::cmp::Reverse(r)));
    let (w, b) = m.head(false);
    let next_tokens = |h: &Tensor| -> Result<Vec<u32>, ModelError> {
        let last = h.narrow(1, h.dim(1)? - 1, 1)?.squeeze(1)?;
        let logits = matmul(&last, &w.t()?)?;
        let logits = match &b {
            Some(b) => logits.broadcast_add(b)?,
            None => logits,
        };
        Ok(logits
            .to_dtype(DType::F32)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?)
    };
    let mut is_done = |r: usize, out: &[u32]| out.len() >= max_new || done(r, out);
    // active[i]: the prompt index of cache row i; pending[i]: its next input token.
    let mut active: Vec<usize> = Vec::new();
    let mut pending: Vec<u32> = Vec::new();
    let mut cache: Option<KvCache> = None;
    loop {
        // Admit queued prompts into free rows, each prefilled on its own (a batched prefill
        // of long prompts needs rows x heads x len^2 attention scores at once), then joining
        // the cache left-padded to its length (never shorter: the queue is longest first).
        while active.len() < max_rows.max(1) {
            let Some(r) = queue.pop() else { break };
            let mut fresh = KvCache::new();
            let Some(h) = m.hidden_cached(&prompts[r], &mut fresh)? else {
                // No KV cache: one prompt at a time.
                for (r, p) in prompts.iter().enumerate() {
                    outs[r] = generate(m, p, max_new, Sampling::Greedy, &mut |o| done(r, o))?;
                }
                return Ok(outs);
            };
            let t = next_tokens(&h)?[0];
            outs[r].push(t);
            if is_done(r, &outs[r]) {
                continue;
            }
            cache = Some(match cache.take() {
                Some(mut c) if !active.is_empty() => {
                    c.append_rows(fresh)?;
                    c
                }
                _ => fresh,
            });
            active.push(r);
            pending.push(t);
        }
        if active.is_empty() {
            if queue.is_empty() {
                break;
            }
            continue;
        }
        let Some(c) = cache.as_mut() else { break };
        let Some(h) = m.hidden_cached(&pending, c)? else {
            break;
        };
        let mut keep = Vec::with_capacity(active.len());
        for (i, (&r, t)) in active.iter().zip(next_tokens(&h)?).enumerate() {
            outs[r].push(t);
            if !is_done(r, &outs[r]) {
                keep.push(i);
            }
        }
        if keep.len() < active.len() {
            c.retain_rows(&keep)?;
            active = keep.iter().map(|&i| active[i]).collect();
        }
        pending = active
            .iter()
            .map(|&r| *outs[r].last().unwrap_or(&0))
            .collect();
    }
    Ok(outs)
}

/// Index drawn from `softmax(logits / temperature)` using the uniform draw `u` in `(0, 1]`.
fn sample(logits: &[f64], temperature: f64, u: f64) -> u32 {
    let t = temperature.max(1e-6);
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logits.iter().map(|&l| ((l - max) / t).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut acc = 0.0;
    for (i, x) in w.iter().enumerate() {
        acc += x / total;
        if u <= acc {
            return i as u32;
        }
    }
    (w.len() - 1) as u32
}
