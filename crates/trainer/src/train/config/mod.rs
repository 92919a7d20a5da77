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

use collectives::BackendChoice;
use data::config::DataConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

mod coba_section;
mod eval_section;
mod load;
mod lora_section;
mod validate;

pub use coba_section::{AutoOr, AutoTag, CobaSection};
pub use eval_section::EvalSection;

pub use load::{env_vars, load, ConfigError, Sources};
pub use lora_section::{BaseQuant, LoraSection, TargetModules};
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
    /// LoRA adapters instead of full fine-tuning.
    #[serde(default)]
    pub lora: LoraSection,
    /// Pass@1 / accuracy during training.
    #[serde(default)]
    pub eval: EvalSection,
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
    /// Parameter and activation dtype. Default `auto`: bf16 on a GPU, f32 on the CPU.
    pub dtype: TrainDtype,
}

/// `train.dtype`: the model's parameters and activations. With bf16 the optimizer keeps f32
/// master weights and moments, gradients are accumulated and all-reduced in f32, and norms,
/// softmax and the loss compute in f32 (mixed precision as PyTorch AMP with bf16 weights).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainDtype {
    /// bf16 on a GPU, f32 on the CPU (where bf16 takes the slower composed kernels).
    #[default]
    Auto,
    /// float32 everywhere.
    F32,
    /// bfloat16 parameters and activations.
    Bf16,
}

/// Parses a command-line value the way the config file spells it (the enum's serde names),
/// e.g. `--dtype bf16` or `--device cuda`.
fn from_config_name<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, String> {
    use serde::de::value::{Error, StrDeserializer};
    T::deserialize(StrDeserializer::<Error>::new(s)).map_err(|e| format!("{what}: {e}"))
}

impl std::str::FromStr for TrainDtype {
    type Err = String;
    /// `auto`, `f32` or `bf16` (as in the config file), for command-line flags.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        from_config_name("dtype", s)
    }
}

impl TrainDtype {
    /// The candle dtype on a CPU (`gpu = false`) or GPU device.
    pub fn resolve(self, gpu: bool) -> candle_core::DType {
        match self {
            TrainDtype::F32 => candle_core::DType::F32,
            TrainDtype::Bf16 => candle_core::DType::BF16,
            TrainDtype::Auto if gpu => candle_core::DType::BF16,
            TrainDtype::Auto => candle_core::DType::F32,
        }
    }

    /// The name state.json records (`"f32"` / `"bf16"`).
    pub fn name(dtype: candle_core::DType) -> &'static str {
        match dtype {
            candle_core::DType::BF16 => "bf16",
            candle_core::DType::F16 => "f16",
            candle_core::DType::F64 => "f64",
            _ => "f32",
        }
    }
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
            dtype: TrainDtype::Auto,
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
    /// `auto` (under a launcher: NCCL when the ranks train on GPUs, one GPU each, and the
    /// binary has NCCL, else MPI; alone: local), `local`, `mpi` or `nccl`. Default auto.
    #[serde(with = "backend_choice")]
    pub backend: BackendChoice,
    /// Seconds one collective may take before the job aborts (0: never). Default 600.
    pub collective_timeout_s: u64,
    /// `auto` (a GPU when the binary is built with CUDA and one is visible, else the CPU),
    /// `cpu` or `cuda`. Default auto.
    pub device: DeviceChoice,
    /// Test hook: make task `task`'s loss NaN at step `step` (checks the clean stop).
    pub inject_nan: Option<InjectNan>,
    /// Test hook: abort the process in the middle of writing the checkpoint of this step.
    pub crash_in_checkpoint: Option<u64>,
}

/// `runtime.device`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A visible GPU in a CUDA build, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// GPU `local_rank % visible GPUs` (a CUDA build).
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    /// `auto`, `cpu` or `cuda` (as in the config file), for command-line flags.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        from_config_name("device", s)
    }
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
            device: DeviceChoice::Auto,
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
mod tests;
