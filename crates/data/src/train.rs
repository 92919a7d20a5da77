//! The training sampler: epochs, mixing, packing, sharding and the resumable cursor.
//!
//! Epoch `e` draws `N = Σ n_i` samples, `quota_i` of them from task i (see [`crate::mixing`]):
//! task i is read as an endless stream of seeded permutations of its train set and epoch `e`
//! takes stream positions `[e·quota_i, (e+1)·quota_i)`. The draws are shuffled with
//! `(seed, e)` and become rows: one sample per row (`padding`), or whole samples packed in
//! order into rows of `max_seq_len` positions (`pack`; a sample that does not fit starts the
//! next row). Global step `s` of the epoch is rows `[s·G, (s+1)·G)` with `G` the global batch
//! in rows; the tail that does not fill a step is dropped. Everything is a pure function of
//! (seed, epoch, step), so the [`Cursor`] is two integers.
//!
//! Rank `r` of `world_size` gets rows `[r·G/ws, (r+1)·G/ws)` of each step, cut into
//! `grad_accum` micro-batches of `micro_batch` rows: the union over ranks is the 1-rank
//! global batch.
//!
//! ```no_run
//! # fn demo(ds: &data::dataset::Dataset) -> data::Result<()> {
//! use data::{config::{BatchMode, Mixing}, train::{TrainSampler, Shard, Cursor}};
//! let shard = Shard { rank: 0, world_size: 2, micro_batch: 4, grad_accum: 2 };
//! let mut sampler = TrainSampler::new(ds, BatchMode::Pack, Mixing::Proportional, 0, shard.global_rows())?;
//! let mut cursor = Cursor::default();
//! let micro_batches = sampler.rank_step(cursor, shard)?; // grad_accum batches of micro_batch rows
//! cursor = sampler.advance(cursor);
//! # let _ = (micro_batches, cursor); Ok(()) }
//! ```

use crate::batch::{Batch, SampleRef};
use crate::config::{BatchMode, Mixing};
use crate::dataset::Dataset;
use crate::mixing::{probabilities, quotas};
use crate::rng::SplitMix64;
use crate::{DataError, Result};
use serde::{Deserialize, Serialize};

/// Position of the training iterator: serializable, restoring it reproduces the batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Cursor {
    /// Epoch (0-based).
    pub epoch: u64,
    /// Global step within the epoch (0-based).
    pub step: u64,
}

/// This rank's part of a global batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This rank, `< world_size`.
    pub rank: usize,
    /// Number of data-parallel ranks.
    pub world_size: usize,
    /// Rows per micro-batch.
    pub micro_batch: usize,
    /// Micro-batches per rank per global step.
    pub grad_accum: usize,
}

impl Shard {
    /// Rows per global step: `micro_batch · grad_accum · world_size`.
    pub fn global_rows(&self) -> usize {
        self.micro_batch * self.grad_accum * self.world_size
    }

    fn check(&self) -> Result<()> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(DataError::Config {
                field: "rank",
                message: format!("rank {} of world_size {}", self.rank, self.world_size),
            });
        }
        if self.micro_batch == 0 || self.grad_accum == 0 {
            return Err(DataError::Config {
                field: "micro_batch",
                message: "micro_batch and grad_accum must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// Deterministic training sampler over a loaded [`Dataset`].
pub struct TrainSampler<'a> {
    ds: &'a Dataset,
    mode: BatchMode,
    seed: u64,
    global_rows: usize,
    probs: Vec<f64>,
    quotas: Vec<usize>,
    plan: Option<(u64, Vec<Vec<SampleRef>>)>,
}

impl<'a> TrainSampler<'a> {
    /// A sampler with `global_rows` rows per global step.
    pub fn new(
        ds: &'a Dataset,
        mode: BatchMode,
        mixing: Mixing,
        seed: u64,
        global_rows: usize,
    ) -> Result<Self> {
        let n: Vec<usize> = ds.tasks.iter().map(|t| t.train.len()).collect();
        let total: usize = n.iter().sum();
        if global_rows == 0 {
            return Err(DataError::Config {
                field: "micro_batch",
                message: "global batch of 0 rows".into(),
            });
        }
        if let Some(t) = ds.tasks.iter().find(|t| t.train.is_empty()) {
            return Err(DataError::EmptySplit {
                task: t.name.clone(),
                split: "train",
                detail: "no train samples".into(),
            });
        }
        let probs = probabilities(mixing, &n);
        let quotas = quotas(&probs, total);
        let mut s = Self {
            ds,
            mode,
            seed,
            global_rows,
            probs,
            quotas,
            plan: None,
        };
        if s.steps_in_epoch(0) == 0 {
            return Err(DataError::Config {
                field: "micro_batch",
                message: format!(
                    "global batch of {global_rows} rows is larger than an epoch ({} rows)",
                    s.epoch_rows(0).len()
                ),
            });
        }
        Ok(s)
    }

    /// Mixing probability per task.
    pub fn probabilities(&self) -> &[f64] {
        &self.probs
    }

    /// Samples drawn per task per epoch.
    pub fn quotas(&self) -> &[usize] {
        &self.quotas
    }

    /// Rows per global step.
    pub fn global_rows(&self) -> usize {
        self.global_rows
    }

    /// The rows of epoch `epoch` (cached for the current epoch).
    pub fn epoch_rows(&mut self, epoch: u64) -> &[Vec<SampleRef>] {
        if self.plan.as_ref().map(|p| p.0) != Some(epoch) {
            let rows = self.build_plan(epoch);
            self.plan = Some((epoch, rows));
        }
        match &self.plan {
            Some((_, rows)) => rows,
            None => &[],
        }
    }

    /// Global steps in epoch `epoch` (constant in padding mode; may vary slightly when packing).
    pub fn steps_in_epoch(&mut self, epoch: u64) -> u64 {
        let g = self.global_rows;
        (self.epoch_rows(epoch).len() / g) as u64
    }

    /// The cursor after `c`. When packing, an epoch whose rows do not fill a single global
    /// step (only possible when an epoch is barely larger than a step) is skipped.
    pub fn advance(&mut self, c: Cursor) -> Cursor {
        if c.step + 1 < self.steps_in_epoch(c.epoch) {
            return Cursor {
                epoch: c.epoch,
                step: c.step + 1,
            };
        }
        let mut epoch = c.epoch + 1;
        for _ in 0..64 {
            if self.steps_in_epoch(epoch) > 0 {
                break;
            }
            epoch += 1;
        }
        Cursor { epoch, step: 0 }
    }

    /// The rows of the global step at `c` (`global_rows` rows).
    pub fn global_step_rows(&mut self, c: Cursor) -> Result<Vec<Vec<SampleRef>>> {
        let g = self.global_rows;
        let rows = self.epoch_rows(c.epoch);
        let start = (c.step as usize).saturating_mul(g);
        if start + g > rows.len() {
            return Err(DataError::Config {
                field: "cursor",
                message: format!("step {} is past the end of epoch {}", c.step, c.epoch),
            });
        }
        Ok(rows[start..start + g].to_vec())
    }

    /// This rank's `grad_accum` micro-batches of the global step at `c`.
    pub fn rank_step(&mut self, c: Cursor, shard: Shard) -> Result<Vec<Batch>> {
        shard.check()?;
        if shard.global_rows() != self.global_rows {
            return Err(DataError::Config {
                field: "micro_batch",
                message: format!(
                    "micro_batch·grad_accum·world_size = {} but the sampler has {} rows per step",
                    shard.global_rows(),
                    self.global_rows
                ),
            });
        }
        let rows = self.global_step_rows(c)?;
        let per_rank = self.global_rows / shard.world_size;
        let mine = &rows[shard.rank * per_rank..(shard.rank + 1) * per_rank];
        let seq = match self.mode {
            BatchMode::Padding => None,
            BatchMode::Pack => Some(self.ds.max_seq_len),
        };
        Ok(mine
            .chunks(shard.micro_batch)
            .map(|mb| {
                let rows: Vec<Vec<_>> = mb
                    .iter()
                    .map(|row| {
                        row.iter()
                            .map(|r| (*r, &self.ds.tasks[r.task as usize].train[r.index as usize]))
                            .collect()
                    })
                    .collect();
                Batch::from_rows(&rows, seq)
            })
            .collect())
    }

    fn build_plan(&self, epoch: u64) -> Vec<Vec<SampleRef>> {
        let mut draws = Vec::with_capacity(self.quotas.iter().sum());
        for (t, task) in self.ds.tasks.iter().enumerate() {
            let n = task.train.len() as u64;
            let q = self.quotas[t] as u64;
            let (start, end) = (epoch * q, (epoch + 1) * q);
            let mut cycle = u64::MAX;
            let mut perm: Vec<u32> = Vec::new();
            for k in start..end {
                if k / n != cycle {
                    cycle = k / n;
                    perm = (0..n as u32).collect();
                    SplitMix64::from_keys(self.seed, &[0x7A5C, t as u64, cycle]).shuffle(&mut perm);
                }
                draws.push(SampleRef {
                    task: t as u32,
                    index: perm[(k % n) as usize],
                });
            }
        }
        SplitMix64::from_keys(self.seed, &[0xE90C, epoch]).shuffle(&mut draws);
        match self.mode {
            BatchMode::Padding => draws.into_iter().map(|d| vec![d]).collect(),
            BatchMode::Pack => {
                let cap = self.ds.max_seq_len;
                let mut rows = Vec::new();
                let mut row: Vec<SampleRef> = Vec::new();
                let mut used = 0;
                for d in draws {
                    let len = self.ds.tasks[d.task as usize].train[d.index as usize]
                        .tokens
                        .len()
                        - 1;
                    if used + len > cap && !row.is_empty() {
                        rows.push(std::mem::take(&mut row));
                        used = 0;
                    }
                    row.push(d);
                    used += len;
                }
                if !row.is_empty() {
                    rows.push(row);
                }
                rows
            }
        }
    }
}
