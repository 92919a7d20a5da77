//! GradNorm's `G_i` for one step: per task, the L2 norm of the gradient of its mean training
//! loss over the global batch with respect to the LM head weight (the shared layer), from
//! detached hidden states ([`model::head_grads`]); the per-task head gradients are summed over
//! micro-batches and all-reduced over ranks before the norm, so N ranks give the one-rank
//! value.

use collectives::{all_reduce_named, BucketOptions, Communicator};
use data::batch::Batch;
use model::{Model, TokenBatch};

/// `G_i` for task i of the step whose micro-batches on this rank are `batches`;
/// `global_tokens[i]` is the task's scored tokens over all ranks (0 gives `G_i = 0`).
///
/// # Errors
/// A tensor or collective failure.
pub fn head_grad_norms(
    model: &Model,
    batches: &[Batch],
    global_tokens: &[f64],
    comm: &dyn Communicator,
) -> anyhow::Result<Vec<f64>> {
    let k = global_tokens.len();
    let mut sums: Option<Vec<candle_core::Tensor>> = None;
    for b in batches {
        let g = model::head_grads::head_task_gradients(model, &TokenBatch::from(b), k)?;
        sums = Some(match sums {
            None => g,
            Some(s) => s
                .iter()
                .zip(&g)
                .map(|(a, b)| a + b)
                .collect::<candle_core::Result<_>>()?,
        });
    }
    let Some(sums) = sums else {
        return Ok(vec![0.0; k]);
    };
    let mut named: Vec<(String, candle_core::Tensor)> = sums
        .into_iter()
        .enumerate()
        .map(|(i, t)| (format!("gradnorm.task{i:04}"), t))
        .collect();
    all_reduce_named(comm, &mut named, &BucketOptions::default())?;
    named
        .iter()
        .zip(global_tokens)
        .map(|((_, g), n)| {
            if *n <= 0.0 {
                return Ok(0.0);
            }
            let sq = g
                .to_dtype(candle_core::DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
            Ok(sq.sqrt() / n)
        })
        .collect()
}
