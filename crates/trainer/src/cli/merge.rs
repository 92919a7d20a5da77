//! `coba-dist merge --adapter DIR [--base PATH] --out DIR`: LoRA adapters (PEFT directory,
//! e.g. a run's `best/`) merged into their base, written as a full HF model: `W += s B A`
//! computed in f32 (PEFT's `merge_and_unload`), written in f32 or, with `--dtype`, cast to
//! bf16/f16 (a 16-bit base's own size). `tokenizer.json` and `template.json` next to the
//! adapters are copied along.

use super::model_path::bad_input;
use super::ExitError;
use anyhow::Context;
use candle_core::{DType, Device};
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `--out` must be a new or empty directory: writing into the adapter or base directory
/// would replace the files the merge reads (an emptied tokenizer, a base with the adapters
/// applied twice on the next load).
fn check_out(args: &MergeArgs) -> anyhow::Result<()> {
    let nonempty = std::fs::read_dir(&args.out).is_ok_and(|mut d| d.next().is_some());
    if args.out.exists() && (!args.out.is_dir() || nonempty) {
        anyhow::bail!(
            "--out {}: exists and is not an empty directory (it could be the adapter or base \
             directory); give a new directory",
            args.out.display()
        );
    }
    Ok(())
}

/// Options of `merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The adapter directory (`adapter_config.json` + `adapter_model.safetensors`), or a LoRA
    /// run's checkpoint directory (its `adapter/`).
    #[arg(long, value_name = "DIR")]
    adapter: PathBuf,
    /// The base model (default: the adapter config's `base_model_name_or_path`).
    #[arg(long, value_name = "PATH")]
    base: Option<PathBuf>,
    /// Where the merged HF model goes: a new or empty directory.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The dtype of the written weights (the merge itself is computed in f32).
    #[arg(long, value_enum, ignore_case = true, default_value_t = MergeDtype::F32)]
    dtype: MergeDtype,
}

/// `merge --dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MergeDtype {
    /// float32.
    F32,
    /// bfloat16.
    Bf16,
    /// float16.
    F16,
}

impl MergeDtype {
    fn dtype(self) -> DType {
        match self {
            MergeDtype::F32 => DType::F32,
            MergeDtype::Bf16 => DType::BF16,
            MergeDtype::F16 => DType::F16,
        }
    }
}

/// Merges and writes.
pub fn run(args: &MergeArgs) -> Result<(), ExitError> {
    check_out(args).map_err(bad_input)?;
    // A training checkpoint holds its adapters in adapter/.
    let adapter = super::model_path::resolve(&args.adapter).map_err(bad_input)?;
    let model = model::checkpoint::load_with_adapter(
        args.base.as_deref(),
        &adapter,
        DType::F32,
        &Device::Cpu,
    )
    .with_context(|| format!("--adapter {}", args.adapter.display()))
    .map_err(bad_input)?;
    let merged = model.merged().map_err(|e| ExitError {
        code: 1,
        error: e.into(),
    })?;
    let io = |e: anyhow::Error| ExitError { code: 1, error: e };
    let dtype = args.dtype.dtype();
    let tensors = merged
        .merged_tensors()
        .and_then(|t| {
            t.into_iter()
                .map(|(n, t)| Ok((n, t.to_dtype(dtype)?)))
                .collect::<Result<BTreeMap<_, _>, model::ModelError>>()
        })
        .map_err(|e| io(e.into()))?;
    let parts = model::checkpoint::HfParts {
        config_json: &merged.config_json(),
        model_type: merged.model_type(),
        dtype,
        tensors: &tensors,
    };
    model::checkpoint::save_hf_parts(&parts, &args.out)
        .with_context(|| format!("--out {}", args.out.display()))
        .map_err(io)?;
    for f in ["tokenizer.json", "template.json"] {
        let src = args.adapter.join(f);
        if src.is_file() {
            std::fs::copy(&src, args.out.join(f))
                .with_context(|| format!("copy {}", src.display()))
                .map_err(io)?;
        }
    }
    eprintln!(
        "coba-dist merge: wrote {} (base + adapters of {})",
        args.out.display(),
        args.adapter.display()
    );
    Ok(())
}
