//! Per-task gradients of the LM head weight from detached hidden states: GradNorm's `G_i`
//! (Chen et al. 2018) with the head as the shared layer, at the cost of one no-graph forward
//! and K head products instead of K model backward passes.

use super::batch::TokenBatch;
use super::error::ModelError;
use super::lm::CausalLm;
use super::matmul::matmul;
use candle_core::{DType, Tensor, D};

/// Positions of one head product (bounds the `(positions, vocab)` probabilities in memory).
const CHUNK: usize = 256;

/// For every task k < `num_tasks`: `Σ_t (softmax(z_t) − onehot(label_t)) h_tᵀ` over the
/// batch's scored positions t of task k, with `h_t` the final hidden state (after the last
/// norm, no graph) and `z_t = W h_t + b` the logits; i.e. the gradient of the task's summed
/// NLL with respect to the head weight `W` `(vocab, hidden)`. In f64 for an f64 model, else
/// f32. A task without scored positions gets zeros.
///
/// # Errors
/// A malformed batch, task ids ≥ `num_tasks`, or a tensor failure.
pub fn head_task_gradients<M: CausalLm + ?Sized>(
    m: &M,
    batch: &TokenBatch,
    num_tasks: usize,
) -> Result<Vec<Tensor>, ModelError> {
    let dtype = if m.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let h = m.hidden(batch, false)?;
    let d = h.dim(D::Minus1)?;
    let h = h
        .reshape((batch.rows * batch.seq_len, d))?
        .to_dtype(dtype)?;
    let (w, b) = m.head(false);
    let (w, b) = (
        w.to_dtype(dtype)?,
        b.map(|b| b.to_dtype(dtype)).transpose()?,
    );
    let vocab = w.dim(0)?;
    let mut out = vec![Tensor::zeros((vocab, d), dtype, m.device())?; num_tasks];
    let mut by_task: Vec<Vec<(u32, u32)>> = vec![Vec::new(); num_tasks];
    for (t, &scored) in batch.loss_mask.iter().enumerate() {
        if scored == 0 {
            continue;
        }
        let task = batch.task_ids.get(t).copied().unwrap_or(0) as usize;
        let list = by_task.get_mut(task).ok_or_else(|| {
            ModelError::Batch(format!(
                "task id {task} at position {t}, only {num_tasks} tasks"
            ))
        })?;
        list.push((t as u32, batch.labels[t]));
    }
    for (task, list) in by_task.iter().enumerate() {
        for chunk in list.chunks(CHUNK) {
            let idx: Vec<u32> = chunk.iter().map(|(t, _)| *t).collect();
            let idx = Tensor::from_vec(idx, chunk.len(), m.device())?;
            let hk = h.index_select(&idx, 0)?;
            let z = matmul(&hk, &w.t()?)?;
            let z = match &b {
                Some(b) => z.broadcast_add(b)?,
                None => z,
            };
            let p = softmax_rows(&z)?;
            let mut onehot = vec![0f32; chunk.len() * vocab];
            for (row, (_, label)) in chunk.iter().enumerate() {
                onehot[row * vocab + *label as usize] = 1.0;
            }
            let onehot =
                Tensor::from_vec(onehot, (chunk.len(), vocab), m.device())?.to_dtype(dtype)?;
            let g = matmul(&(p - onehot)?.t()?, &hk)?;
            out[task] = (&out[task] + g)?;
        }
    }
    Ok(out)
}

/// Row-wise softmax `(n, vocab)` in the input's dtype (max-subtracted).
fn softmax_rows(z: &Tensor) -> candle_core::Result<Tensor> {
    let max = z.max_keepdim(D::Minus1)?;
    let e = z.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}
