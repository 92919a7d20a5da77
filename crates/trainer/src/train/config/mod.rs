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
use collectives::BackendChoice;
use data::config::DataConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

mod load;
mod validate;

pub use load::{env_vars, load, ConfigError, Sources};
pub use validate::validate;

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
    /// Metric sinks besides `metrics.jsonl`.
    #[serde(default)]
    pub metrics: MetricsSection,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// TensorBoard event files under `output_dir/tb/` (`tensorboard --logdir output_dir/tb`).
    /// Default true.
    pub tensorboard: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self { tensorboard: true }
    }
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
    /// `llama`, `qwen2` or `mistral` (the HF `model_type` written to `config.json`). Default
    /// `llama`.
    #[serde(default)]
    pub model_type: ArchModelType,
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

/// The Llama-family architectures a random init can build (they differ only in the HF
/// `model_type` and its loader's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchModelType {
    /// Llama (the default).
    #[default]
    Llama,
    /// Qwen2.
    Qwen2,
    /// Mistral.
    Mistral,
}

impl ArchModelType {
    /// The HF `model_type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Mistral => "mistral",
        }
    }
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
    #[serde(with = "backend_choice")]
    pub backend: BackendChoice,
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
            backend: BackendChoice::Auto,
            collective_timeout_s: collectives::DEFAULT_COLLECTIVE_TIMEOUT_S,
            inject_nan: None,
            crash_in_checkpoint: None,
        }
    }
}

/// `runtime.backend` as its string (`auto`, `local`, `mpi`, `nccl`), parsed once by
/// [`BackendChoice`]'s `FromStr`.
mod backend_choice {
    use collectives::BackendChoice;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &BackendChoice, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match b {
            BackendChoice::Auto => "auto",
            BackendChoice::Local => "local",
            BackendChoice::Mpi => "mpi",
            BackendChoice::Nccl => "nccl",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BackendChoice, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
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

    #[test]
    fn backend_and_model_type_are_parsed_once_into_types() {
        let c = load(&src(
            base(),
            &[],
            &["runtime.backend=mpi", "model.arch.model_type=qwen2"],
        ))
        .unwrap();
        assert_eq!(c.runtime.backend, BackendChoice::Mpi);
        assert_eq!(
            c.model.arch.as_ref().unwrap().model_type,
            ArchModelType::Qwen2
        );
        // They round-trip through the resolved TOML as their strings.
        let again: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(again, c);
        assert!(c.to_toml().contains("backend = \"mpi\""));
        let e = load(&src(base(), &[], &["runtime.backend=tcp"]))
            .unwrap_err()
            .0;
        assert!(
            e.contains("runtime.backend") && e.contains("expected auto, local, mpi or nccl"),
            "{e}"
        );
        let e = load(&src(base(), &[], &["model.arch.model_type=gpt2"]))
            .unwrap_err()
            .0;
        assert!(
            e.contains("model.arch.model_type") && e.contains("qwen2"),
            "{e}"
        );
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
