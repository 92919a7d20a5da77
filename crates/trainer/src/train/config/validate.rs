//! Range and consistency checks of a loaded configuration (no IO): each error names its key.

use super::{BaseQuant, ConfigError, TrainConfig};

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
    let quant = cfg.lora.base_quant().map_err(ConfigError)?;
    if quant != BaseQuant::None && !cfg.lora.enabled {
        return err(
            "lora.quantize_base",
            "quantizes the frozen base of LoRA adapters (QLoRA): set lora.enabled = true, or \
             remove it"
                .into(),
        );
    }
    if let (BaseQuant::Gguf, Some(p)) = (quant, &cfg.model.path) {
        if p.is_dir() {
            return err(
                "lora.quantize_base",
                format!(
                    "\"gguf\" keeps a GGUF file's quantization, and model.path {} is a \
                     directory: give a block format (q8_0, q4_0, ...) to quantize it on load",
                    p.display()
                ),
            );
        }
    }
    if cfg.lora.enabled {
        cfg.lora.settings().map_err(ConfigError)?;
        if cfg.model.path.is_none() {
            return err(
                "lora.enabled",
                "LoRA trains adapters for a saved base model: give model.path (a random-init \
                 [model.arch] base is never saved, so its adapters could not be used)"
                    .into(),
            );
        }
    }
    let metrics = cfg.eval.parsed().map_err(ConfigError)?;
    if !metrics.is_empty() && !cfg.eval.data.is_dir() {
        return err(
            "eval.data",
            format!(
                "{} is not a directory (the eval bundle: <task>_test.jsonl[.gz] per task, e.g. \
                 data/eval)",
                cfg.eval.data.display()
            ),
        );
    }
    if !metrics.is_empty()
        && !cfg
            .data
            .tasks
            .iter()
            .any(|t| codeexec::problems::bundle_path(&cfg.eval.data, &t.name).is_some())
    {
        return err(
            "eval.metrics",
            format!(
                "none of the tasks has a file <task>_test.jsonl[.gz] in {} (eval.data): there \
                 is nothing to run; remove [eval] metrics or point eval.data at the bundle",
                cfg.eval.data.display()
            ),
        );
    }
    cfg.data
        .validate()
        .map_err(|e| ConfigError(format!("[data]: {e}")))?;
    Ok(())
}
