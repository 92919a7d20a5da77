//! The training job's configuration: a TOML file, then `COBA_...` environment variables, then
//! `--set key=value` overrides (figment), extracted into [`TrainConfig`].
//!
//! Every section rejects unknown keys; the error names the key, where it came from (file or
//! environment variable) and the nearest valid key. `configs/reference.toml` lists every key
//! with its default. Relative paths are relative to the working directory.
//!
//! ```
//! use trainer::train::config::{load, Sources};
//! let toml = r#"
//!     output_dir = "runs/x"
//!     [model]
//!     tokenizer = "tok.json"
//!     [model.arch]
//!     hidden_size = 64
//!     num_hidden_layers = 2
//!     num_attention_heads = 4
//!     [data]
//!     tasks = [{ name = "a", paths = ["a.jsonl"] }]
//!     [train]
//!     lr = 1e-3
//! "#;
//! let cfg = load(&Sources { toml: Some((toml.into(), "x.toml".into())), env: vec![],
//!     sets: vec!["train.micro_batch_size=2".into()] }).unwrap();
//! assert_eq!(cfg.train.micro_batch_size, 2);
//! assert_eq!(cfg.train.lr, 1e-3);
//! let bad = load(&Sources { toml: Some((toml.into(), "x.toml".into())), env: vec![],
//!     sets: vec!["train.lrr=1.0".into()] }).unwrap_err().to_string();
//! assert!(bad.contains("train.lrr") && bad.contains("did you mean `train.lr`"), "{bad}");
//! ```

use coba::{MethodKind, Variant, WeighterConfig};
use data::config::DataConfig;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Where metrics, checkpoints, `best/` and plots go (created).
    pub output_dir: PathBuf,
    /// The model and its tokenizer.
    pub model: ModelSection,
    /// Tasks and the data pipeline (see `data::config::DataConfig`).
    pub data: DataConfig,
    /// Optimisation and the step loop.
    #[serde(default)]
    pub train: TrainSection,
    /// Task weighting (CoBa or a baseline).
    #[serde(default)]
    pub coba: CobaSection,
    /// Checkpointing.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    /// Processes, threads, collectives.
    #[serde(default)]
    pub runtime: RuntimeSection,
}

/// `[model]`: a pretrained checkpoint (`path`) or a random-init architecture (`arch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// HF checkpoint directory, `.gguf` file, or one of our checkpoint directories.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `tokenizer.json` of the model.
    pub tokenizer: PathBuf,
    /// Random-init Llama-family architecture (used when `path` is absent).
    #[serde(default)]
    pub arch: Option<ArchSection>,
}

/// `[model.arch]`: a Llama-family decoder initialised `N(0, init_std^2)` from `train.seed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSection {
    /// `llama` or `qwen2`. Default `llama`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Vocabulary; default: the tokenizer's vocabulary size.
    #[serde(default)]
    pub vocab_size: Option<usize>,
    /// Width d.
    pub hidden_size: usize,
    /// SwiGLU width; default `8d/3` rounded up to a multiple of 64.
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); default = query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// RoPE θ. Default 10000.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Tie the LM head to the embeddings. Default true.
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// Init standard deviation. Default 0.02 (HF).
    #[serde(default = "default_init_std")]
    pub init_std: f64,
}

fn default_model_type() -> String {
    "llama".into()
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_init_std() -> f64 {
    0.02
}
fn yes() -> bool {
    true
}

/// LR schedule kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrKind {
    /// Linear warm-up then cosine decay to `min_lr` (MFTCoder's default).
    #[default]
    Cosine,
    /// Linear warm-up then constant.
    Constant,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Optimizer steps; 0 means `epochs` full epochs. Default 0.
    pub max_steps: u64,
    /// Epochs when `max_steps = 0`. Default 1.
    pub epochs: u64,
    /// Rows per micro-batch per rank. Default 4.
    pub micro_batch_size: usize,
    /// Micro-batches per rank per optimizer step. Default 1.
    pub grad_accum: usize,
    /// Peak learning rate. Default 2e-5.
    pub lr: f64,
    /// Final learning rate of the cosine decay. Default 0.
    pub min_lr: f64,
    /// Linear warm-up, in optimizer steps. Default 0.
    pub lr_warmup_steps: u64,
    /// `cosine` or `constant`. Default cosine.
    pub lr_schedule: LrKind,
    /// AdamW decoupled weight decay (not on norms and biases). Default 0.
    pub weight_decay: f64,
    /// AdamW β1. Default 0.9.
    pub beta1: f64,
    /// AdamW β2. Default 0.999.
    pub beta2: f64,
    /// AdamW ε. Default 1e-8.
    pub eps: f64,
    /// Global-norm clipping threshold; 0 disables. Default 1.0.
    pub clip_grad_norm: f64,
    /// Seed of model init, data order and mixing. Default 42.
    pub seed: u64,
    /// Full validation every this many steps (0: only at the end). Default 100.
    pub eval_interval: u64,
    /// Stop after this many evaluations without a new best average ratio (0: never). Default 0.
    pub early_stopping_patience: u64,
    /// Rows per validation / probe micro-batch. Default: `micro_batch_size`.
    pub eval_micro_batch_size: Option<usize>,
    /// Logit elements per loss chunk (memory bound of the cross-entropy). Default 16M.
    pub loss_chunk_elems: usize,
    /// Log a human line every this many steps. Default 10.
    pub log_interval: u64,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            max_steps: 0,
            epochs: 1,
            micro_batch_size: 4,
            grad_accum: 1,
            lr: 2e-5,
            min_lr: 0.0,
            lr_warmup_steps: 0,
            lr_schedule: LrKind::Cosine,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_grad_norm: 1.0,
            seed: 42,
            eval_interval: 100,
            early_stopping_patience: 0,
            eval_micro_batch_size: None,
            loss_chunk_elems: 16 << 20,
            log_interval: 10,
        }
    }
}

/// A step count that may be `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AutoOr {
    /// An explicit value.
    Value(u64),
    /// `"auto"`.
    Auto(AutoTag),
}

impl<'de> Deserialize<'de> for AutoOr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
            Other(serde::de::IgnoredAny),
        }
        let bad = || serde::de::Error::custom("expected a whole number >= 0 or \"auto\"");
        match Raw::deserialize(d).map_err(|_: D::Error| bad())? {
            Raw::N(n) => Ok(AutoOr::Value(n)),
            Raw::S(s) if s == "auto" => Ok(AutoOr::Auto(AutoTag::Auto)),
            _ => Err(bad()),
        }
    }
}

/// The literal string `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoTag {
    /// `"auto"`.
    Auto,
}

/// `[coba]`: the weighting method and its schedule (see `coba::WeighterConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CobaSection {
    /// `coba`, `uniform`, `lbtw`, `dwa` or `famo`. Default coba.
    pub method: MethodKind,
    /// `mftcoder` (default) or `paper`.
    pub variant: Variant,
    /// W in steps, or `"auto"` = M, the number of validation batches (paper, Section 3.1).
    /// Default 100.
    pub warmup_steps: AutoOr,
    /// H in probes, or `"auto"` = 2M. Default 200.
    pub history_length: AutoOr,
    /// τ. Default 5.
    pub tau: f64,
    /// U in steps. Default 1.
    pub update_interval: u64,
    /// Samples per task in one probe, summed over ranks; overrides `data.probe_samples_per_task`.
    pub probe_samples_per_task: Option<usize>,
}

impl Default for CobaSection {
    fn default() -> Self {
        let w = WeighterConfig::default();
        Self {
            method: w.method,
            variant: w.variant,
            warmup_steps: AutoOr::Value(w.warmup_steps),
            history_length: AutoOr::Value(w.history_length as u64),
            tau: w.tau,
            update_interval: w.update_interval,
            probe_samples_per_task: None,
        }
    }
}

impl std::fmt::Display for AutoOr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AutoOr::Value(v) => write!(f, "{v}"),
            AutoOr::Auto(_) => f.write_str("auto"),
        }
    }
}

impl CobaSection {
    /// The weighter settings, with `"auto"` resolved from `m` validation batches.
    pub fn weighter_config(&self, m: u64) -> WeighterConfig {
        let resolve = |v: AutoOr, auto: u64| match v {
            AutoOr::Value(v) => v,
            AutoOr::Auto(_) => auto,
        };
        WeighterConfig {
            method: self.method,
            variant: self.variant,
            warmup_steps: resolve(self.warmup_steps, m),
            history_length: resolve(self.history_length, (2 * m).max(2)) as usize,
            tau: self.tau,
            update_interval: self.update_interval,
        }
    }
}

/// `[checkpoint]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save every this many steps (0: only at the end and on SIGTERM/SIGUSR1). Default 500.
    pub every_steps: u64,
    /// Checkpoints kept (oldest deleted first; `best/` is separate). Default 2.
    pub keep_last: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            every_steps: 500,
            keep_last: 2,
        }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// CPU threads per rank; 0 = cores / local ranks. Default 0.
    pub threads: usize,
    /// `auto` (MPI under a launcher, else local), `local`, `mpi` or `nccl`. Default auto.
    pub backend: String,
    /// Seconds one collective may take before the job aborts (0: never). Default 600.
    pub collective_timeout_s: u64,
    /// Test hook: make task `task`'s loss NaN at step `step` (checks the clean stop).
    pub inject_nan: Option<InjectNan>,
    /// Test hook: abort the process in the middle of writing the checkpoint of this step.
    pub crash_in_checkpoint: Option<u64>,
}

/// Fault injection: a NaN loss for one task at one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectNan {
    /// The step.
    pub step: u64,
    /// The task name.
    pub task: String,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self {
            threads: 0,
            backend: "auto".into(),
            collective_timeout_s: collectives::DEFAULT_COLLECTIVE_TIMEOUT_S,
            inject_nan: None,
            crash_in_checkpoint: None,
        }
    }
}

/// Where the configuration comes from, in increasing priority.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// TOML text and the name to report it under (a path, or `embedded configs/demo.toml`).
    pub toml: Option<(String, String)>,
    /// `(NAME, value)` environment variables (filtered to `COBA_*` with `__` by [`env_vars`]).
    pub env: Vec<(String, String)>,
    /// `key.path=value` overrides; the value is TOML (`2.0e-5`, `"text"`, `[1, 2]`) or a bare
    /// string.
    pub sets: Vec<String>,
}

/// The `COBA_SECTION__KEY=value` variables of this process: `COBA_TRAIN__LR=2.0e-5` sets
/// `train.lr`. Only names containing `__` (or `COBA_OUTPUT_DIR`) count, so unrelated `COBA_*`
/// variables (e.g. `COBA_DIST_CACHE`) are not read as configuration.
pub fn env_vars() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("COBA_") && (k.contains("__") || k == "COBA_OUTPUT_DIR"))
        .collect()
}

/// A configuration error, with its origin.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// `COBA_TRAIN__LR` → `train.lr`.
fn env_key(name: &str) -> String {
    name.strip_prefix("COBA_")
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace("__", ".")
}

fn parse_value(raw: &str) -> figment::value::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => match t.remove("v") {
            Some(v) => figment::value::Value::serialize(v)
                .unwrap_or_else(|_| figment::value::Value::from(raw.to_string())),
            None => figment::value::Value::from(raw.to_string()),
        },
        Err(_) => figment::value::Value::from(raw.to_string()),
    }
}

/// Merges the sources and extracts the configuration; checks values with [`validate`].
///
/// # Errors
/// [`ConfigError`] naming the key, its source and, for unknown keys, the nearest valid key; a
/// TOML syntax error names the line; an out-of-range value names the key.
pub fn load(sources: &Sources) -> Result<TrainConfig, ConfigError> {
    let mut fig = Figment::new();
    if let Some((text, name)) = &sources.toml {
        toml::from_str::<toml::Table>(text)
            .map_err(|e| ConfigError(format!("{name}: {}", e.to_string().trim_end())))?;
        fig = fig.merge(Toml::string(text));
    }
    for (k, v) in &sources.env {
        fig = fig.merge(Serialized::default(&env_key(k), parse_value(v)));
    }
    for s in &sources.sets {
        let Some((k, v)) = s.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
            return Err(ConfigError(format!(
                "--set {s:?}: expected key.path=value (e.g. train.lr=2.0e-5)"
            )));
        };
        fig = fig.merge(Serialized::default(k.trim(), parse_value(v.trim())));
    }
    let cfg: TrainConfig = fig
        .extract()
        .map_err(|e| ConfigError(describe(e, sources)))?;
    validate(&cfg)?;
    Ok(cfg)
}

fn origin(path: &[String], sources: &Sources) -> String {
    let dotted = path.join(".");
    let covers = |key: &str| key == dotted || key.starts_with(&format!("{dotted}."));
    if let Some(s) = sources
        .sets
        .iter()
        .rev()
        .find(|s| s.split_once('=').is_some_and(|(k, _)| covers(k.trim())))
    {
        return format!("--set {s}");
    }
    if let Some((k, _)) = sources.env.iter().find(|(k, _)| covers(&env_key(k))) {
        return format!("environment variable {k}");
    }
    match &sources.toml {
        Some((text, name)) => match find_line(text, path) {
            Some(line) => format!("{name}:{line}"),
            None => name.clone(),
        },
        None => "the configuration".into(),
    }
}

/// Line (1-based) of `path`'s leaf key inside its `[section]` of a TOML text, best effort.
fn find_line(text: &str, path: &[String]) -> Option<usize> {
    let (leaf, sections) = path.split_last()?;
    let want = sections.join(".");
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = h.trim().trim_matches(['[', ']']).trim().to_string();
            continue;
        }
        let key = t.split('=').next().unwrap_or("").trim();
        if current == want && key == leaf {
            return Some(i + 1);
        }
    }
    None
}

fn describe(errs: figment::Error, sources: &Sources) -> String {
    use figment::error::Kind;
    errs.into_iter()
        .map(|e| {
            let path = e.path.clone();
            let at = |p: &[String]| origin(p, sources);
            match &e.kind {
                Kind::UnknownField(field, expected) => {
                    let mut parent = path.clone();
                    if parent.last() == Some(field) {
                        parent.pop();
                    }
                    let mut full = parent.clone();
                    full.push(field.clone());
                    let prefix = parent.join(".");
                    let join = |f: &str| {
                        if prefix.is_empty() {
                            f.to_string()
                        } else {
                            format!("{prefix}.{f}")
                        }
                    };
                    let hint = nearest(field, expected)
                        .map(|s| format!("; did you mean `{}`?", join(s)))
                        .unwrap_or_else(|| {
                            format!(
                                "; valid keys here: {}",
                                expected
                                    .iter()
                                    .map(|s| join(s))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        });
                    format!("unknown key `{}` in {}{hint}", join(field), at(&full))
                }
                Kind::MissingField(field) => {
                    let mut full = path.clone();
                    if full.last().map(String::as_str) != Some(field.as_ref()) {
                        full.push(field.to_string());
                    }
                    format!("missing key `{}` (required)", full.join("."))
                }
                _ => format!("key `{}` in {}: {}", path.join("."), at(&path), e.kind),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The candidate closest to `word` by edit distance, if it is close (≤ 1/3 of the length + 1);
/// a candidate that extends `word` (or that `word` extends) counts as distance 1.
fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| {
            let d = if c.starts_with(word) || word.starts_with(c) {
                1
            } else {
                levenshtein(word, c)
            };
            (d, *c)
        })
        .min()
        .filter(|(d, _)| *d <= word.len() / 3 + 1)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Range and consistency checks that need no IO.
///
/// # Errors
/// [`ConfigError`] naming the key.
pub fn validate(cfg: &TrainConfig) -> Result<(), ConfigError> {
    let err = |key: &str, msg: String| Err(ConfigError(format!("key `{key}`: {msg}")));
    if cfg.output_dir.as_os_str().is_empty() {
        return err("output_dir", "must not be empty".into());
    }
    let t = &cfg.train;
    if t.micro_batch_size == 0 {
        return err("train.micro_batch_size", "must be at least 1".into());
    }
    if t.grad_accum == 0 {
        return err("train.grad_accum", "must be at least 1".into());
    }
    if t.max_steps == 0 && t.epochs == 0 {
        return err(
            "train.max_steps",
            "max_steps and epochs are both 0: nothing to train".into(),
        );
    }
    if !(t.lr.is_finite() && t.lr > 0.0) {
        return err("train.lr", format!("must be finite and > 0, got {}", t.lr));
    }
    if !(t.min_lr.is_finite() && t.min_lr >= 0.0 && t.min_lr <= t.lr) {
        return err(
            "train.min_lr",
            format!("must be in [0, lr], got {}", t.min_lr),
        );
    }
    if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
        return err(
            "train.weight_decay",
            format!("must be >= 0, got {}", t.weight_decay),
        );
    }
    if !(t.clip_grad_norm.is_finite() && t.clip_grad_norm >= 0.0) {
        return err(
            "train.clip_grad_norm",
            format!("must be >= 0, got {}", t.clip_grad_norm),
        );
    }
    for (k, v) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
        if !(0.0..1.0).contains(&v) {
            return err(k, format!("must be in [0, 1), got {v}"));
        }
    }
    if !(t.eps.is_finite() && t.eps > 0.0) {
        return err("train.eps", format!("must be > 0, got {}", t.eps));
    }
    if t.eval_micro_batch_size == Some(0) {
        return err("train.eval_micro_batch_size", "must be at least 1".into());
    }
    if t.loss_chunk_elems == 0 {
        return err("train.loss_chunk_elems", "must be at least 1".into());
    }
    if cfg.checkpoint.keep_last == 0 {
        return err("checkpoint.keep_last", "must be at least 1".into());
    }
    if cfg.coba.probe_samples_per_task == Some(0) {
        return err("coba.probe_samples_per_task", "must be at least 1".into());
    }
    if cfg.coba.update_interval == 0 {
        return err("coba.update_interval", "must be at least 1".into());
    }
    // CoBa's own checks (H >= 2, 0 < tau <= 1e6) with placeholder M.
    coba::Method::new(1, &cfg.coba.weighter_config(1))
        .map_err(|e| ConfigError(format!("[coba]: {e}")))?;
    if cfg.model.path.is_none() && cfg.model.arch.is_none() {
        return err(
            "model.path",
            "give either model.path (a checkpoint) or a [model.arch] block (random init)".into(),
        );
    }
    if let Some(a) = &cfg.model.arch {
        if !matches!(a.model_type.as_str(), "llama" | "qwen2" | "mistral") {
            return err(
                "model.arch.model_type",
                format!(
                    "random init supports llama, qwen2, mistral; got {:?}",
                    a.model_type
                ),
            );
        }
        if !(a.init_std.is_finite() && a.init_std > 0.0) {
            return err(
                "model.arch.init_std",
                format!("must be > 0, got {}", a.init_std),
            );
        }
        if !(a.rope_theta.is_finite() && a.rope_theta > 0.0) {
            return err(
                "model.arch.rope_theta",
                format!("must be > 0, got {}", a.rope_theta),
            );
        }
        if a.hidden_size == 0 || a.num_hidden_layers == 0 || a.num_attention_heads == 0 {
            return err(
                "model.arch",
                "hidden_size, num_hidden_layers and num_attention_heads must be >= 1".into(),
            );
        }
        let kv = a.num_key_value_heads.unwrap_or(a.num_attention_heads);
        if a.hidden_size % a.num_attention_heads != 0 || kv == 0 || a.num_attention_heads % kv != 0
        {
            return err(
                "model.arch",
                format!(
                    "hidden_size {} must divide by num_attention_heads {}, which must divide by \
                     num_key_value_heads {kv}",
                    a.hidden_size, a.num_attention_heads
                ),
            );
        }
    }
    if !matches!(
        cfg.runtime.backend.as_str(),
        "auto" | "local" | "mpi" | "nccl"
    ) {
        return err(
            "runtime.backend",
            format!(
                "expected auto, local, mpi or nccl; got {:?}",
                cfg.runtime.backend
            ),
        );
    }
    cfg.data
        .validate()
        .map_err(|e| ConfigError(format!("[data]: {e}")))?;
    Ok(())
}

impl TrainConfig {
    /// The data settings the pipeline uses: `[data]` with `coba.probe_samples_per_task`
    /// applied and the seed shared with `train.seed` when `data.seed` is 0.
    pub fn data_config(&self) -> DataConfig {
        let mut d = self.data.clone();
        if let Some(p) = self.coba.probe_samples_per_task {
            d.probe_samples_per_task = p;
        }
        if d.seed == 0 {
            d.seed = self.train.seed;
        }
        d
    }

    /// The resolved configuration as TOML (what rank 0 prints and saves).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# not representable: {e}"))
    }

    /// Task names in id order.
    pub fn task_names(&self) -> Vec<String> {
        self.data.tasks.iter().map(|t| t.name.clone()).collect()
    }

    /// Rows per validation / probe micro-batch.
    pub fn eval_micro_batch(&self) -> usize {
        self.train
            .eval_micro_batch_size
            .unwrap_or(self.train.micro_batch_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> String {
        r#"
output_dir = "out"
[model]
tokenizer = "t.json"
[model.arch]
hidden_size = 32
num_hidden_layers = 1
num_attention_heads = 4
[data]
tasks = [{ name = "a", paths = ["a.jsonl"] }]
"#
        .into()
    }

    fn src(toml: String, env: &[(&str, &str)], sets: &[&str]) -> Sources {
        Sources {
            toml: Some((toml, "c.toml".into())),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sets: sets.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn layers_apply_in_order_file_env_set() {
        let t = base() + "[train]\nlr = 0.1\nseed = 1\n";
        let c = load(&src(t.clone(), &[], &[])).unwrap();
        assert_eq!((c.train.lr, c.train.seed), (0.1, 1));
        let c = load(&src(t.clone(), &[("COBA_TRAIN__LR", "2.0e-5")], &[])).unwrap();
        assert_eq!(c.train.lr, 2.0e-5);
        let c = load(&src(t, &[("COBA_TRAIN__LR", "2.0e-5")], &["train.lr=0.5"])).unwrap();
        assert_eq!(c.train.lr, 0.5);
    }

    #[test]
    fn auto_history_and_warmup() {
        let t = base() + "[coba]\nwarmup_steps = \"auto\"\nhistory_length = \"auto\"\n";
        let c = load(&src(t, &[], &[])).unwrap();
        let w = c.coba.weighter_config(7);
        assert_eq!((w.warmup_steps, w.history_length), (7, 14));
        let c = load(&src(base(), &[], &["coba.warmup_steps=3"])).unwrap();
        assert_eq!(c.coba.weighter_config(7).warmup_steps, 3);
    }

    #[test]
    fn unknown_keys_name_source_line_and_suggestion() {
        let t = base() + "[train]\nmicro_batch = 2\n";
        let e = load(&src(t, &[], &[])).unwrap_err().0;
        assert!(e.contains("unknown key `train.micro_batch`"), "{e}");
        assert!(e.contains("c.toml:12"), "{e}");
        assert!(e.contains("did you mean `train.micro_batch_size`"), "{e}");
        let e = load(&src(base(), &[("COBA_COBA__TAUU", "2.0")], &[]))
            .unwrap_err()
            .0;
        assert!(
            e.contains("COBA_COBA__TAUU") && e.contains("`coba.tau`"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = load(&src(base(), &[], &["train.lr=-1.0"])).unwrap_err().0;
        assert!(e.contains("train.lr"), "{e}");
        let e = load(&src(base(), &[], &["train.micro_batch_size=\"x\""]))
            .unwrap_err()
            .0;
        assert!(
            e.contains("train.micro_batch_size") && e.contains("--set"),
            "{e}"
        );
        let e = load(&src(base(), &[], &["coba.tau=0.0"])).unwrap_err().0;
        assert!(e.contains("coba"), "{e}");
        let e = load(&src("output_dir = [".into(), &[], &[])).unwrap_err().0;
        assert!(e.contains("c.toml") && e.contains("line 1"), "{e}");
        let e = load(&src(base().replace("output_dir = \"out\"", ""), &[], &[]))
            .unwrap_err()
            .0;
        assert!(e.contains("missing key `output_dir`"), "{e}");
    }

    /// `configs/reference.toml` states every default: loading it must give exactly the
    /// defaults of the code (a changed default without a changed reference fails here).
    #[test]
    fn reference_toml_lists_the_real_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/reference.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let c = load(&src(text.clone(), &[], &[])).unwrap();
        assert_eq!(c.train, TrainSection::default());
        assert_eq!(c.coba, CobaSection::default());
        assert_eq!(c.checkpoint, CheckpointSection::default());
        assert_eq!(c.runtime, RuntimeSection::default());
        let mut data = DataConfig::with_tasks(c.data.tasks.clone());
        data.template = c.data.template.clone();
        assert_eq!(c.data, data);
        // Every section key of the code appears in the file (commented or not).
        let all = toml::to_string(&c).unwrap();
        for line in all.lines() {
            if let Some(key) = line.split(" = ").next().filter(|_| line.contains(" = ")) {
                assert!(text.contains(key.trim()), "reference.toml lacks `{key}`");
            }
        }
    }

    #[test]
    fn resolved_config_round_trips_through_toml() {
        let c = load(&src(base(), &[], &["coba.history_length=\"auto\""])).unwrap();
        let again = load(&src(c.to_toml(), &[], &[])).unwrap();
        assert_eq!(c, again);
    }
}
