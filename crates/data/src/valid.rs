//! Validation: full per-task passes and the CoBa probe, split across ranks so that every rank
//! runs the same number of micro-batches (missing rows are fully masked filler rows).
//!
//! A list of `M` samples is cut into `world_size` contiguous parts of `ceil(M / world_size)`
//! rows (the last parts padded with filler rows), each cut into micro-batches of
//! `micro_batch` rows (the last one padded). Batches are in padding mode, one sample per row.
//!
//! The probe `k` covers every task with `probe_samples_per_task` samples in total over all
//! ranks: task t contributes `order_t[(k·P + j) mod n_t]`, j < P, where `order_t` is a seeded
//! permutation of its validation set. Nothing depends on the number of ranks, so the summed
//! per-task losses, and hence the CoBa weights, do not either.
//!
//! ```no_run
//! # fn demo(ds: &data::dataset::Dataset) {
//! use data::valid::{valid_batches, ProbeSampler};
//! let batches = valid_batches(ds, 0, 1, 4, 8); // task 0, rank 1 of 4, micro_batch 8
//! let probe = ProbeSampler::new(ds, 16, 0);
//! let probe_batches = probe.rank_batches(ds, 3, 1, 4, 8); // probe #3
//! # let _ = (batches, probe_batches); }
//! ```

use crate::batch::{Batch, SampleRef};
use crate::dataset::Dataset;
use crate::rng::SplitMix64;

/// Number of micro-batches each rank runs for `m` samples.
pub fn batches_per_rank(m: usize, world_size: usize, micro_batch: usize) -> usize {
    m.div_ceil(world_size).div_ceil(micro_batch)
}

/// Rank `rank`'s micro-batches of the validation samples `refs` (padding mode; filler rows
/// are empty and fully masked).
pub fn rank_batches(
    ds: &Dataset,
    refs: &[SampleRef],
    rank: usize,
    world_size: usize,
    micro_batch: usize,
) -> Vec<Batch> {
    let per_rank = refs.len().div_ceil(world_size);
    let start = (rank * per_rank).min(refs.len());
    let end = ((rank + 1) * per_rank).min(refs.len());
    let mine = &refs[start..end];
    let n_batches = batches_per_rank(refs.len(), world_size, micro_batch);
    (0..n_batches)
        .map(|b| {
            let rows: Vec<Vec<_>> = (0..micro_batch)
                .map(|i| match mine.get(b * micro_batch + i) {
                    Some(r) => vec![(*r, &ds.tasks[r.task as usize].valid[r.index as usize])],
                    None => Vec::new(),
                })
                .collect();
            Batch::from_rows(&rows, None)
        })
        .collect()
}

/// Rank `rank`'s micro-batches of the full validation set of `task`.
pub fn valid_batches(
    ds: &Dataset,
    task: usize,
    rank: usize,
    world_size: usize,
    micro_batch: usize,
) -> Vec<Batch> {
    let refs: Vec<SampleRef> = (0..ds.tasks[task].valid.len())
        .map(|i| SampleRef {
            task: task as u32,
            index: i as u32,
        })
        .collect();
    rank_batches(ds, &refs, rank, world_size, micro_batch)
}

/// Deterministic, rank-independent CoBa probe sampler.
#[derive(Debug, Clone)]
pub struct ProbeSampler {
    per_task: usize,
    orders: Vec<Vec<u32>>,
}

impl ProbeSampler {
    /// `per_task` samples per task per probe (a global count), orders seeded by `seed`.
    pub fn new(ds: &Dataset, per_task: usize, seed: u64) -> Self {
        let orders = ds
            .tasks
            .iter()
            .enumerate()
            .map(|(t, task)| {
                let mut o: Vec<u32> = (0..task.valid.len() as u32).collect();
                SplitMix64::from_keys(seed, &[0x9409E, t as u64]).shuffle(&mut o);
                o
            })
            .collect();
        Self { per_task, orders }
    }

    /// The global sample list of probe `probe`: tasks in id order, `per_task` samples each.
    pub fn probe_refs(&self, probe: u64) -> Vec<SampleRef> {
        let p = self.per_task as u64;
        let mut out = Vec::with_capacity(self.orders.len() * self.per_task);
        for (t, order) in self.orders.iter().enumerate() {
            let n = order.len() as u64;
            if n == 0 {
                continue;
            }
            for j in 0..p {
                out.push(SampleRef {
                    task: t as u32,
                    index: order[((probe.wrapping_mul(p) + j) % n) as usize],
                });
            }
        }
        out
    }

    /// Rank `rank`'s micro-batches of probe `probe`.
    pub fn rank_batches(
        &self,
        ds: &Dataset,
        probe: u64,
        rank: usize,
        world_size: usize,
        micro_batch: usize,
    ) -> Vec<Batch> {
        rank_batches(ds, &self.probe_refs(probe), rank, world_size, micro_batch)
    }
}
