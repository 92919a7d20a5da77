//! Micro-batches: plain row-major arrays the trainer turns into tensors.
//!
//! A row holds one sample (padding mode) or several whole samples (pack mode). A sample of
//! L tokens occupies L - 1 positions: `input_ids = tokens[..L-1]`, `labels = tokens[1..]`,
//! `loss_mask = loss[1..]` (labels are already shifted). Positions restart at 0 for every
//! sample; `segment_ids` number the samples of a row from 1 (0 = padding); attention is causal
//! and stays inside a segment (see [`Batch::attends`]). Every position carries the task id of
//! its sample, so per-task (loss sum, token count) follows from any batch. The fields mirror the
//! trainer's `TokenBatch` one to one (same names, types and layout).
//!
//! ```
//! use data::batch::{Batch, SampleRef};
//! use data::tokenize::Encoded;
//! let a = Encoded { tokens: vec![5, 6, 7], loss: vec![0, 1, 1] };
//! let b = Encoded { tokens: vec![8, 9], loss: vec![0, 1] };
//! let rows = vec![vec![(SampleRef { task: 0, index: 0 }, &a), (SampleRef { task: 1, index: 0 }, &b)]];
//! let batch = Batch::from_rows(&rows, Some(4));
//! assert_eq!(batch.input_ids, vec![5, 6, 8, 0]);
//! assert_eq!(batch.labels, vec![6, 7, 9, 0]);
//! assert_eq!(batch.loss_mask, vec![1, 1, 1, 0]);
//! assert_eq!(batch.position_ids, vec![0, 1, 0, 0]);
//! assert_eq!(batch.segment_ids, vec![1, 1, 2, 0]);
//! assert_eq!(batch.task_ids, vec![0, 0, 1, 0]);
//! assert_eq!(batch.loss_tokens_per_task(2), vec![2, 1]);
//! ```

use crate::tokenize::Encoded;
use serde::{Deserialize, Serialize};

/// Which sample: task id and index into that task's split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub struct SampleRef {
    /// Task id (position in the config).
    pub task: u32,
    /// Index in the task's split.
    pub index: u32,
}

/// One micro-batch, `rows × seq_len`, all arrays row-major of length `rows * seq_len`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// Number of rows (the micro-batch size).
    pub rows: usize,
    /// Positions per row.
    pub seq_len: usize,
    /// Input token ids (0 on padding).
    pub input_ids: Vec<u32>,
    /// Target token ids, already shifted (0 on padding).
    pub labels: Vec<u32>,
    /// 1 where the position's label is trained on, else 0 (padding, prompt, masked rows).
    pub loss_mask: Vec<u8>,
    /// Position within its sample, restarting at 0 per sample (0 on padding).
    pub position_ids: Vec<u32>,
    /// 1-based sample number within the row; 0 on padding.
    pub segment_ids: Vec<u32>,
    /// Task id of the position's sample (0 on padding: check `loss_mask`).
    pub task_ids: Vec<u32>,
    /// The samples of each row, in order (empty for a masked filler row).
    pub samples: Vec<Vec<SampleRef>>,
}

impl Batch {
    /// Builds a batch from rows of samples. `seq_len = None` pads to the longest row,
    /// `Some(n)` to exactly `n` (rows longer than `n` are a caller bug and panic).
    /// An empty row becomes a fully masked filler row.
    pub fn from_rows(rows: &[Vec<(SampleRef, &Encoded)>], seq_len: Option<usize>) -> Self {
        let need = |row: &Vec<(SampleRef, &Encoded)>| -> usize {
            row.iter()
                .map(|(_, s)| s.tokens.len().saturating_sub(1))
                .sum()
        };
        let longest = rows.iter().map(need).max().unwrap_or(0).max(1);
        let seq_len = seq_len.unwrap_or(longest);
        assert!(longest <= seq_len, "row of {longest} positions > {seq_len}");
        let n = rows.len() * seq_len;
        let mut b = Batch {
            rows: rows.len(),
            seq_len,
            input_ids: vec![0; n],
            labels: vec![0; n],
            loss_mask: vec![0; n],
            position_ids: vec![0; n],
            segment_ids: vec![0; n],
            task_ids: vec![0; n],
            samples: Vec::with_capacity(rows.len()),
        };
        for (r, row) in rows.iter().enumerate() {
            let mut at = r * seq_len;
            for (seg, (sref, s)) in row.iter().enumerate() {
                let l = s.tokens.len();
                for i in 0..l.saturating_sub(1) {
                    b.input_ids[at] = s.tokens[i];
                    b.labels[at] = s.tokens[i + 1];
                    b.loss_mask[at] = s.loss[i + 1];
                    b.position_ids[at] = i as u32;
                    b.segment_ids[at] = seg as u32 + 1;
                    b.task_ids[at] = sref.task;
                    at += 1;
                }
            }
            b.samples.push(row.iter().map(|(r, _)| *r).collect());
        }
        b
    }

    /// Whether query position `q` may attend to key position `k` of row `row`: causal and
    /// inside the same sample; a padding position attends only to itself (keeps softmax finite).
    pub fn attends(&self, row: usize, q: usize, k: usize) -> bool {
        let base = row * self.seq_len;
        let (sq, sk) = (self.segment_ids[base + q], self.segment_ids[base + k]);
        k == q || (k < q && sq != 0 && sq == sk)
    }

    /// Loss tokens per task, length `num_tasks`.
    pub fn loss_tokens_per_task(&self, num_tasks: usize) -> Vec<u64> {
        let mut out = vec![0u64; num_tasks];
        for (m, t) in self.loss_mask.iter().zip(&self.task_ids) {
            if *m == 1 {
                out[*t as usize] += 1;
            }
        }
        out
    }

    /// Total loss tokens.
    pub fn loss_tokens(&self) -> u64 {
        self.loss_mask.iter().map(|&m| m as u64).sum()
    }
}
