//! What rank 0 decides for every rank before training: the `output_dir` lock and the
//! checkpoint to resume from. Rank 0 alone touches the files; every rank learns the outcome
//! (or rank 0's error, so all ranks stop together with its message).

use super::error::{RunError, Scoped};
use super::{lock, state, state::TrainState, Resume, TrainConfig};
use anyhow::{anyhow, bail, Context, Result};
use collectives::Communicator;
use std::path::{Path, PathBuf};

/// Runs `decide` on rank 0 only and gives every rank its outcome: rank 0's text, or rank 0's
/// error as a bad-input error on every rank (so all ranks stop together with its message).
fn decided_by_rank0(
    comm: &dyn Communicator,
    decide: impl FnOnce() -> Result<String>,
) -> Result<String, RunError> {
    let mut buf = Vec::new();
    if comm.rank() == 0 {
        let (tag, text) = match decide() {
            Ok(t) => (b'+', t),
            Err(e) => (b'!', format!("{e:#}")),
        };
        buf.push(tag);
        buf.extend(text.bytes());
    }
    comm.broadcast_bytes(&mut buf, 0)?;
    let text = String::from_utf8_lossy(buf.get(1..).unwrap_or_default()).into_owned();
    match buf.first() {
        Some(b'+') => Ok(text),
        _ => Err(anyhow!("{text}")).bad_input(),
    }
}

/// Rank 0 takes the output directory's lock ([`lock::OutputLock`]); a refusal stops every
/// rank with rank 0's message.
pub fn lock_output_dir(
    out: &Path,
    comm: &dyn Communicator,
) -> Result<Option<lock::OutputLock>, RunError> {
    let mut held = None;
    decided_by_rank0(comm, || {
        held = Some(lock::OutputLock::acquire(out)?);
        Ok(String::new())
    })?;
    Ok(held)
}

/// Rank 0 picks the checkpoint and broadcasts its path, so every rank resumes from the same
/// one. `auto` takes the newest checkpoint that passes [`state::verify_checkpoint`], with a
/// warning naming each newer one it skipped and why (a corrupt newest checkpoint used to stop
/// the resume); an explicit path must pass it.
pub fn resolve_resume(
    cfg: &TrainConfig,
    comm: &dyn Communicator,
    resume: Option<&Resume>,
) -> Result<Option<PathBuf>, RunError> {
    let Some(resume) = resume else {
        return Ok(None);
    };
    let path = decided_by_rank0(comm, || {
        Ok(pick_checkpoint(cfg, resume)?
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default())
    })?;
    Ok((!path.is_empty()).then(|| PathBuf::from(path)))
}

fn pick_checkpoint(cfg: &TrainConfig, resume: &Resume) -> Result<Option<PathBuf>> {
    let Some((dir, st)) = pick_whole_checkpoint(cfg, resume)? else {
        return Ok(None);
    };
    check_metrics_file(cfg, &st, &dir)?;
    Ok(Some(dir))
}

/// The run's `metrics.jsonl` must still hold what the checkpoint recorded (its step lines),
/// else the checkpoint belongs to another `output_dir` or the file was removed; checked before
/// anything is written.
fn check_metrics_file(cfg: &TrainConfig, st: &TrainState, dir: &Path) -> Result<()> {
    if st.metrics_offset == 0 {
        return Ok(());
    }
    let p = cfg.output_dir.join("metrics.jsonl");
    let len = std::fs::metadata(&p).map_or(0, |m| m.len());
    // A lower bound: the header may have been rewritten since (another length).
    let body = st.metrics_offset - st.metrics_header_len.unwrap_or(0).min(st.metrics_offset);
    if len <= body {
        bail!(
            "{}: the checkpoint was written after {} bytes of {}, which now has {len}: the \
             checkpoint belongs to another output_dir, or metrics.jsonl was removed or cut. \
             Restore the file, or start a new run from the checkpoint's weights with \
             model.path = \"{}\"",
            dir.display(),
            st.metrics_offset,
            p.display(),
            dir.join("model").display()
        );
    }
    Ok(())
}

fn pick_whole_checkpoint(
    cfg: &TrainConfig,
    resume: &Resume,
) -> Result<Option<(PathBuf, TrainState)>> {
    match resume {
        Resume::Path(p) => state::verify_checkpoint(p)
            .map(|st| Some((p.clone(), st)))
            .with_context(|| format!("--resume {}: not a usable checkpoint", p.display())),
        Resume::Auto => {
            let all = state::list_checkpoints(&cfg.output_dir);
            for (_, p) in all.iter().rev() {
                match state::verify_checkpoint(p) {
                    Ok(st) => return Ok(Some((p.clone(), st))),
                    Err(e) => tracing::warn!(
                        "--resume auto: skipping {}, it is damaged: {e:#}",
                        p.display()
                    ),
                }
            }
            if all.is_empty() {
                tracing::info!(
                    "--resume auto: no checkpoint in {}; starting fresh",
                    state::checkpoints_dir(&cfg.output_dir).display()
                );
                Ok(None)
            } else {
                bail!(
                    "--resume auto: every checkpoint in {} is damaged (see the warnings above); \
                     move them away to start fresh",
                    state::checkpoints_dir(&cfg.output_dir).display()
                )
            }
        }
    }
}
