//! Autoregressive decoding with a KV cache (one forward over the prompt, then one position per
//! new token), or by re-running the whole sequence for models without one.

use super::batch::TokenBatch;
use super::error::ModelError;
use super::init::SplitMix64;
use super::kv_cache::KvCache;
use super::lm::CausalLm;
use candle_core::{DType, D};

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
        let logits = last.matmul(&w.t()?)?;
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
