//! LoRA through the binary: a full fine-tuning run's `best/` is the base; a LoRA run on it
//! writes PEFT adapter directories (`best/`, `checkpoints/step-N/adapter/`) and resumes;
//! `eval` reads the adapter directory (base from `base_model_name_or_path`), and `merge`
//! writes a full HF model whose evaluation equals the adapters' (1e-5).

mod harness;

use harness::*;
use serde_json::Value;

fn eval_json(model: &str, job: &Job) -> Vec<f64> {
    eval_json_with(model, job, &[])
}

fn eval_json_with(model: &str, job: &Job, extra: &[&str]) -> Vec<f64> {
    let tasks: Vec<String> = ["add", "echo", "words"]
        .iter()
        .map(|t| {
            format!(
                "{t}={}",
                job.dir.path().join(format!("{t}.jsonl")).display()
            )
        })
        .collect();
    let mut args = vec![
        "eval",
        "--model",
        model,
        "--tokenizer",
        tokenizer().to_str().unwrap().to_string().leak(),
        "--max-seq-len",
        "24",
        "--json",
    ];
    for t in &tasks {
        args.extend(["--task", t.as_str()]);
    }
    args.extend(extra);
    let o = coba_dist(&args);
    let text = ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}\n{text}"));
    v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["nll"].as_f64().unwrap())
        .collect()
}

#[test]
fn lora_run_writes_peft_adapters_that_eval_and_merge_read() {
    // The base: 4 steps of full fine-tuning, its best/ (an HF directory).
    let base_job = Job::new("");
    ok(&base_job.run(&["--set", "train.max_steps=4"]));
    let base = base_job.out().join("best");
    assert!(base.join("config.json").is_file());

    let job = Job::new("");
    let set_base = format!("model.path=\"{}\"", base.display());
    let sets = [
        "--set",
        set_base.as_str(),
        "--set",
        "lora.enabled=true",
        "--set",
        "lora.r=4",
        "--set",
        "lora.alpha=8.0",
        "--set",
        "train.lr=0.01",
    ];
    ok(&job.run(&sets));
    let best = job.out().join("best");
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
    ] {
        assert!(best.join(f).is_file(), "best/{f}");
    }
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(best.join("adapter_config.json")).unwrap())
            .unwrap();
    let abs = std::fs::canonicalize(&base).unwrap();
    assert_eq!(cfg["base_model_name_or_path"], abs.display().to_string());
    assert_eq!(
        (cfg["r"].as_u64(), cfg["peft_type"].as_str()),
        (Some(4), Some("LORA"))
    );
    assert!(job
        .checkpoint(6)
        .join("adapter/adapter_config.json")
        .is_file());
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(job.out().join("summary.json")).unwrap())
            .unwrap();
    let initial: Vec<f64> = serde_json::from_value(summary["initial_val_loss"].clone()).unwrap();
    let last: Vec<f64> = serde_json::from_value(summary["final_val_loss"].clone()).unwrap();
    assert!(
        last.iter().zip(&initial).any(|(l, i)| l < i),
        "the adapters learned something: {initial:?} -> {last:?}"
    );

    // eval of the adapter directory == eval of the merged model; both differ from the base.
    let with_adapter = eval_json(best.to_str().unwrap(), &job);
    let merged = job.dir.path().join("merged");
    let o = coba_dist(&[
        "merge",
        "--adapter",
        best.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    ok(&o);
    assert!(merged.join("config.json").is_file() && merged.join("tokenizer.json").is_file());
    peft_merge_check(&best, &base, &merged);
    let merged_nll = eval_json(merged.to_str().unwrap(), &job);
    let base_nll = eval_json(base.to_str().unwrap(), &job);
    for ((a, m), b) in with_adapter.iter().zip(&merged_nll).zip(&base_nll) {
        assert!(
            (a - m).abs() <= 1e-5 * a.abs().max(1.0),
            "{with_adapter:?} vs {merged_nll:?}"
        );
        assert!(
            (a - b).abs() > 1e-4,
            "adapters change the model: {a} vs base {b}"
        );
    }

    // Resume from the checkpoint after step 3 gives the same adapters as the run itself.
    let again = Job::new("");
    ok(&again.run(&[&sets[..], &["--set", "train.max_steps=3"]].concat()));
    ok(&again.run(&[&sets[..], &["--resume", "auto"]].concat()));
    let a = params_of_adapter(&job.checkpoint(6));
    let b = params_of_adapter(&again.checkpoint(6));
    assert_eq!(
        a, b,
        "resumed adapters equal the uninterrupted run's, bit for bit"
    );

    // eval of best/ equals what the run itself measured at its best evaluation
    // (best/summary.json), and a LoRA run on the LoRA best/ (its merged weights as the base)
    // evaluates right: its adapters over the first adapters merged, not the original base.
    let final_val = |j: &Job| -> Vec<f64> {
        let p = j.out().join("best/summary.json");
        let s: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        ["add", "echo", "words"]
            .iter()
            .map(|t| s["val_loss"][t].as_f64().unwrap())
            .collect()
    };
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5);
    assert!(
        close(&with_adapter, &final_val(&job)),
        "{with_adapter:?} vs {:?}",
        final_val(&job)
    );
    let second = Job::new("");
    let set_lora_base = format!("model.path=\"{}\"", best.display());
    let mut sets2 = sets.to_vec();
    sets2[1] = set_lora_base.as_str();
    ok(&second.run(&sets2));
    let second_eval = eval_json(second.out().join("best").to_str().unwrap(), &second);
    assert!(
        close(&second_eval, &final_val(&second)),
        "{second_eval:?} vs {:?}",
        final_val(&second)
    );

    // --base: the second run's adapters over the merged first run (merge's output) equal
    // the adapters over the LoRA directory their config names.
    let second_best = second.out().join("best");
    let over_merged = eval_json_with(
        second_best.to_str().unwrap(),
        &second,
        &["--base", merged.to_str().unwrap()],
    );
    assert!(
        close(&over_merged, &second_eval),
        "{over_merged:?} vs {second_eval:?}"
    );
    let task = format!("add={}", second.dir.path().join("add.jsonl").display());
    let tok = tokenizer().display().to_string();
    let o = coba_dist(&[
        "eval",
        "--model",
        base.to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "--tokenizer",
        &tok,
        "--task",
        &task,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("not a LoRA adapter directory"),
        "{}",
        text(&o)
    );

    // merge takes a LoRA checkpoint directory too (its adapter/), and check shows [lora].
    let from_ckpt = job.dir.path().join("merged-ckpt");
    let ckpt6 = job.checkpoint(6);
    ok(&coba_dist(&[
        "merge",
        "--adapter",
        ckpt6.to_str().unwrap(),
        "--out",
        from_ckpt.to_str().unwrap(),
    ]));
    assert!(from_ckpt.join("model.safetensors").is_file());
    // --dtype bf16: the f32 merge rounded once to bf16, and config.json says so.
    let bf16 = job.dir.path().join("merged-bf16");
    ok(&coba_dist(&[
        "merge",
        "--adapter",
        best.to_str().unwrap(),
        "--out",
        bf16.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]));
    let config = std::fs::read_to_string(bf16.join("config.json")).unwrap();
    assert!(config.contains("\"bfloat16\""), "{config}");
    let load = |d: &std::path::Path| {
        model::checkpoint::load_model(d, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap()
            .merged_tensors()
            .unwrap()
    };
    let (f32_w, bf16_w) = (load(&merged), load(&bf16));
    assert_eq!(f32_w.len(), bf16_w.len());
    for (n, t) in &f32_w {
        let rounded = t
            .to_dtype(candle_core::DType::BF16)
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .unwrap();
        let got = bf16_w[n].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(rounded, got, "{n}");
    }
    let cfg_path = job.config();
    let mut check = vec!["check", "--config", cfg_path.to_str().unwrap()];
    check.extend(&sets);
    let o = coba_dist(&check);
    assert!(
        ok(&o).contains("lora: r 4, alpha 8 (scale 2)")
            && text(&o).contains("trainable adapter parameters over"),
        "{}",
        text(&o)
    );
    // check loads the base: a Phi module name on this Llama base is refused before a run.
    let mut bad = check.clone();
    bad.extend(["--set", "lora.target_modules=[\"dense\"]"]);
    let o = coba_dist(&bad);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("`dense` is not a projection"),
        "{}",
        text(&o)
    );

    // merge refuses an --out that exists and is not empty (e.g. the base or adapter dir).
    let o = coba_dist(&[
        "merge",
        "--adapter",
        best.to_str().unwrap(),
        "--out",
        base.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not an empty directory"), "{}", text(&o));
    // LoRA needs a saved base: a random-init [model.arch] base is refused up front.
    let o = Job::new("").run(&["--set", "lora.enabled=true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("lora.enabled"), "{}", text(&o));
    // Resuming the adapters over another base is refused, naming both.
    let other = format!(
        "model.path=\"{}\"",
        base_job.checkpoint(3).join("model").display()
    );
    let mut sets3 = sets.to_vec();
    sets3[1] = other.as_str();
    let o = again.run(
        &[
            &sets3[..],
            &["--resume", "auto", "--set", "train.max_steps=7"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("trained on the base"), "{}", text(&o));

    // A LoRA checkpoint does not resume as full fine-tuning (and says why).
    let o = again.run(&[
        "--set",
        set_base.as_str(),
        "--resume",
        "auto",
        "--set",
        "train.max_steps=7",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("lora.enabled = true"), "{}", text(&o));
}

/// The merged model equals PEFT's merge formula applied by an independent reader
/// (`scripts/peft-merge-check.py`: the `safetensors` package and numpy, float64). Skips without
/// the Python packages, except under `CI=true` (the README's test command installs them).
fn peft_merge_check(adapter: &std::path::Path, base: &std::path::Path, merged: &std::path::Path) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/peft-merge-check.py");
    let o = std::process::Command::new("python3")
        .arg(script)
        .args([adapter, base, merged])
        .output();
    let ci = std::env::var("CI").as_deref() == Ok("true");
    match o {
        Ok(o) if o.status.success() => {
            let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            // 1 layer x 7 projections adapted, everything else copied.
            assert_eq!(report["adapted"], 7, "{report}");
            assert!(report["copied"].as_u64().unwrap() >= 3, "{report}");
        }
        Ok(o) if o.status.code() == Some(1) => panic!(
            "merge differs from PEFT's formula: {}",
            String::from_utf8_lossy(&o.stdout)
        ),
        other => {
            assert!(
                !ci,
                "CI=true but the PEFT merge check did not run: {other:?}"
            );
            eprintln!("SKIPPED: needs python3 with `pip install safetensors numpy` ({other:?})");
        }
    }
}

fn params_of_adapter(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    safetensors_f32(&dir.join("adapter/adapter_model.safetensors"))
}
