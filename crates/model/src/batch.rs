//! The token batch the model consumes: plain row-major host arrays.
//!
//! Field names and meanings mirror `data::batch::Batch` (labels already shifted, positions
//! restarting per packed sample, 1-based segment ids), so converting is a field-by-field move.

use super::error::ModelError;

/// One micro-batch of `rows × seq_len` positions; every array is row-major.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenBatch {
    /// Rows (micro-batch size).
    pub rows: usize,
    /// Positions per row.
    pub seq_len: usize,
    /// Input token ids, `rows * seq_len`.
    pub input_ids: Vec<u32>,
    /// Target ids (already shifted); may be empty for a forward without loss.
    pub labels: Vec<u32>,
    /// 1 where the label is trained on / scored; empty means no position is.
    pub loss_mask: Vec<u8>,
    /// RoPE positions; empty means `0..seq_len` on every row.
    pub position_ids: Vec<u32>,
    /// Segment ids of packed samples (attention stays inside a segment); empty means one
    /// segment per row.
    pub segment_ids: Vec<u32>,
    /// Task id of every position; empty means task 0 everywhere.
    pub task_ids: Vec<u32>,
    /// Per row, the key of its LoRA dropout masks (a pure function of seed, step and the
    /// row's place in the global batch, set by the trainer); empty means no dropout.
    pub dropout_keys: Vec<u64>,
}

impl TokenBatch {
    /// A batch of inputs only (no loss): for logits and generation.
    pub fn inputs(rows: usize, seq_len: usize, input_ids: Vec<u32>) -> Self {
        Self {
            rows,
            seq_len,
            input_ids,
            ..Self::default()
        }
    }

    /// One unpacked sequence scored on positions `from..` (teacher forcing): inputs are
    /// `tokens[..n-1]`, labels `tokens[1..]`, and the loss covers labels at token index
    /// `>= score_from` (e.g. the first completion token). Task id `task` everywhere.
    pub fn from_sequence(tokens: &[u32], score_from: usize, task: u32) -> Self {
        let n = tokens.len().saturating_sub(1);
        Self {
            rows: 1,
            seq_len: n,
            input_ids: tokens[..n].to_vec(),
            labels: tokens[1..].to_vec(),
            loss_mask: (0..n).map(|i| u8::from(i + 1 >= score_from)).collect(),
            position_ids: Vec::new(),
            segment_ids: Vec::new(),
            task_ids: vec![task; n],
            dropout_keys: Vec::new(),
        }
    }

    /// Number of positions (`rows * seq_len`).
    pub fn len(&self) -> usize {
        self.rows * self.seq_len
    }

    /// Whether the batch has no position.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks array lengths and that ids are below `vocab`.
    ///
    /// # Errors
    /// [`ModelError::Batch`] naming the first problem found.
    pub fn validate(&self, vocab: usize) -> Result<(), ModelError> {
        let n = self.len();
        if n == 0 {
            return Err(ModelError::Batch("empty batch".into()));
        }
        let check = |name: &str, len: usize, optional: bool| {
            if len == n || (optional && len == 0) {
                Ok(())
            } else {
                Err(ModelError::Batch(format!(
                    "{name} has {len} entries, expected {n}"
                )))
            }
        };
        check("input_ids", self.input_ids.len(), false)?;
        check("labels", self.labels.len(), true)?;
        check("loss_mask", self.loss_mask.len(), true)?;
        check("position_ids", self.position_ids.len(), true)?;
        check("segment_ids", self.segment_ids.len(), true)?;
        check("task_ids", self.task_ids.len(), true)?;
        if self.labels.is_empty() && self.loss_mask.iter().any(|&m| m != 0) {
            return Err(ModelError::Batch("loss_mask set but no labels".into()));
        }
        let bad = |ids: &[u32]| ids.iter().find(|&&t| t as usize >= vocab).copied();
        if let Some(t) = bad(&self.input_ids).or_else(|| bad(&self.labels)) {
            return Err(ModelError::Batch(format!("token id {t} >= vocab {vocab}")));
        }
        Ok(())
    }

    /// Indices (into the flat arrays) of the scored positions.
    pub fn scored_positions(&self) -> Vec<u32> {
        self.loss_mask
            .iter()
            .enumerate()
            .filter(|(_, &m)| m != 0)
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// Task id of flat position `i` (0 when `task_ids` is empty).
    pub fn task_of(&self, i: usize) -> u32 {
        self.task_ids.get(i).copied().unwrap_or(0)
    }
}

impl From<&data::batch::Batch> for TokenBatch {
    /// Field-by-field copy of a data-pipeline batch (same names, layout and meaning).
    fn from(b: &data::batch::Batch) -> Self {
        Self {
            rows: b.rows,
            seq_len: b.seq_len,
            input_ids: b.input_ids.clone(),
            labels: b.labels.clone(),
            loss_mask: b.loss_mask.clone(),
            position_ids: b.position_ids.clone(),
            segment_ids: b.segment_ids.clone(),
            task_ids: b.task_ids.clone(),
            dropout_keys: Vec::new(),
        }
    }
}
