//! Chunked cross-entropy: per-task losses, the training objective and its gradients.
//!
//! Logits are never materialised for the whole batch: only scored positions are projected,
//! `chunk_tokens` at a time. For training, the backward runs in two phases: (1) each chunk's
//! loss is differentiated w.r.t. its detached slice of the final hidden states and the LM head
//! (its logits are freed before the next chunk); (2) the accumulated hidden-state gradient
//! `dH` is pushed through the decoder by differentiating the surrogate `sum(H * dH)`. Both
//! phases together give exactly the gradient of the full objective.

use super::batch::TokenBatch;
use super::error::ModelError;
use super::fused::head_cross_entropy;
use super::lm::CausalLm;
use candle_core::{DType, Tensor, Var};
use std::collections::BTreeMap;

/// Gradients by HF parameter name (same names, shapes and dtype as [`crate::Llama`]'s params).
pub type Gradients = BTreeMap<String, Tensor>;

/// Summed negative log-likelihood of one task's scored tokens (nats) and their count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TaskLoss {
    /// Sum of `-log p(label)` over the task's scored tokens, in nats.
    pub nll_sum: f64,
    /// Number of scored tokens.
    pub tokens: u64,
}

impl TaskLoss {
    /// Mean NLL per token (nats); `NaN` when the task had no token.
    pub fn mean(&self) -> f64 {
        self.nll_sum / self.tokens as f64
    }

    /// Adds another batch's loss of the same task.
    pub fn add(&mut self, other: &TaskLoss) {
        self.nll_sum += other.nll_sum;
        self.tokens += other.tokens;
    }
}

/// What a forward over a batch measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossReport {
    /// Per task id (index), the summed NLL and token count; as long as the largest task id + 1
    /// (or the `task_scale` slice, whichever is longer).
    pub per_task: Vec<TaskLoss>,
    /// The objective `sum_t task_scale[task_t] * nll_t` over scored tokens (0 for evaluation).
    pub objective: f64,
}

/// Options of the chunked loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossOptions {
    /// Logit elements (`tokens × vocab`) per chunk; bounds the loss's peak memory. Default
    /// 16M (64 MiB of f32 logits, plus as much again for their gradient).
    pub chunk_elems: usize,
}

impl Default for LossOptions {
    fn default() -> Self {
        Self {
            chunk_elems: 16 << 20,
        }
    }
}

/// The result of [`CausalLm::forward_backward`].
#[derive(Debug)]
pub struct StepOutput {
    /// Gradient of the objective for every parameter (zeros where none flows).
    pub grads: Gradients,
    /// Per-task losses and the objective value.
    pub report: LossReport,
}

/// Forward and backward of the weighted objective
/// `sum over scored tokens t of task_scale[task_t] * (-log p(label_t))`.
///
/// The caller folds every normalisation into `task_scale` (e.g. CoBa weight of task k
/// divided by the global number of task-k tokens of the step), which makes gradient
/// accumulation over micro-batches and data-parallel summation exact.
///
/// # Errors
/// A malformed batch, a task id without a `task_scale` entry, or a tensor failure.
pub(crate) fn forward_backward<M: CausalLm + ?Sized>(
    m: &M,
    batch: &TokenBatch,
    task_scale: &[f64],
    opts: LossOptions,
) -> Result<StepOutput, ModelError> {
    let h = m.hidden(batch, true)?;
    let (rows, seq, d) = h.dims3()?;
    let h_flat = h.reshape((rows * seq, d))?;
    let scored = batch.scored_positions();
    let (lm, lm_b) = m.head(true);
    let mut report = LossReport {
        per_task: vec![TaskLoss::default(); task_scale.len()],
        objective: 0.0,
    };
    let mut dh_parts = Vec::new();
    let mut d_lm: Option<Tensor> = None;
    let mut d_lm_b: Option<Tensor> = None;
    let mut nlls = Vec::new();
    let mut scales = Vec::with_capacity(scored.len());
    let h_det = h_flat.detach();
    for chunk in scored.chunks(chunk_tokens(m, opts)) {
        let scale: Vec<f64> = chunk
            .iter()
            .map(|&i| {
                let t = batch.task_of(i as usize) as usize;
                task_scale.get(t).copied().ok_or_else(|| {
                    ModelError::Batch(format!("task id {t} has no task_scale entry"))
                })
            })
            .collect::<Result<_, _>>()?;
        let idx = Tensor::from_slice(chunk, chunk.len(), m.device())?;
        let hc = Var::from_tensor(&h_det.index_select(&idx, 0)?)?;
        let nll = chunk_nll(hc.as_tensor(), &lm, lm_b.as_ref(), batch, chunk)?;
        // In the loss's dtype (f32 for a 16-bit model).
        let scale_t =
            Tensor::from_vec(scale.clone(), chunk.len(), m.device())?.to_dtype(nll.dtype())?;
        let obj = (&nll * &scale_t)?.sum_all()?;
        let grads = obj.backward()?;
        nlls.push(nll.detach());
        scales.extend_from_slice(&scale);
        if let Some(g) = grads.get(hc.as_tensor()) {
            // Gradient tensors are themselves tracked (built from the LM head): detach them,
            // or phase 2 would differentiate through them again.
            dh_parts.push((idx, g.detach()));
        }
        add_grad(&mut d_lm, grads.get(&lm).map(|g| g.detach()).as_ref())?;
        if let Some(b) = &lm_b {
            add_grad(&mut d_lm_b, grads.get(b).map(|g| g.detach()).as_ref())?;
        }
    }
    record(&mut report, batch, &scored, &nlls, Some(&scales))?;
    let mut dh = Tensor::zeros((rows * seq, d), m.dtype(), m.device())?;
    for (idx, g) in &dh_parts {
        dh = dh.index_add(idx, g, 0)?;
    }
    let surrogate = (&h_flat * &dh)?.sum_all()?;
    let store = surrogate.backward()?;
    let (lm_name, lm_b_name) = m.head_names();
    let mut grads = Gradients::new();
    for (name, var) in m.params() {
        let mut g = match store.get(var.as_tensor()) {
            Some(g) => g.detach(),
            None => var.as_tensor().zeros_like()?,
        };
        let extra = if name == lm_name {
            d_lm.as_ref()
        } else if Some(name.as_str()) == lm_b_name {
            d_lm_b.as_ref()
        } else {
            None
        };
        if let Some(extra) = extra {
            g = (g + extra)?;
        }
        grads.insert(name.clone(), g);
    }
    Ok(StepOutput { grads, report })
}

/// Per-task NLL of the scored tokens without building a graph (validation, probes).
///
/// # Errors
/// A malformed batch or a tensor failure.
pub(crate) fn evaluate<M: CausalLm + ?Sized>(
    m: &M,
    batch: &TokenBatch,
    opts: LossOptions,
) -> Result<LossReport, ModelError> {
    let h = m.hidden(batch, false)?;
    let (rows, seq, d) = h.dims3()?;
    let h_flat = h.reshape((rows * seq, d))?;
    let (lm, lm_b) = m.head(false);
    let mut report = LossReport::default();
    let scored = batch.scored_positions();
    let mut nlls = Vec::new();
    for chunk in scored.chunks(chunk_tokens(m, opts)) {
        let idx = Tensor::from_slice(chunk, chunk.len(), m.device())?;
        let hc = h_flat.index_select(&idx, 0)?;
        nlls.push(chunk_nll(&hc, &lm, lm_b.as_ref(), batch, chunk)?);
    }
    record(&mut report, batch, &scored, &nlls, None)?;
    Ok(report)
}

fn add_grad(acc: &mut Option<Tensor>, g: Option<&Tensor>) -> candle_core::Result<()> {
    if let Some(g) = g {
        *acc = Some(match acc.take() {
            Some(a) => (a + g)?,
            None => g.clone(),
        });
    }
    Ok(())
}

fn chunk_tokens<M: CausalLm + ?Sized>(m: &M, opts: LossOptions) -> usize {
    (opts.chunk_elems / m.vocab_size().max(1)).max(1)
}

/// `-log p(label)` for the positions `chunk`, given their hidden states `hc` `(n, d)`.
fn chunk_nll(
    hc: &Tensor,
    lm: &Tensor,
    lm_b: Option<&Tensor>,
    batch: &TokenBatch,
    chunk: &[u32],
) -> Result<Tensor, ModelError> {
    let labels: Vec<u32> = chunk.iter().map(|&i| batch.labels[i as usize]).collect();
    Ok(head_cross_entropy(hc, lm, lm_b, &labels)?)
}

/// Adds the NLLs of the scored `positions` to `report` (per task, and `scale[j] * nll_j` to
/// the objective), position by position in order. `nlls` are the chunks' `(n)` NLL tensors,
/// copied to the host together: one synchronisation per batch on a GPU, not one per chunk.
fn record(
    report: &mut LossReport,
    batch: &TokenBatch,
    positions: &[u32],
    nlls: &[Tensor],
    scale: Option<&[f64]>,
) -> Result<(), ModelError> {
    if nlls.is_empty() {
        return Ok(());
    }
    let vals = Tensor::cat(nlls, 0)?
        .detach()
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    if vals.len() != positions.len() {
        return Err(ModelError::Batch(format!(
            "{} losses for {} scored positions",
            vals.len(),
            positions.len()
        )));
    }
    for (j, (&i, v)) in positions.iter().zip(&vals).enumerate() {
        let t = batch.task_of(i as usize) as usize;
        if report.per_task.len() <= t {
            report.per_task.resize(t + 1, TaskLoss::default());
        }
        report.per_task[t].nll_sum += v;
        report.per_task[t].tokens += 1;
        if let Some(s) = scale {
            report.objective += s[j] * v;
        }
    }
    Ok(())
}
