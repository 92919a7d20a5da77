//! The interface every training-mode causal LM implements, and the operations built on it
//! (chunked loss and gradients, logits, generation).

use super::batch::TokenBatch;
use super::error::ModelError;
use super::generate::Sampling;
use super::kv_cache::KvCache;
use super::loss::{LossOptions, LossReport, StepOutput};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::BTreeMap;

/// A decoder-only language model with trainable parameters under HF names.
pub trait CausalLm {
    /// Final hidden states `(rows, seq_len, hidden)` after the last norm. With `track` the
    /// result is connected to the parameters' graph (for backward); without, weights are
    /// detached and no activations are kept (validation, probes, generation).
    ///
    /// # Errors
    /// A malformed batch or a tensor failure.
    fn hidden(&self, batch: &TokenBatch, track: bool) -> Result<Tensor, ModelError>;

    /// Final hidden states `(rows, n, hidden)` of `ids` (row-major, `rows * n` ids for the
    /// cache's `rows`, [`KvCache::rows`]) appended after the positions in `cache` (no graph;
    /// RoPE positions continue from `cache.len()` net of each row's left padding), which grows
    /// by `n`. `None` when the model has no cached decoding (callers re-run
    /// [`CausalLm::hidden`] over the whole sequence instead).
    ///
    /// # Errors
    /// Ids outside the vocabulary or a tensor failure.
    fn hidden_cached(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
    ) -> Result<Option<Tensor>, ModelError> {
        let _ = (ids, cache);
        Ok(None)
    }

    /// LM head weight `(vocab, hidden)` and optional bias `(vocab)`, tracked or detached.
    fn head(&self, track: bool) -> (Tensor, Option<Tensor>);

    /// HF names of the LM head weight and bias (the weight is `model.embed_tokens.weight`
    /// when tied).
    fn head_names(&self) -> (&'static str, Option<&'static str>);

    /// Trainable parameters, HF name to [`Var`], name-sorted. Tied weights appear once.
    fn params(&self) -> &BTreeMap<String, Var>;

    /// Vocabulary size.
    fn vocab_size(&self) -> usize;

    /// Parameter and activation dtype.
    fn dtype(&self) -> DType;

    /// Device of the parameters.
    fn device(&self) -> &Device;

    /// Total number of scalar parameters.
    fn num_parameters(&self) -> usize {
        self.params().values().map(|v| v.elem_count()).sum()
    }

    /// Detached views of all parameters by HF name (sharing storage with the live
    /// parameters: copy them if the model keeps training).
    fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.params()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Logits `(rows, seq_len, vocab)` without a graph. Meant for short inputs (tests,
    /// generation): training and evaluation use the chunked loss, which never materialises
    /// all logits.
    ///
    /// # Errors
    /// A malformed batch or a tensor failure.
    fn logits(&self, batch: &TokenBatch) -> Result<Tensor, ModelError> {
        let h = self.hidden(batch, false)?;
        let (w, b) = self.head(false);
        Ok(crate::layers::linear(&h, &w, b.as_ref())?)
    }

    /// Forward and backward of the weighted objective
    /// `sum over scored tokens t of task_scale[task_t] * (-log p(label_t))`.
    ///
    /// The caller folds every normalisation into `task_scale` (e.g. the CoBa weight of task k
    /// divided by the global number of task-k tokens of the step), which makes gradient
    /// accumulation over micro-batches and data-parallel summation exact.
    ///
    /// # Errors
    /// A malformed batch, a task id without a `task_scale` entry, or a tensor failure.
    fn forward_backward(
        &self,
        batch: &TokenBatch,
        task_scale: &[f64],
        opts: LossOptions,
    ) -> Result<StepOutput, ModelError> {
        super::loss::forward_backward(self, batch, task_scale, opts)
    }

    /// Per-task NLL of the scored tokens without building a graph (validation, probes).
    ///
    /// # Errors
    /// A malformed batch or a tensor failure.
    fn evaluate(&self, batch: &TokenBatch, opts: LossOptions) -> Result<LossReport, ModelError> {
        super::loss::evaluate(self, batch, opts)
    }

    /// Appends up to `max_new` tokens to `prompt`, stopping after any token in `stop`;
    /// returns the new tokens (with the stop token if one was produced). Uses a KV cache where
    /// the model has one ([`CausalLm::hidden_cached`]): one forward over the prompt, then one
    /// position per token; otherwise each step re-runs the whole sequence.
    ///
    /// # Errors
    /// An empty prompt, ids outside the vocabulary, or a tensor failure.
    fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        sampling: Sampling,
    ) -> Result<Vec<u32>, ModelError> {
        let mut done = |out: &[u32]| out.last().is_some_and(|t| stop.contains(t));
        super::generate::generate(self, prompt, max_new, sampling, &mut done)
    }

    /// Greedy decoding of several prompts at once, continuously batched: up to `max_rows`
    /// sequences share one KV cache (left-padded to its length); a finished row leaves and the
    /// next queued prompt (longest first) is prefilled into its place. Prompt r gets up to
    /// `max_new` tokens and stops after the first token for which `done(r, new_tokens_of_r)`
    /// is true. Returns each prompt's new tokens: the same as [`CausalLm::generate_until`]
    /// per prompt up to float rounding of the batched products (ties of the argmax aside).
    /// Models without a KV cache decode the prompts one by one.
    ///
    /// # Errors
    /// An empty prompt, ids outside the vocabulary, or a tensor failure.
    fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        max_new: usize,
        max_rows: usize,
        done: &mut dyn FnMut(usize, &[u32]) -> bool,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        super::generate::generate_batch(self, prompts, max_new, max_rows, done)
    }

    /// As [`CausalLm::generate`], but stops when `done(new_tokens)` is true after a token
    /// (e.g. a stop sequence in the decoded text); returns every new token including the last.
    ///
    /// # Errors
    /// An empty prompt, ids outside the vocabulary, or a tensor failure.
    fn generate_until(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampling: Sampling,
        done: &mut dyn FnMut(&[u32]) -> bool,
    ) -> Result<Vec<u32>, ModelError> {
        super::generate::generate(self, prompt, max_new, sampling, done)
    }
}
