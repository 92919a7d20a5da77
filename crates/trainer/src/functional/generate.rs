//! Greedy generation for `eval --metrics`: each problem's prompt rendered as a one-turn chat
//! with the training template, decoded greedily with the KV cache (batches of left-padded
//! prompts, [`model::CausalLm::generate_batch`]) until the model's end-of-sequence token, the
//! problem's stop rule ([`codeexec::stops`]) or the token limit.
//! Under a launcher every rank generates problems `i` with `i % world_size == rank`, and
//! rank 0 gathers the texts (one broadcast per rank).

use ::data::tokenize::Encoder;
use anyhow::{anyhow, Context};
use codeexec::Problem;
use collectives::Communicator;
use model::{CausalLm, Model};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokenizers::Tokenizer;

/// One generated completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generated {
    /// Index of the problem in the evaluated list.
    pub index: usize,
    /// The text after the prompt, cut at the stop rule (special tokens removed).
    pub completion: String,
    /// Tokens generated (including any cut off by the stop rule).
    pub tokens: usize,
    /// Why it stopped: `eos`, `stop` (the problem's rule) or `length`.
    pub finish: String,
}

/// Generates this rank's share of `problems`, continuously batched with up to `batch`
/// sequences in flight, logging progress on rank 0.
///
/// # Errors
/// A prompt with token ids outside the model's vocabulary, a tensor failure, or a
/// tokenizer failure, naming the problem.
pub fn generate_shard(
    model: &Model,
    enc: &Encoder,
    stop_ids: &[u32],
    problems: &[&Problem],
    max_new_tokens: usize,
    batch: usize,
    comm: &dyn Communicator,
) -> anyhow::Result<Vec<Generated>> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let vocab = model.vocab_size();
    let mut mine: Vec<(usize, Vec<u32>)> = Vec::new();
    for i in (0..problems.len()).filter(|i| i % world == rank) {
        let p = problems[i];
        let prompt = enc.chat_prompt(&p.prompt, None);
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(anyhow!(
                "problem {}: the tokenizer produces id {id} but the model's vocabulary is {vocab}",
                p.id
            ));
        }
        mine.push((i, prompt));
    }
    let start = std::time::Instant::now();
    let tok = enc.tokenizer();
    let prompts: Vec<Vec<u32>> = mine.iter().map(|(_, p)| p.clone()).collect();
    let mut finished = 0usize;
    let mut tokens_total = 0usize;
    let mut done = |r: usize, new: &[u32]| {
        let stop = new.len() >= max_new_tokens
            || new.last().is_some_and(|t| stop_ids.contains(t))
            || codeexec::stops::stop_at(
                &problems[mine[r].0].check,
                &tok.decode(new, true).unwrap_or_default(),
            )
            .is_some();
        if stop {
            finished += 1;
            tokens_total += new.len();
            if rank == 0 && finished.is_multiple_of(16) {
                let s = start.elapsed().as_secs_f64();
                tracing::info!(
                    "generated {finished}/{} on rank 0 ({:.1} tokens/s, {:.0} s)",
                    prompts.len(),
                    tokens_total as f64 / s.max(1e-9),
                    s
                );
            }
        }
        stop
    };
    let all = model
        .generate_batch(&prompts, max_new_tokens, batch, &mut done)
        .context("generating completions")?;
    let mut out = Vec::with_capacity(mine.len());
    for ((i, _), ids) in mine.iter().zip(all) {
        let p = problems[*i];
        let eos = ids.last().is_some_and(|t| stop_ids.contains(t));
        let body = if eos { &ids[..ids.len() - 1] } else { &ids[..] };
        let mut text = tok
            .decode(body, true)
            .map_err(|e| anyhow!("decoding problem {}: {e}", p.id))?;
        let finish = match (eos, codeexec::stops::stop_at(&p.check, &text)) {
            (true, _) => "eos",
            (false, Some(c)) => {
                text.truncate(c);
                "stop"
            }
            (false, None) => "length",
        };
        out.push(Generated {
            index: *i,
            completion: text,
            tokens: ids.len(),
            finish: finish.to_string(),
        });
    }
    Ok(out)
}

/// Rank 0 receives every rank's [`Generated`] list (sorted by index); other ranks get `None`.
///
/// # Errors
/// A failed broadcast or an undecodable message.
pub fn gather(
    comm: &dyn Communicator,
    mine: Vec<Generated>,
) -> anyhow::Result<Option<Vec<Generated>>> {
    if comm.world_size() == 1 {
        let mut mine = mine;
        mine.sort_by_key(|g| g.index);
        return Ok(Some(mine));
    }
    let mut all = Vec::new();
    for r in 0..comm.world_size() {
        let mut buf = if r == comm.rank() {
            serde_json::to_vec(&mine)?
        } else {
            Vec::new()
        };
        comm.broadcast_bytes(&mut buf, r)
            .with_context(|| format!("gathering the completions of rank {r}"))?;
        if comm.rank() == 0 {
            let part: Vec<Generated> = serde_json::from_slice(&buf)
                .with_context(|| format!("decoding the completions of rank {r}"))?;
            all.extend(part);
        }
    }
    if comm.rank() != 0 {
        return Ok(None);
    }
    all.sort_by_key(|g| g.index);
    Ok(Some(all))
}

/// Well-known end-of-sequence tokens, tried in order when no tokenizer_config.json names one.
pub const EOS_CANDIDATES: [&str; 4] = ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"];

/// The tokenizer's own end-of-sequence token: the `eos_token` of a `tokenizer_config.json`
/// next to `tokenizer.json` when there is one (a string or `{"content": ...}`), else the first
/// of [`EOS_CANDIDATES`] that is a token of `tok`. A missing or unreadable config file only
/// means falling back to the candidates.
pub fn tokenizer_eos(tok: &Tokenizer, tokenizer_path: &Path) -> Option<u32> {
    let from_config = tokenizer_path
        .parent()
        .map(|dir| dir.join("tokenizer_config.json"))
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| match v.get("eos_token")? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => other.get("content")?.as_str().map(str::to_string),
        })
        .and_then(|s| tok.token_to_id(&s));
    from_config.or_else(|| EOS_CANDIDATES.iter().find_map(|s| tok.token_to_id(s)))
}
