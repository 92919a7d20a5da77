//! Validation and the CoBa probe: no-graph forwards, per-task (NLL sum, token count) summed
//! over micro-batches on this rank, then all-reduced in f64 over all ranks.

use anyhow::Result;
use collectives::Communicator;
use data::batch::Batch;
use data::dataset::Dataset;
use model::{CausalLm, LossOptions, TaskLoss, TokenBatch};

/// Per-task sums of `batches` on this rank (length `num_tasks`).
///
/// # Errors
/// A model failure.
pub fn local_sums<M: CausalLm + ?Sized>(
    model: &M,
    batches: &[Batch],
    num_tasks: usize,
    opts: LossOptions,
) -> Result<Vec<TaskLoss>> {
    let mut out = vec![TaskLoss::default(); num_tasks];
    for b in batches {
        if b.loss_tokens() == 0 {
            continue;
        }
        let report = model.evaluate(&TokenBatch::from(b), opts)?;
        for (o, r) in out.iter_mut().zip(&report.per_task) {
            o.add(r);
        }
    }
    Ok(out)
}

/// Sums per-task losses over all ranks (one f64 all-reduce of 2K values).
///
/// # Errors
/// A collective failure.
pub fn all_reduce_losses(comm: &dyn Communicator, losses: &mut [TaskLoss]) -> Result<()> {
    let k = losses.len();
    let mut buf = vec![0.0f64; 2 * k];
    for (i, l) in losses.iter().enumerate() {
        buf[i] = l.nll_sum;
        buf[k + i] = l.tokens as f64;
    }
    comm.all_reduce_sum_f64(&mut buf)?;
    for (i, l) in losses.iter_mut().enumerate() {
        l.nll_sum = buf[i];
        l.tokens = buf[k + i].round() as u64;
    }
    Ok(())
}

/// Full validation over every task's validation split, split evenly across ranks: the global
/// per-task (NLL sum, tokens). Every rank runs the same number of micro-batches.
///
/// # Errors
/// A model or collective failure.
pub fn full_validation<M: CausalLm + ?Sized>(
    model: &M,
    ds: &Dataset,
    comm: &dyn Communicator,
    micro_batch: usize,
    opts: LossOptions,
) -> Result<Vec<TaskLoss>> {
    let k = ds.num_tasks();
    let mut total = vec![TaskLoss::default(); k];
    for t in 0..k {
        let batches =
            data::valid::valid_batches(ds, t, comm.rank(), comm.world_size(), micro_batch);
        let sums = local_sums(model, &batches, k, opts)?;
        for (a, s) in total.iter_mut().zip(&sums) {
            a.add(s);
        }
    }
    all_reduce_losses(comm, &mut total)?;
    Ok(total)
}

/// Number of validation micro-batches of one full pass at the global batch size `global_rows`
/// (M in the CoBa paper's Section 3.1; `"auto"` W = M, H = 2M). Independent of the number of
/// ranks for a fixed global batch.
pub fn validation_batches(ds: &Dataset, global_rows: usize) -> u64 {
    let n: usize = ds.tasks.iter().map(|t| t.valid.len()).sum();
    n.div_ceil(global_rows.max(1)) as u64
}
