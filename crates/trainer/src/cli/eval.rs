//! `coba-dist eval`: per task, the mean negative log-likelihood (nats per completion token),
//! the perplexity and the number of completion tokens of a model on one split of the tasks'
//! data, as a table or, with `--json`, `{"tasks": [{"name", "nll", "ppl", "tokens"}]}`.
//!
//! Under a launcher (`mpirun -n N coba-dist eval ...`) every rank loads the data and the model,
//! evaluates its contiguous shard of each task's split (padded so that all ranks run the same
//! number of micro-batches, as the trainer's validation does) and the per-task
//! `(nll_sum, tokens)` are all-reduced in f64; rank 0 prints. The result equals the
//! one-process result up to float rounding.
//!
//! With `--metrics pass@1,accuracy` it judges what the model generates instead
//! ([`super::eval_exec`]).

use super::model_path::{self, bad_input};
use super::ExitError;
use ::data::batch::{Batch, SampleRef};
use ::data::config::DataConfig;
use ::data::dataset::Dataset;
use ::data::format::Split;
use ::data::tokenize::Encoder;
use anyhow::{anyhow, Context};
use clap::Args;
use collectives::{exit_on_error, Communicator, InitOptions};
use model::{CausalLm, LossOptions, Model, TaskLoss, TokenBatch};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

/// Evaluate a model on the tasks' data.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A training configuration: its tokenizer, tasks and `[data]` settings (template,
    /// max_seq_len, carve-out seed), and by default the model `output_dir/best`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["tokenizer", "tasks"])]
    pub(super) config: Option<PathBuf>,
    /// Model: a Hugging Face directory (config.json + safetensors), a .gguf file, a LoRA
    /// adapter directory (PEFT format, e.g. a LoRA run's best/; the base from its
    /// adapter_config.json or --base), or a training checkpoint directory.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["config", "completions"])]
    pub(super) model: Option<PathBuf>,
    /// With a LoRA adapter directory as the model: its base (default: the adapter config's
    /// base_model_name_or_path).
    #[arg(long, value_name = "PATH")]
    pub(super) base: Option<PathBuf>,
    /// Override one key of --config, e.g. `--set data.max_seq_len=512` (repeatable; as for
    /// training).
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "config")]
    pub(super) set: Vec<String>,
    /// tokenizer.json (e.g. data/tokenizers/smollm2/tokenizer.json); default: `tokenizer.json`
    /// beside the model (as `best/` has it).
    #[arg(long, value_name = "T")]
    pub(super) tokenizer: Option<PathBuf>,
    /// A task: NAME=PATH (a .jsonl/.jsonl.gz file or a directory); repeat for more tasks, or
    /// repeat a NAME to give it several paths.
    #[arg(
        long = "task",
        value_name = "NAME=PATH",
        required_unless_present_any = ["config", "completions"]
    )]
    pub(super) tasks: Vec<String>,
    /// Split to evaluate (valid includes the samples carved out of train when the data has no
    /// valid split; train excludes them).
    #[arg(long, default_value = "valid", value_parser = ["valid", "test", "train"])]
    split: String,
    /// Samples per forward pass on each rank.
    #[arg(long, default_value_t = 8, value_parser = positive)]
    micro_batch: usize,
    /// Positions per sample; longer samples are truncated (as in training).
    #[arg(long, default_value_t = 1024, value_parser = positive)]
    max_seq_len: usize,
    /// Prompt template preset: chatml or mftcoder. Default: the template the model was
    /// trained with (`template.json` beside it, as `best/` has it), else chatml.
    #[arg(long, value_parser = ["chatml", "mftcoder"])]
    pub(super) template: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(super) json: bool,
    #[command(flatten)]
    pub(super) device: model_path::DeviceArgs,
    /// Functional metrics instead of NLL: `pass@1` (run each generated program against its
    /// unit tests: HumanEval-X, MBPP), `accuracy` (GSM8K final answer), or both
    /// (`pass@1,accuracy`), on the test split's problems of the eval bundle (--eval-data).
    #[arg(long, value_name = "LIST", value_parser = super::eval_exec::parse_metrics)]
    metrics: Option<super::eval_exec::MetricList>,
    /// The eval bundle: `<task>_test.jsonl[.gz]` with each problem's tests or answer.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "data/eval",
        requires = "metrics"
    )]
    pub(super) eval_data: PathBuf,
    /// Judge these completions instead of generating: JSONL `{"id", "completion"}` lines
    /// (an earlier run's programs.jsonl works); only the problems listed are judged.
    #[arg(long, value_name = "FILE", requires = "metrics")]
    pub(super) completions: Option<PathBuf>,
    /// Where results.json and programs.jsonl go (default: `<output_dir>/eval` with --config,
    /// else ./eval-results).
    #[arg(long, value_name = "DIR", requires = "metrics")]
    pub(super) out: Option<PathBuf>,
    /// At most N problems per task, evenly spaced (a quick look; the table says how many).
    #[arg(
        long,
        value_name = "N",
        value_parser = positive,
        requires = "metrics",
        conflicts_with = "completions"
    )]
    pub(super) limit: Option<usize>,
    /// Token limit per generated completion.
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = positive)]
    pub(super) max_new_tokens: usize,
    /// Sequences decoded together on each rank (continuous batching on one KV cache: a
    /// finished one is replaced by the next prompt).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = positive)]
    pub(super) gen_batch: usize,
    /// Programs run at once (default: the number of cores).
    #[arg(long, value_name = "N", value_parser = positive, requires = "metrics")]
    pub(super) jobs: Option<usize>,
    /// Seconds each program may run (the eval bundle's 10; compiles get 60).
    #[arg(long, value_name = "S", default_value_t = 10, value_parser = positive_u64)]
    pub(super) timeout: u64,
    /// The Python interpreter programs run with (on the sandbox's system PATH; needs numpy
    /// for HumanEval-X Python).
    #[arg(long, value_name = "CMD", requires = "metrics")]
    pub(super) python: Option<String>,
    /// A node_modules directory for JavaScript programs (NODE_PATH; JavaScript/162 needs js-md5).
    #[arg(long, value_name = "DIR", requires = "metrics")]
    pub(super) node_path: Option<PathBuf>,
    /// Go: a module directory with CodeGeeX's go.mod and vendor/ (testify); Go is skipped
    /// without it.
    #[arg(long, value_name = "DIR", requires = "metrics")]
    pub(super) go_module: Option<PathBuf>,
}

fn positive_u64(s: &str) -> Result<u64, String> {
    positive(s).map(|n| n as u64)
}

/// One task's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct TaskResult {
    /// Task name.
    name: String,
    /// Mean NLL in nats per completion token (token-weighted over the split).
    nll: f64,
    /// Perplexity, `exp(nll)`.
    ppl: f64,
    /// Completion (scored) tokens.
    tokens: u64,
}

impl TaskResult {
    fn new(name: &str, loss: &TaskLoss) -> Self {
        let nll = loss.mean();
        Self {
            name: name.to_string(),
            nll,
            ppl: nll.exp(),
            tokens: loss.tokens,
        }
    }
}

/// The `--json` document.
#[derive(Debug, Serialize)]
struct Report<'a> {
    tasks: &'a [TaskResult],
}

/// Parses a whole number >= 1.
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a whole number >= 1, got `{s}`")),
    }
}

fn split_of(name: &str) -> Split {
    match name {
        "train" => Split::Train,
        "test" => Split::Test,
        _ => Split::Valid,
    }
}

/// Runs the evaluation on this rank (every rank of a launch must run it); rank 0 prints.
///
/// # Errors
/// Exit code 2 for bad input (task arguments, data files, tokenizer, model path or checkpoint,
/// an empty split, token ids outside the model's vocabulary), naming the file or task; 1 for a
/// failed collective setup, a model failure or a failed write. Under a multi-rank launch a
/// failure after loading aborts the whole job (exit 1).
pub fn run(args: &EvalArgs) -> Result<(), ExitError> {
    if let Some(metrics) = &args.metrics {
        return super::eval_exec::run(args, &metrics.0);
    }
    let split = split_of(&args.split);
    let (cfg, tokenizer, model_arg) = match &args.config {
        Some(path) => {
            let train = super::train::load_config(Some(path), &args.set)?;
            let model = args
                .model
                .clone()
                .unwrap_or_else(|| train.output_dir.join("best"));
            (train.data_config(), train.model.tokenizer, model)
        }
        None => {
            let mut cfg = DataConfig::from_task_args(&args.tasks).map_err(bad_input)?;
            cfg.max_seq_len = args.max_seq_len;
            let Some(m) = &args.model else {
                return Err(bad_input(anyhow!("give --config F, or --model and --task")));
            };
            cfg.template =
                model_path::template_for(m, args.template.as_deref()).map_err(bad_input)?;
            let t = model_path::tokenizer_for(m, args.tokenizer.as_deref()).map_err(bad_input)?;
            (cfg, t, m.clone())
        }
    };
    cfg.validate().map_err(bad_input)?;
    // Cheap checks first: a wrong model path fails before the data is tokenized.
    model_path::resolve(&model_arg).map_err(bad_input)?;
    let comm = collectives::init(&InitOptions::default()).map_err(|e| ExitError {
        code: 1,
        error: e.into(),
    })?;
    let comm: &dyn Communicator = &*comm;
    let enc = Encoder::from_file(&tokenizer, &cfg.template).map_err(bad_input)?;
    // Only the evaluated split must have samples (the training policy's needs do not apply);
    // an empty one is an error naming the task, the split and what was dropped.
    let ds = ::data::dataset::load_with(&cfg, &enc, ::data::dataset::Needs::Split(split))
        .map_err(bad_input)?;
    let (device, _, dtype) = args.device.select(comm.local_rank())?;
    let model = model_path::load(&model_arg, args.base.as_deref(), dtype, &device)?;
    check_vocab(&ds, split, &model, &tokenizer, &model_arg)?;

    let local = evaluate_rank(&model, &ds, split, comm, args.micro_batch);
    let mut sums = if comm.world_size() > 1 {
        exit_on_error(comm, local)
    } else {
        local.map_err(|error| ExitError { code: 1, error })?
    };
    let reduced = comm.all_reduce_sum_f64(&mut sums);
    if comm.world_size() > 1 {
        exit_on_error(comm, reduced);
    } else {
        reduced.map_err(|e| ExitError {
            code: 1,
            error: anyhow!(e).context("all-reduce of the per-task losses"),
        })?;
    }
    if comm.rank() != 0 {
        return Ok(());
    }
    let losses: Vec<TaskLoss> = (0..ds.num_tasks())
        .map(|t| TaskLoss {
            nll_sum: sums[2 * t],
            tokens: sums[2 * t + 1].round() as u64,
        })
        .collect();
    let results: Vec<TaskResult> = ds
        .tasks
        .iter()
        .zip(&losses)
        .map(|(task, loss)| TaskResult::new(&task.name, loss))
        .collect();
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&Report { tasks: &results })
            .context("serializing the report")
            .map_err(|error| ExitError { code: 1, error })?;
        s.push('\n');
        s
    } else {
        let mut all = TaskLoss::default();
        losses.iter().for_each(|l| all.add(l));
        table(&results, &TaskResult::new("all", &all))
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
        .map_err(|error| ExitError { code: 1, error })
}

/// Every token id of the evaluated samples must be below the model's vocabulary size.
fn check_vocab(
    ds: &Dataset,
    split: Split,
    model: &Model,
    tokenizer: &std::path::Path,
    model_path: &std::path::Path,
) -> Result<(), ExitError> {
    let vocab = model.vocab_size();
    let max = ds
        .tasks
        .iter()
        .flat_map(|t| t.split(split))
        .flat_map(|s| s.tokens.iter().copied())
        .max();
    match max {
        Some(id) if id as usize >= vocab => Err(bad_input(anyhow!(
            "tokenizer {} produces token id {id} but model {} has a vocabulary of {vocab}",
            tokenizer.display(),
            model_path.display()
        ))),
        _ => Ok(()),
    }
}

/// This rank's per-task sums, `[nll_sum_0, tokens_0, nll_sum_1, tokens_1, ...]` (nats,
/// tokens as f64), over its shard of every task's `split`.
fn evaluate_rank(
    model: &Model,
    ds: &Dataset,
    split: Split,
    comm: &dyn Communicator,
    micro_batch: usize,
) -> anyhow::Result<Vec<f64>> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let mut sums = vec![0.0; 2 * ds.num_tasks()];
    for (t, task) in ds.tasks.iter().enumerate() {
        let batches = match split {
            Split::Valid => ::data::valid::valid_batches(ds, t, rank, world, micro_batch),
            other => split_batches(ds, t, other, rank, world, micro_batch),
        };
        let mut total = TaskLoss::default();
        for batch in &batches {
            if batch.loss_tokens() == 0 {
                continue; // only filler rows
            }
            let report = model
                .evaluate(&TokenBatch::from(batch), LossOptions::default())
                .with_context(|| format!("evaluating task `{}`", task.name))?;
            if let Some(l) = report.per_task.get(t) {
                total.add(l);
            }
        }
        sums[2 * t] = total.nll_sum;
        sums[2 * t + 1] = total.tokens as f64;
    }
    Ok(sums)
}

/// [`::data::valid::valid_batches`] for any split: rank `rank`'s padded micro-batches of task
/// `task`'s samples of `split` (contiguous shards, filler rows so that every rank runs
/// [`::data::valid::batches_per_rank`] batches).
fn split_batches(
    ds: &Dataset,
    task: usize,
    split: Split,
    rank: usize,
    world: usize,
    micro_batch: usize,
) -> Vec<Batch> {
    let samples = ds.tasks[task].split(split);
    let per_rank = samples.len().div_ceil(world);
    let start = (rank * per_rank).min(samples.len());
    let end = ((rank + 1) * per_rank).min(samples.len());
    let n_batches = ::data::valid::batches_per_rank(samples.len(), world, micro_batch);
    (0..n_batches)
        .map(|b| {
            let rows: Vec<Vec<_>> = (0..micro_batch)
                .map(|i| {
                    let index = start + b * micro_batch + i;
                    if index < end {
                        let r = SampleRef {
                            task: task as u32,
                            index: index as u32,
                        };
                        vec![(r, &samples[index])]
                    } else {
                        Vec::new()
                    }
                })
                .collect();
            Batch::from_rows(&rows, None)
        })
        .collect()
}

/// The aligned table: one row per task, then `all` (token-weighted over all tasks).
fn table(results: &[TaskResult], all: &TaskResult) -> String {
    let rows: Vec<[String; 4]> = results
        .iter()
        .chain(std::iter::once(all))
        .map(|r| {
            [
                r.name.clone(),
                format!("{:.6}", r.nll),
                format!("{:.4}", r.ppl),
                r.tokens.to_string(),
            ]
        })
        .collect();
    let header = ["task", "nll", "ppl", "tokens"].map(String::from);
    let mut w = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (wi, cell) in w.iter_mut().zip(row) {
            *wi = (*wi).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        out.push_str(&format!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}\n",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        ));
    }
    out
}
