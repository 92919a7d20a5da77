//! Gradient utilities: global norm, clipping, scaling and accumulation over micro-batches.

use crate::Gradients;
use candle_core::{DType, Result, Tensor};

/// Global L2 norm `sqrt(sum_i g_i^2)` over every gradient, accumulated in f64: each
/// tensor's sum of squares on its device, then one copy of those sums to the host (one
/// synchronisation per call on a GPU, not one per tensor), added there in the map's order.
///
/// # Errors
/// A tensor failure, or gradients on different devices.
pub fn global_norm(grads: &Gradients) -> Result<f64> {
    let sums = grads
        .values()
        .map(|g| g.to_dtype(DType::F64)?.sqr()?.sum_all())
        .collect::<Result<Vec<_>>>()?;
    if sums.is_empty() {
        return Ok(0.0);
    }
    let sq: f64 = Tensor::stack(&sums, 0)?.to_vec1::<f64>()?.iter().sum();
    Ok(sq.sqrt())
}

/// Multiplies every gradient by `factor`.
///
/// # Errors
/// A tensor failure.
pub fn scale(grads: &mut Gradients, factor: f64) -> Result<()> {
    for g in grads.values_mut() {
        *g = g.affine(factor, 0.0)?;
    }
    Ok(())
}

/// Global-norm clipping (Pascanu et al. 2013, PyTorch's `clip_grad_norm_`): when the norm
/// exceeds `max_norm`, scales all gradients by `max_norm / (norm + 1e-6)`. Returns the norm
/// before clipping. A non-finite norm leaves the gradients untouched (the caller should skip
/// the step).
///
/// # Errors
/// A tensor failure.
pub fn clip_grad_norm(grads: &mut Gradients, max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if norm.is_finite() && norm > max_norm {
        scale(grads, max_norm / (norm + 1e-6))?;
    }
    Ok(norm)
}

/// Adds `g` into the running sum `acc` (gradient accumulation); `acc` starts empty. 16-bit
/// gradients are summed in f32 (the sum of micro-batches would lose their small parts in
/// bf16), so `acc` holds f32 for a bf16 model: what the all-reduce and the optimizer take.
///
/// # Errors
/// Mismatched shapes between micro-batches.
pub fn accumulate(acc: &mut Gradients, g: Gradients) -> Result<()> {
    for (name, t) in g {
        let t = t.to_dtype(crate::layers::compute_dtype(t.dtype()))?;
        match acc.get_mut(&name) {
            Some(a) => *a = (&*a + &t)?,
            None => {
                acc.insert(name, t);
            }
        }
    }
    Ok(())
}
