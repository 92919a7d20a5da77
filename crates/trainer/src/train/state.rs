//! Training checkpoints: what a resumed run needs, written atomically in the background.
//!
//! Layout of `output_dir/checkpoints/step-NNNNNNNN/` (N = optimizer steps completed):
//! `model/` (HF `config.json` + `model.safetensors`), `optimizer.json` +
//! `optimizer.safetensors` (AdamW moments), and `state.json` ([`TrainState`]: data cursor,
//! weighter, best-model bookkeeping, metrics offset), written last. A checkpoint is written
//! into `.tmp-step-NNNNNNNN/`, every file fsynced, then renamed: a directory named `step-*`
//! is always complete, and a run killed mid-write leaves only a `.tmp-*` directory that the
//! next write removes.
//!
//! Only rank 0 writes (parameters and optimizer state are identical on every rank after the
//! all-reduce); every rank reads on resume, so `output_dir` must be on a filesystem all ranks
//! see.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use model::checkpoint::{save_hf_parts, HfParts};
use model::optim::AdamW;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Format version of `state.json`.
pub const STATE_VERSION: u32 = 1;

/// Everything besides model and optimizer that a resumed run needs (`state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Optimizer steps completed (the next step to run).
    pub next_step: u64,
    /// Position of the training data iterator.
    pub cursor: data::train::Cursor,
    /// Task names (a resumed run must have the same tasks in the same order).
    pub tasks: Vec<String>,
    /// Rows per global step (a resumed run must have the same global batch; the number of
    /// ranks may differ).
    pub global_rows: usize,
    /// Ranks of the run that wrote the checkpoint.
    pub world_size: usize,
    /// `l_i(0)`, nats per token.
    pub initial_val_loss: Vec<f64>,
    /// The weighting rule's complete state (rank 0's).
    pub weighter: coba::Weighter,
    /// The weighting settings (W, H, τ, U, method, variant) the weighter was built with; a
    /// resumed run must use the same.
    pub weighting: coba::WeighterConfig,
    /// Best average validation ratio so far and its step.
    pub best: Option<(u64, f64)>,
    /// Evaluations since the best one (early stopping).
    pub evals_since_best: u64,
    /// Bytes of `metrics.jsonl` that belong to the steps up to `next_step`.
    pub metrics_offset: u64,
    /// The run has no random state besides the seed: data order, mixing and probes are pure
    /// functions of (seed, epoch, step) and there is no dropout. Kept for the format.
    pub seed: u64,
    /// The learning-rate schedule the run was started with (absent in older checkpoints): a
    /// resume with a schedule that changes the rate of any step is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_schedule: Option<model::optim::LrSchedule>,
    /// Optimizer steps the run was configured for (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u64>,
    /// Length in bytes of `metrics.jsonl`'s header line when `metrics_offset` was recorded
    /// (a resume that rewrites the header moves the offset by the difference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_header_len: Option<u64>,
    /// Validation samples per task in one probe (absent in older checkpoints): a resume must
    /// keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_samples_per_task: Option<usize>,
    /// A LoRA run's `lora.quantize_base` (lower case; absent in older checkpoints and in full
    /// fine-tuning): a resume must keep the base the adapters were trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_quantize_base: Option<String>,
    /// The model dtype of the run (`"f32"` / `"bf16"`; absent in older checkpoints, which were
    /// f32): a resume must keep it (a bf16 run's f32 master weights are in the optimizer state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_dtype: Option<String>,
    /// With `[coba] signal = "train"`: each task's latest per-task training loss (nats per
    /// token; `None` until the task appears in a global batch), which the next probe
    /// observes for a task absent from that step's batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_train_loss: Vec<Option<f64>>,
}

/// An in-memory copy of everything a checkpoint holds, cheap to take between steps.
pub struct Snapshot {
    /// With LoRA: the adapters' PEFT config; `tensors` are then the adapters (PEFT keys),
    /// written as `adapter/` (`best/` itself for the best model) instead of `model/`.
    pub adapter: Option<model::checkpoint::AdapterConfig>,
    /// HF `config.json` text.
    pub config_json: String,
    /// HF `model_type`.
    pub model_type: String,
    /// Parameter dtype.
    pub dtype: DType,
    /// Deep copies of the parameters.
    pub tensors: BTreeMap<String, Tensor>,
    /// Optimizer (its moments are replaced, never mutated, by a step: a clone is a snapshot).
    pub optimizer: AdamW,
    /// The rest.
    pub state: TrainState,
}

impl Snapshot {
    /// Writes the model part: an HF directory (`config.json` + `model.safetensors`), or with
    /// LoRA a PEFT adapter directory.
    ///
    /// # Errors
    /// Any IO failure, naming the path.
    fn save_model(&self, dir: &Path) -> Result<()> {
        if let Some(cfg) = &self.adapter {
            model::checkpoint::save_adapter(dir, cfg, &self.tensors)?;
            return Ok(());
        }
        let parts = HfParts {
            config_json: &self.config_json,
            model_type: &self.model_type,
            dtype: self.dtype,
            tensors: &self.tensors,
        };
        save_hf_parts(&parts, dir)?;
        Ok(())
    }
}

/// The model part's directory inside a checkpoint: `model` (HF), or `adapter` (PEFT, LoRA).
pub fn model_dir_name(lora: bool) -> &'static str {
    if lora {
        "adapter"
    } else {
        "model"
    }
}

/// Name of the checkpoint directory after `step` completed steps.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// `output_dir/checkpoints`.
pub fn checkpoints_dir(output_dir: &Path) -> PathBuf {
    output_dir.join("checkpoints")
}

/// The complete checkpoints in `output_dir`, oldest first.
pub fn list_checkpoints(output_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(checkpoints_dir(output_dir)) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|n| n.parse::<u64>().ok())
        {
            if e.path().join("state.json").is_file() {
                out.push((n, e.path()));
            }
        }
    }
    out.sort();
    out
}

fn fsync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", path.display()))
}

fn fsync_dir(path: &Path) {
    // Directory fsync makes the rename durable; not every filesystem supports it.
    if let Ok(f) = File::open(path) {
        let _ = f.sync_all();
    }
}

fn fsync_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            fsync_tree(&p)?;
        } else {
            fsync_file(&p)?;
        }
    }
    fsync_dir(dir);
    Ok(())
}

/// Writes `snap` as checkpoint `step-N` under `output_dir/checkpoints`, atomically, then
/// deletes the oldest checkpoints beyond `keep_last`. `crash_after_model` aborts the process
/// half-way (a test hook standing in for SIGKILL during a write).
///
/// # Errors
/// Any IO failure, naming the path.
pub fn write_checkpoint(
    output_dir: &Path,
    snap: &Snapshot,
    keep_last: usize,
    crash_after_model: bool,
) -> Result<PathBuf> {
    let root = checkpoints_dir(output_dir);
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let name = step_dir_name(snap.state.next_step);
    let tmp = root.join(format!(".tmp-{name}"));
    let fin = root.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("remove {}", tmp.display()))?;
    }
    snap.save_model(&tmp.join(model_dir_name(snap.adapter.is_some())))?;
    if crash_after_model {
        eprintln!(
            "coba-dist: runtime.crash_in_checkpoint: aborting while writing {}",
            tmp.display()
        );
        std::process::abort();
    }
    snap.optimizer.save(&tmp)?;
    let spath = tmp.join("state.json");
    let text = serde_json::to_string_pretty(&snap.state)?;
    std::fs::write(&spath, text).with_context(|| format!("write {}", spath.display()))?;
    fsync_tree(&tmp)?;
    if fin.exists() {
        std::fs::remove_dir_all(&fin).with_context(|| format!("remove {}", fin.display()))?;
    }
    std::fs::rename(&tmp, &fin)
        .with_context(|| format!("rename {} -> {}", tmp.display(), fin.display()))?;
    fsync_dir(&root);
    let all = list_checkpoints(output_dir);
    if all.len() > keep_last {
        for (_, old) in &all[..all.len() - keep_last] {
            std::fs::remove_dir_all(old).with_context(|| format!("remove {}", old.display()))?;
        }
    }
    // Leftovers of interrupted writes of other steps.
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(fin)
}

/// Reads `state.json` of a checkpoint directory.
///
/// # Errors
/// A missing or malformed file, or another format version.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let p = dir.join("state.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
    let st: TrainState =
        serde_json::from_str(&text).with_context(|| format!("parse {}", p.display()))?;
    if st.version != STATE_VERSION {
        bail!(
            "{}: state version {} (this build reads {STATE_VERSION})",
            p.display(),
            st.version
        );
    }
    Ok(st)
}

/// Checks that a checkpoint directory is whole before a resume picks it: `state.json` parses
/// (and has this build's version), the JSON files parse, and every `*.safetensors` file has a
/// well-formed header whose tensors end exactly at the end of the file (a truncated or
/// overwritten file fails). Returns the state.
///
/// # Errors
/// What is wrong, naming the file.
pub fn verify_checkpoint(dir: &Path) -> Result<TrainState> {
    let st = read_state(dir)?;
    let lora = dir.join("adapter").is_dir();
    let model_dir = dir.join(model_dir_name(lora));
    let config = model_dir.join(if lora {
        model::checkpoint::ADAPTER_CONFIG
    } else {
        "config.json"
    });
    for json in [config, dir.join("optimizer.json")] {
        let text =
            std::fs::read_to_string(&json).with_context(|| format!("read {}", json.display()))?;
        serde_json::from_str::<serde_json::Value>(&text)
            .with_context(|| format!("parse {}", json.display()))?;
    }
    let mut files = vec![dir.join("optimizer.safetensors")];
    let mut shards: Vec<PathBuf> = std::fs::read_dir(&model_dir)
        .with_context(|| format!("read {}", model_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    if shards.is_empty() {
        bail!("{}: no *.safetensors file", model_dir.display());
    }
    shards.sort();
    files.extend(shards);
    for f in &files {
        check_safetensors_layout(f)?;
    }
    Ok(st)
}

/// A safetensors file: 8-byte little-endian header length, a JSON header, then the data; the
/// largest `data_offsets` end must be the data's length.
fn check_safetensors_layout(path: &Path) -> Result<()> {
    use std::io::Read;
    let bad = |why: String| anyhow::anyhow!("{}: {why}", path.display());
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|e| bad(format!("no header ({e})")))?;
    let n = u64::from_le_bytes(n);
    if n > len.saturating_sub(8) || n > 100 << 20 {
        return Err(bad(format!(
            "header length {n} does not fit a file of {len} bytes"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("short header ({e})")))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON ({e})")))?;
    let end = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, v)| v["data_offsets"][1].as_u64())
        .max()
        .unwrap_or(0);
    if 8 + n + end != len {
        return Err(bad(format!(
            "{len} bytes, the header describes {} (truncated or overwritten)",
            8 + n + end
        )));
    }
    Ok(())
}

/// Writes the best model to `output_dir/best/` atomically (HF model, `tokenizer.json`,
/// `template.json`, `summary.json`).
///
/// # Errors
/// Any IO failure, naming the path.
pub fn write_best(
    output_dir: &Path,
    snap: &Snapshot,
    tokenizer: &Path,
    template_json: &str,
    summary_json: &str,
) -> Result<()> {
    let tmp = output_dir.join(".tmp-best");
    let fin = output_dir.join("best");
    let old = output_dir.join(".old-best");
    for d in [&tmp, &old] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("remove {}", d.display()))?;
        }
    }
    snap.save_model(&tmp)?;
    std::fs::copy(tokenizer, tmp.join("tokenizer.json"))
        .with_context(|| format!("copy {}", tokenizer.display()))?;
    std::fs::write(tmp.join("template.json"), template_json)?;
    std::fs::write(tmp.join("summary.json"), summary_json)?;
    fsync_tree(&tmp)?;
    if fin.exists() {
        std::fs::rename(&fin, &old)?;
    }
    std::fs::rename(&tmp, &fin)
        .with_context(|| format!("rename {} -> {}", tmp.display(), fin.display()))?;
    fsync_dir(output_dir);
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}
