//! Loading, layering, error wording and the reference file.

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
    for (set, words) in [
        (
            "runtime.backend=tcp",
            ["runtime.backend", "expected auto, local, mpi or nccl"],
        ),
        (
            "model.arch.model_type=gpt2",
            ["model.arch.model_type", "`qwen2`"],
        ),
    ] {
        let e = load(&src(base(), &[], &[set])).unwrap_err().0;
        assert!(words.iter().all(|w| e.contains(w)), "{set}: {e}");
    }
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

#[test]
fn lora_quantize_base_values_and_their_conditions() {
    let e = load(&src(base(), &[], &["lora.quantize_base=\"nf4\""]))
        .unwrap_err()
        .0;
    assert!(
        e.contains("lora.quantize_base") && e.contains("q8_0"),
        "{e}"
    );
    let e = load(&src(base(), &[], &["lora.quantize_base=\"q8_0\""]))
        .unwrap_err()
        .0;
    assert!(
        e.contains("lora.quantize_base") && e.contains("lora.enabled = true"),
        "{e}"
    );
    let lora = ["lora.enabled=true", "lora.quantize_base=\"gguf\""];
    let e = load(&src(
        base(),
        &[],
        &[&lora[..], &["model.path=\".\""]].concat(),
    ))
    .unwrap_err()
    .0;
    assert!(
        e.contains("lora.quantize_base") && e.contains("directory"),
        "{e}"
    );
    let c = load(&src(
        base(),
        &[],
        &[
            "lora.enabled=true",
            "lora.quantize_base=\"Q8_0\"",
            "model.path=\"m.gguf\"",
        ],
    ))
    .unwrap();
    assert_eq!(
        c.lora.base_quant(),
        Ok(BaseQuant::Format(candle_core::quantized::GgmlDType::Q8_0))
    );
    assert_eq!(LoraSection::default().base_quant(), Ok(BaseQuant::None));
}
