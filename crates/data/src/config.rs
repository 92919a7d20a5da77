//! Plain serde settings for the data pipeline, meant to be embedded in the trainer's config.
//!
//! Every struct rejects unknown fields; every field has a documented default, so an empty
//! table is a valid config apart from `tasks`.
//!
//! ```
//! use data::config::{DataConfig, BatchMode, Mixing};
//! let cfg: DataConfig = serde_json::from_str(r#"{
//!     "tasks": [{"name": "math", "paths": ["data/tasks/math_gsm8k.jsonl.gz"]}],
//!     "batch_mode": "pack",
//!     "mixing": {"kind": "temperature", "t": 2.0}
//! }"#).unwrap();
//! assert_eq!(cfg.max_seq_len, 1024);
//! assert_eq!(cfg.max_line_bytes, 16 * 1024 * 1024);
//! assert_eq!(cfg.batch_mode, BatchMode::Pack);
//! assert_eq!(cfg.mixing, Mixing::Temperature { t: 2.0 });
//! assert!(serde_json::from_str::<DataConfig>(r#"{"tasks": [], "typo": 1}"#).is_err());
//! ```

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One task: a name and its files or directories (searched recursively for `.jsonl` and
/// `.jsonl.gz`). Task ids are positions in [`DataConfig::tasks`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Task name, used in logs, metrics and the stats report.
    pub name: String,
    /// Files or directories.
    pub paths: Vec<PathBuf>,
}

/// How samples become rows of a micro-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BatchMode {
    /// One sample per row, padded to the longest sample in the micro-batch.
    #[default]
    Padding,
    /// Whole samples packed into rows of `max_seq_len` positions; position ids restart and
    /// attention stays inside each sample.
    Pack,
}

/// How training draws from the tasks. Per epoch the sampler draws `N = Σ n_i` samples
/// (n_i = train samples of task i), `round(N · p_i)` of them from task i.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Mixing {
    /// p_i ∝ n_i: every sample once per epoch (MFTCoder's default).
    #[default]
    Proportional,
    /// p_i = 1 / number of tasks.
    Uniform,
    /// p_i ∝ n_i^(1/t); `t = 1` is proportional, `t → ∞` uniform.
    Temperature {
        /// The temperature, > 0.
        t: f64,
    },
}

/// What to do with samples longer than `max_seq_len` positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overlong {
    /// Keep the first `max_seq_len + 1` tokens (a sample that then has no completion token
    /// left is dropped and counted as dropped).
    #[default]
    Truncate,
    /// Drop the sample.
    Drop,
}

/// What to do with a malformed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnBadLine {
    /// Stop with an error naming file, line and field.
    #[default]
    Error,
    /// Skip the line and count it per task and reason.
    Skip,
}

/// Named role-marker sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TemplatePreset {
    /// SmolLM2 / Qwen: `<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n...<|im_end|>`.
    #[default]
    Chatml,
    /// MFTCoder: `<s>human\n...\n<s>bot\n...` + EOS.
    Mftcoder,
}

/// Prompt template: a preset, each marker overridable. Loss is on assistant content + `eos`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateConfig {
    /// The preset that supplies every marker not overridden below. Default `chatml`.
    pub preset: TemplatePreset,
    /// Text before a system message.
    pub system_prefix: Option<String>,
    /// Text after a system message.
    pub system_suffix: Option<String>,
    /// Text before a user (human) turn.
    pub user_prefix: Option<String>,
    /// Text after a user turn.
    pub user_suffix: Option<String>,
    /// Text before an assistant turn (in the prompt: no loss).
    pub assistant_prefix: Option<String>,
    /// End-of-turn token after each assistant turn (in the loss); must be one token.
    /// chatml: `<|im_end|>`; mftcoder: `<|endoftext|>` (SmolLM2's EOS).
    pub eos: Option<String>,
    /// Text after `eos` (no loss). chatml: `\n`; mftcoder: none.
    pub assistant_suffix: Option<String>,
    /// System message used when a sample has none. Default: none.
    pub default_system: Option<String>,
}

/// Settings of the data pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The tasks, in task-id order.
    pub tasks: Vec<TaskSpec>,
    /// Positions per row (the model's sequence length). A sample of L tokens needs L - 1
    /// positions (inputs are tokens[..L-1], labels tokens[1..]). Default 1024.
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// Samples longer than `max_seq_len`: `truncate` (default) or `drop`.
    #[serde(default)]
    pub overlong: Overlong,
    /// `padding` (default) or `pack`.
    #[serde(default)]
    pub batch_mode: BatchMode,
    /// Task mixing for training. Default proportional.
    #[serde(default)]
    pub mixing: Mixing,
    /// Fraction of train samples carved out as validation for a task without validation
    /// samples. Default 0.05 (at least one sample).
    #[serde(default = "default_valid_fraction")]
    pub valid_fraction: f64,
    /// Malformed lines: `error` (default) or `skip`.
    #[serde(default)]
    pub on_bad_line: OnBadLine,
    /// Longest line of a data file, in bytes (after gzip decompression, without its `\n`).
    /// At most this many bytes of one line are held in memory; a longer line is an error
    /// naming file and line, or under `on_bad_line = "skip"` skipped and counted as
    /// `too_long`. Default 16 MiB (16 777 216); must be at least 1.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Prompt template. Default chatml.
    #[serde(default)]
    pub template: TemplateConfig,
    /// Samples per task in one CoBa probe, summed over all ranks. Default 16.
    #[serde(default = "default_probe_samples")]
    pub probe_samples_per_task: usize,
    /// Seed of the validation carve-out, the shuffles and the mixing. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Directory of the tokenization cache; `None` (default) disables caching.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

fn default_max_seq_len() -> usize {
    1024
}
fn default_max_line_bytes() -> usize {
    16 << 20
}
fn default_valid_fraction() -> f64 {
    0.05
}
fn default_probe_samples() -> usize {
    16
}

impl DataConfig {
    /// A config with the given tasks and every other field at its default.
    pub fn with_tasks(tasks: Vec<TaskSpec>) -> Self {
        Self {
            tasks,
            max_seq_len: default_max_seq_len(),
            overlong: Overlong::default(),
            batch_mode: BatchMode::default(),
            mixing: Mixing::default(),
            valid_fraction: default_valid_fraction(),
            on_bad_line: OnBadLine::default(),
            max_line_bytes: default_max_line_bytes(),
            template: TemplateConfig::default(),
            probe_samples_per_task: default_probe_samples(),
            seed: 0,
            cache_dir: None,
        }
    }

    /// Tasks from command-line `NAME=PATH` arguments, in first-appearance order; a name given
    /// several times collects several paths. Every other field at its default.
    ///
    /// ```
    /// use data::config::DataConfig;
    /// let c = DataConfig::from_task_args(&["a=x.jsonl", "b=dir", "a=y.jsonl.gz"]).unwrap();
    /// assert_eq!(c.tasks.len(), 2);
    /// assert_eq!(c.tasks[0].paths.len(), 2);
    /// assert!(DataConfig::from_task_args(&["no_equals_sign"]).is_err());
    /// ```
    pub fn from_task_args<S: AsRef<str>>(args: &[S]) -> crate::Result<Self> {
        let mut tasks: Vec<TaskSpec> = Vec::new();
        for arg in args {
            let arg = arg.as_ref();
            let Some((name, path)) = arg
                .split_once('=')
                .filter(|(n, p)| !n.is_empty() && !p.is_empty())
            else {
                return Err(crate::DataError::Config {
                    field: "task",
                    message: format!("expected NAME=PATH, got {arg:?}"),
                });
            };
            match tasks.iter_mut().find(|t| t.name == name) {
                Some(t) => t.paths.push(path.into()),
                None => tasks.push(TaskSpec {
                    name: name.to_string(),
                    paths: vec![path.into()],
                }),
            }
        }
        Ok(Self::with_tasks(tasks))
    }

    /// Checks ranges and consistency (no IO).
    pub fn validate(&self) -> crate::Result<()> {
        use crate::DataError::Config;
        if self.tasks.is_empty() {
            return Err(Config {
                field: "tasks",
                message: "at least one task is required".into(),
            });
        }
        let mut names: Vec<&str> = self.tasks.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Config {
                field: "tasks",
                message: format!("task name `{}` appears twice", w[0]),
            });
        }
        if let Some(t) = self.tasks.iter().find(|t| t.paths.is_empty()) {
            return Err(Config {
                field: "tasks",
                message: format!("task `{}` has no paths", t.name),
            });
        }
        if self.max_seq_len < 2 {
            return Err(Config {
                field: "max_seq_len",
                message: "must be at least 2".into(),
            });
        }
        if self.max_line_bytes == 0 {
            return Err(Config {
                field: "max_line_bytes",
                message: "must be at least 1".into(),
            });
        }
        if !(self.valid_fraction > 0.0 && self.valid_fraction < 1.0) {
            return Err(Config {
                field: "valid_fraction",
                message: format!("must be in (0, 1), got {}", self.valid_fraction),
            });
        }
        if let Mixing::Temperature { t } = self.mixing {
            if !(t.is_finite() && t > 0.0) {
                return Err(Config {
                    field: "mixing",
                    message: format!("temperature must be finite and > 0, got {t}"),
                });
            }
        }
        if self.probe_samples_per_task == 0 {
            return Err(Config {
                field: "probe_samples_per_task",
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}
