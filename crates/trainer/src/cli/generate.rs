//! `coba-dist generate`: one completion of a prompt, rendered as a one-turn chat with the
//! template's markers (as in training) or, with `--raw`, as plain text; prints the decoded
//! completion on stdout.

use super::model_path::{self, bad_input};
use super::ExitError;
use ::data::config::{TemplateConfig, TemplatePreset};
use ::data::template::Template;
use ::data::tokenize::Encoder;
use anyhow::{anyhow, Context};
use clap::Args;
use model::{CausalLm, Sampling};
use std::io::Write;
use std::path::PathBuf;
use tokenizers::Tokenizer;

/// Generate a completion for one prompt.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model: a Hugging Face directory (config.json + safetensors), a .gguf file, a LoRA
    /// adapter directory (PEFT format, e.g. a LoRA run's best/; the base from its
    /// adapter_config.json or --base), or a training checkpoint directory.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// With a LoRA adapter directory as the model: its base (default: the adapter config's
    /// base_model_name_or_path).
    #[arg(long, value_name = "PATH")]
    base: Option<PathBuf>,
    /// tokenizer.json; default: `tokenizer.json` beside the model (as `best/` has it).
    #[arg(long, value_name = "T")]
    tokenizer: Option<PathBuf>,
    /// The user's message (with --raw: the text to continue).
    #[arg(long, value_name = "TEXT")]
    prompt: String,
    /// Prompt template preset: chatml or mftcoder. Default: the template the model was
    /// trained with (`template.json` beside it, as `best/` has it), else chatml.
    #[arg(long, value_parser = ["chatml", "mftcoder"])]
    template: Option<String>,
    /// System message (rendered with the template's system markers).
    #[arg(long, value_name = "TEXT", conflicts_with = "raw")]
    system: Option<String>,
    /// Most tokens to generate (stops earlier at an end-of-sequence token).
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy (most likely token).
    #[arg(
        long,
        value_name = "X",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    temperature: f64,
    /// Seed of the sampler (with --temperature > 0).
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Tokenize the prompt as is, without the template's markers.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    device: super::model_path::DeviceArgs,
}

/// Generates and prints the completion (special tokens removed, then a newline). Generation
/// stops after `--max-new-tokens` tokens or at the template's EOS (`<|im_end|>` for chatml,
/// `<|endoftext|>` for mftcoder) or the tokenizer's EOS (see [`tokenizer_eos`]).
///
/// # Errors
/// Exit code 2 for bad input (tokenizer, model path or checkpoint, an empty prompt, a negative
/// or non-finite temperature, prompt ids outside the model's vocabulary); 1 for a model
/// failure or a failed write.
pub fn run(args: &GenerateArgs) -> Result<(), ExitError> {
    let tokenizer_path =
        model_path::tokenizer_for(&args.model, args.tokenizer.as_deref()).map_err(bad_input)?;
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        return Err(bad_input(anyhow!(
            "--temperature must be a finite number >= 0, got {}",
            args.temperature
        )));
    }
    let template_cfg =
        model_path::template_for(&args.model, args.template.as_deref()).map_err(bad_input)?;
    let (tokenizer, prompt, template_eos) = if args.raw {
        let tok = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| bad_input(anyhow!("tokenizer {}: {e}", tokenizer_path.display())))?;
        let ids = tok
            .encode_fast(args.prompt.as_str(), false)
            .map_err(|e| bad_input(anyhow!("tokenizing the prompt: {e}")))?
            .get_ids()
            .to_vec();
        let eos = tok.token_to_id(&Template::from_config(&template_cfg).eos);
        (tok, ids, eos)
    } else {
        let enc = Encoder::from_file(&tokenizer_path, &template_cfg).map_err(bad_input)?;
        let ids = enc.chat_prompt(&args.prompt, args.system.as_deref());
        (enc.tokenizer().clone(), ids, Some(enc.eos_id()))
    };
    if prompt.is_empty() {
        return Err(bad_input(anyhow!("the prompt is empty")));
    }
    let mut stop: Vec<u32> = template_eos.into_iter().collect();
    stop.extend(crate::functional::generate::tokenizer_eos(
        &tokenizer,
        &tokenizer_path,
    ));
    stop.dedup();

    let (device, _, dtype) = args.device.select(0)?;
    let model = model_path::load(&args.model, args.base.as_deref(), dtype, &device)?;
    let vocab = model.vocab_size();
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(bad_input(anyhow!(
            "tokenizer {} produces token id {id} but model {} has a vocabulary of {vocab}",
            tokenizer_path.display(),
            args.model.display()
        )));
    }
    let sampling = if args.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Temperature {
            temperature: args.temperature,
            seed: args.seed,
        }
    };
    let mut out = model
        .generate(&prompt, args.max_new_tokens, &stop, sampling)
        .context("generating")
        .map_err(|error| ExitError { code: 1, error })?;
    let stopped_at = out.last().copied().filter(|t| stop.contains(t));
    if stopped_at.is_some() {
        out.pop();
    }
    if out.is_empty() {
        // An empty line alone looked like a hang-up or a crash: say what happened.
        let why = match stopped_at {
            Some(id) => format!(
                "its first token was the end-of-sequence token {:?}",
                tokenizer.id_to_token(id).unwrap_or_else(|| id.to_string())
            ),
            None => "--max-new-tokens is 0".to_string(),
        };
        let advice = if stopped_at.is_some() {
            "; try another prompt, --temperature > 0, or --raw"
        } else {
            ""
        };
        tracing::warn!(
            "the model generated 0 tokens: {why} (template {}{advice})",
            template_name(&template_cfg)
        );
    }
    let mut text = tokenizer.decode(&out, true).map_err(|e| ExitError {
        code: 1,
        error: anyhow!("decoding the completion: {e}"),
    })?;
    text.push('\n');
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
        .map_err(|error| ExitError { code: 1, error })
}

/// The preset name of a template, `custom` when any marker is overridden.
fn template_name(t: &TemplateConfig) -> &'static str {
    let plain = TemplateConfig {
        preset: t.preset,
        ..TemplateConfig::default()
    };
    match (t == &plain, t.preset) {
        (false, _) => "custom",
        (true, TemplatePreset::Chatml) => "chatml",
        (true, TemplatePreset::Mftcoder) => "mftcoder",
    }
}
