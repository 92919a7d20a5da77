//! What a resume may change, checked before any step runs (ARCHITECTURE.md: a resumed run
//! equals the uninterrupted one).
//!
//! - The architecture: never. The checkpoint's `config.json` and the model the configuration
//!   builds must agree on every architecture field; a difference names the field and both
//!   values (it used to train the checkpoint's model and write the other value into
//!   `config.toml`).
//! - The learning-rate schedule: only where the rate of every step stays the same, i.e. a new
//!   `max_steps`/`epochs` under a constant schedule (the resumed run then equals an
//!   uninterrupted run of the new configuration; the caller logs it and rewrites the metrics
//!   header's `total_steps`). Anything else (a cosine decay over another number of steps, a
//!   new peak or warm-up) is refused: to train further, start a new run from the checkpoint's
//!   `model/` as `model.path`.
//! - Weighting settings, probe size, tasks, the global batch, fewer steps than done: never
//!   ([`check_kept`]).

use super::state::TrainState;
use anyhow::{bail, Result};
use model::optim::LrSchedule;
use model::Model;
use serde_json::Value;
use std::path::Path;

/// Keys of `config.json` that do not change the network: the longest position is only
/// informational (RoPE tables cover any position) and follows `data.max_seq_len`; the others
/// are written by the checkpoint writer or HF tooling (`architectures` follows `model_type`,
/// which is compared).
const NOT_ARCHITECTURE: &[&str] = &[
    "max_position_embeddings",
    "torch_dtype",
    "architectures",
    "transformers_version",
    "_name_or_path",
    "use_cache",
];

/// The settings a resume must keep besides architecture and LR schedule: weighting, probe
/// size, tasks, global batch, and no fewer steps than done.
pub struct Kept<'a> {
    /// Task names in config order.
    pub names: &'a [String],
    /// Rows per global step.
    pub global_rows: usize,
    /// The weighting settings.
    pub wcfg: &'a coba::WeighterConfig,
    /// Validation samples per task in one probe.
    pub probe_per_task: usize,
    /// Optimizer steps the config asks for.
    pub total_steps: u64,
}

/// Refuses a resume that changes what [`Kept`] lists.
///
/// # Errors
/// The first difference, with both values.
pub fn check_kept(st: &TrainState, kept: &Kept<'_>, dir: &Path) -> Result<()> {
    let Kept {
        names,
        global_rows,
        wcfg,
        probe_per_task,
        total_steps,
    } = *kept;
    if st.weighting != *wcfg {
        let show = |w: &coba::WeighterConfig| {
            serde_json::to_string(w).unwrap_or_else(|_| format!("{w:?}"))
        };
        bail!(
            "{}: the checkpoint's weighting settings {} differ from the config's {} \
             ([coba] method/variant/warmup_steps/history_length/tau/update_interval must stay \
             the same across a resume; \"auto\" values depend on the global batch)",
            dir.display(),
            show(&st.weighting),
            show(wcfg)
        );
    }
    if st
        .probe_samples_per_task
        .is_some_and(|p| p != probe_per_task)
    {
        bail!(
            "{}: the checkpoint's probe takes {} validation samples per task, the config {} \
             (coba.probe_samples_per_task / data.probe_samples_per_task must stay the same \
             across a resume: the probe losses CoBa fits would change)",
            dir.display(),
            st.probe_samples_per_task.unwrap_or_default(),
            probe_per_task
        );
    }
    if st.next_step > total_steps {
        bail!(
            "{}: the checkpoint has {} steps done, more than the {total_steps} steps the config \
             asks for (max_steps/epochs): a resume cannot undo steps; use the checkpoint of \
             step {total_steps} (--resume DIR) if it was kept, or `best/`",
            dir.display(),
            st.next_step
        );
    }
    if st.tasks != names {
        bail!(
            "{}: the checkpoint's tasks {:?} differ from the config's {:?}",
            dir.display(),
            st.tasks,
            names
        );
    }
    if st.global_rows != global_rows {
        bail!(
            "{}: the checkpoint was written with a global batch of {} rows, the config gives {} \
             (micro_batch_size x grad_accum x world_size): the data order would change. Keep \
             the global batch (e.g. double grad_accum when halving the ranks)",
            dir.display(),
            st.global_rows,
            global_rows
        );
    }
    Ok(())
}

/// Refuses a resume whose schedule gives any step another learning rate.
///
/// # Errors
/// The two schedules, named, and how to train further instead.
pub fn check_schedule(
    st: &TrainState,
    now: &LrSchedule,
    total_steps: u64,
    dir: &Path,
) -> Result<()> {
    let Some(was) = &st.lr_schedule else {
        return Ok(());
    };
    if was != now {
        bail!(
            "{}: the checkpoint's learning-rate schedule ({}{}) differs from the config's ({}, \
             {total_steps} steps): the steps after the resume would get other rates than an \
             uninterrupted run. Keep [train] lr, min_lr, lr_warmup_steps, lr_schedule and, \
             with a cosine schedule, max_steps/epochs; to train further, start a new run with \
             model.path = \"{}\" in another output_dir",
            dir.display(),
            was.describe(),
            st.total_steps
                .map_or(String::new(), |n| format!(", {n} steps")),
            now.describe(),
            dir.join("model").display()
        );
    }
    Ok(())
}

/// Refuses a resume whose configured model differs from the checkpoint's.
///
/// # Errors
/// Every differing field with the checkpoint's and the config's value.
pub fn check_architecture(configured: &Model, saved: &Model, dir: &Path) -> Result<()> {
    let diffs = architecture_diff(&configured.config_json(), &saved.config_json())?;
    if !diffs.is_empty() {
        bail!(
            "{}: the checkpoint's model differs from the one the config describes: {} \
             (the architecture cannot change across a resume: restore [model] as it was, or \
             start a new run in another output_dir)",
            dir.display(),
            diffs.join(", ")
        );
    }
    Ok(())
}

/// `field: checkpoint X, config Y` for every architecture field of two `config.json` texts
/// that differs (absent fields shown as `absent`), in key order.
///
/// # Errors
/// A text that is not a JSON object.
pub fn architecture_diff(configured: &str, saved: &str) -> Result<Vec<String>> {
    let parse = |t: &str| -> Result<serde_json::Map<String, Value>> {
        match serde_json::from_str(t)? {
            Value::Object(m) => Ok(normalise(m)),
            _ => bail!("config.json is not an object"),
        }
    };
    let (now, was) = (parse(configured)?, parse(saved)?);
    let mut keys: Vec<&String> = now.keys().chain(was.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&Value>| v.map_or("absent".to_string(), Value::to_string);
    Ok(keys
        .into_iter()
        .filter(|k| !NOT_ARCHITECTURE.contains(&k.as_str()))
        .filter(|k| now.get(*k) != was.get(*k))
        .map(|k| {
            format!(
                "{k}: checkpoint {}, config {}",
                show(was.get(k)),
                show(now.get(k))
            )
        })
        .collect())
}

/// Fills the fields HF leaves out when they take their default, so that an explicit default
/// and an absent field compare equal.
fn normalise(mut m: serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    let int = |m: &serde_json::Map<String, Value>, k: &str| m.get(k).and_then(Value::as_u64);
    if let Some(heads) = int(&m, "num_attention_heads") {
        m.entry("num_key_value_heads").or_insert(heads.into());
        if let Some(d) = int(&m, "hidden_size").filter(|_| heads > 0) {
            m.entry("head_dim").or_insert((d / heads).into());
        }
    }
    m
}

/// A checkpoint of a LoRA run (its `adapter/`) resumes only with `lora.enabled`.
///
/// # Errors
/// The checkpoint holds adapters.
pub fn check_not_lora(dir: &Path) -> Result<()> {
    if dir.join("adapter").is_dir() {
        bail!(
            "{}: the checkpoint holds LoRA adapters (adapter/), the configuration trains every \
             weight: set lora.enabled = true with the run's [lora] settings",
            dir.display()
        );
    }
    Ok(())
}

/// The adapters were trained on the base `model.path` names now (both absolute paths):
/// adapters on another base are another model, and `l_i(0)` was measured on the old one.
///
/// # Errors
/// Names both bases.
pub fn check_adapter_base(saved: Option<&str>, now: Option<&str>, dir: &Path) -> Result<()> {
    match (saved, now) {
        (Some(a), Some(b)) if a != b => bail!(
            "{}: the adapters were trained on the base {a}, the configuration's model.path is \
             {b}: resume with the run's base (adapters on another base are another model)",
            dir.display()
        ),
        _ => Ok(()),
    }
}

/// The model dtype (`train.dtype` resolved) must be the run's: a bf16 run continues from its
/// f32 master weights, an f32 run has none. A checkpoint without the record was f32.
///
/// # Errors
/// Names both dtypes.
pub fn check_dtype(saved: Option<&str>, now: &str, dir: &Path) -> Result<()> {
    let saved = saved.unwrap_or("f32");
    if saved != now {
        bail!(
            "{}: the run trained in {saved}, the configuration gives {now} (train.dtype): \
             resume with train.dtype = \"{saved}\" or \"auto\" (which follows the checkpoint)",
            dir.display()
        );
    }
    Ok(())
}

/// A LoRA run's base quantization (`lora.quantize_base`) must be the run's: adapters trained
/// against one rounding of the base continue on another only by mistake. A checkpoint without
/// the record (older versions) had a dense base.
///
/// # Errors
/// Names both values.
pub fn check_base_quant(saved: Option<&str>, now: &str, dir: &Path) -> Result<()> {
    let saved = saved.unwrap_or("none");
    if saved != now {
        bail!(
            "{}: the adapters were trained with lora.quantize_base = \"{saved}\", the \
             configuration says \"{now}\": resume with the run's setting",
            dir.display()
        );
    }
    Ok(())
}

/// The adapters' settings must be the run's: another rank, alpha or module set is another
/// model.
///
/// # Errors
/// Names each differing setting with both values.
pub fn check_adapter(
    saved: &model::lora::LoraSettings,
    now: &model::lora::LoraSettings,
    dir: &Path,
) -> Result<()> {
    if saved == now {
        return Ok(());
    }
    let show = |l: &model::lora::LoraSettings| {
        format!(
            "r {} alpha {} dropout {} target_modules {:?} use_rslora {}",
            l.r, l.alpha, l.dropout, l.target_modules, l.use_rslora
        )
    };
    bail!(
        "{}: the checkpoint's adapters were trained with {}, the configuration says {}: \
         resume with the run's [lora] settings",
        dir.display(),
        show(saved),
        show(now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_settings_diff_names_the_dropout_and_old_records_mean_f32_dense() {
        let l = |dropout: f64| model::lora::LoraSettings {
            r: 4,
            alpha: 8.0,
            dropout,
            target_modules: vec!["q_proj".into()],
            use_rslora: false,
        };
        let e = check_adapter(&l(0.0), &l(0.5), Path::new("d"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dropout 0 ") && e.contains("dropout 0.5 "),
            "{e}"
        );
        assert!(check_adapter(&l(0.1), &l(0.1), Path::new("d")).is_ok());
        // A checkpoint without the records was a dense f32 run.
        assert!(check_dtype(None, "f32", Path::new("d")).is_ok());
        let e = check_dtype(None, "bf16", Path::new("d"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("trained in f32") && e.contains("bf16"), "{e}");
        assert!(check_base_quant(None, "none", Path::new("d")).is_ok());
        let e = check_base_quant(Some("q8_0"), "gguf", Path::new("d"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"q8_0\"") && e.contains("\"gguf\""), "{e}");
    }

    #[test]
    fn resume_architecture_diff_names_each_field_with_both_values() {
        let saved = r#"{"hidden_size": 64, "num_attention_heads": 4, "vocab_size": 100,
                        "max_position_embeddings": 512}"#;
        let configured = r#"{"hidden_size": 128, "num_attention_heads": 4, "vocab_size": 100,
                             "max_position_embeddings": 1024, "tie_word_embeddings": true}"#;
        assert_eq!(
            architecture_diff(configured, saved).unwrap(),
            vec![
                // head_dim follows hidden_size / heads when absent.
                "head_dim: checkpoint 16, config 32".to_string(),
                "hidden_size: checkpoint 64, config 128".to_string(),
                "tie_word_embeddings: checkpoint absent, config true".to_string(),
            ]
        );
    }

    #[test]
    fn resume_architecture_explicit_defaults_equal_absent_ones() {
        let saved = r#"{"hidden_size": 64, "num_attention_heads": 4}"#;
        let configured = r#"{"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16}"#;
        assert!(architecture_diff(configured, saved).unwrap().is_empty());
    }
}
