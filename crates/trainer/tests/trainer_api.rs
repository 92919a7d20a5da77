//! The loop's components called directly (no binary): `Trainer::step`, `probe` and
//! `evaluate` on a tiny random Llama and the synthetic tasks of the harness, with the
//! checkpointer and early stopping. Checked against independent references: an uninterrupted
//! run (resume), a 1-rank run (2 ranks under `mpirun`, this test binary re-executed as the
//! ranks), the early-stopping rule computed from the logged means, and the directory listing.

mod harness;

use harness::*;
use std::collections::BTreeMap;
use std::path::Path;
use trainer::train::checkpointer::{BestSummary, Checkpointer};
use trainer::train::config::{self, Sources, TrainConfig};
use trainer::train::early_stopping::{EarlyStopping, Verdict};
use trainer::train::plan::Plan;
use trainer::train::{load_data, setup, state, Trainer};

fn load(job: &Job, sets: &[impl AsRef<str>]) -> TrainConfig {
    let text = std::fs::read_to_string(job.config()).unwrap();
    config::load(&Sources {
        toml: Some((text, job.config().display().to_string())),
        env: Vec::new(),
        sets: sets.iter().map(|s| s.as_ref().to_string()).collect(),
    })
    .unwrap()
}

fn params_of(t: &Trainer<'_>) -> BTreeMap<String, Vec<f32>> {
    use model::CausalLm;
    t.model
        .params()
        .iter()
        .map(|(n, v)| {
            // bf16 widens to f32 exactly.
            let x = v
                .as_tensor()
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .unwrap();
            (n.clone(), x)
        })
        .collect()
}

/// Runs steps up to `until` (exclusive) with their probes, as the loop does; the per-step
/// training losses.
fn drive(t: &mut Trainer<'_>, until: u64) -> Vec<Vec<Option<f64>>> {
    let mut losses = Vec::new();
    while t.next_step() < until {
        let s = t.step(false).unwrap();
        t.probe(s.step).unwrap();
        losses.push(s.train_loss);
    }
    losses
}

/// A trainer for `cfg` on `comm`, fresh or from `ckpt`, run through `f`.
fn with_trainer<R>(
    cfg: &TrainConfig,
    comm: &dyn collectives::Communicator,
    ckpt: Option<&Path>,
    f: impl FnOnce(&mut Trainer<'_>, &Plan) -> R,
) -> R {
    let (enc, ds) = load_data(cfg).unwrap();
    let (plan, sampler) = Plan::new(cfg, comm, &ds).unwrap();
    let vocab = enc.vocab_size();
    let mut t = setup::start(cfg, comm, &ds, vocab, &plan, sampler, ckpt).unwrap();
    f(&mut t, &plan)
}

/// Full fine-tuning: no extra settings.
fn full(_: &Job) -> Vec<String> {
    Vec::new()
}

/// The harness's model built with `sets` and saved as an HF directory `name` in the job's
/// folder (once), for LoRA runs to name as `model.path`.
fn saved_base(job: &Job, name: &str, sets: &[&str]) -> std::path::PathBuf {
    let base = job.dir.path().join(name);
    if !base.exists() {
        let cfg = load(job, sets);
        let (enc, _) = load_data(&cfg).unwrap();
        let m = trainer::train::build_model(&cfg, enc.vocab_size()).unwrap();
        model::checkpoint::save_hf_dir(&m, &base).unwrap();
    }
    base
}

/// LoRA rank 4, alpha 8 over the base at `base`, plus `extra` settings.
fn lora_over(base: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut sets: Vec<String> = ["lora.enabled=true", "lora.r=4", "lora.alpha=8.0"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    sets.push(format!("model.path=\"{}\"", base.display()));
    sets
}

/// LoRA (rank 4 on every projection) on the harness's tiny model, saved as an HF directory in
/// the job's `base/` (its random init from the job's seed) and named by `model.path`.
fn lora(job: &Job) -> Vec<String> {
    lora_over(&saved_base(job, "base", &[]), &[])
}

/// QLoRA: LoRA as [`lora`] over a base of hidden size 32 (the harness's 16 does not fill a
/// 32-weight block) whose projections are quantized to Q8_0 on load.
fn qlora(job: &Job) -> Vec<String> {
    let widths = [
        "model.arch.hidden_size=32",
        "model.arch.intermediate_size=64",
    ];
    let base = saved_base(job, "base-32", &widths);
    lora_over(&base, &["lora.quantize_base=\"q8_0\""])
}

/// LoRA (`"all-linear"`: Phi's q/k/v_proj, dense, fc1, fc2) with dropout 0.1 on a random Phi
/// base (width 16, 1 layer) saved in the job's `phi/`.
fn phi_lora(job: &Job) -> Vec<String> {
    let base = job.dir.path().join("phi");
    if !base.exists() {
        let cfg = load(job, &[] as &[&str]);
        let (enc, _) = load_data(&cfg).unwrap();
        let pc = model::PhiConfig::tiny(enc.vocab_size(), 16, 1, 2);
        let m = model::Phi::new_random(
            pc,
            4,
            0.05,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        model::checkpoint::save_hf_dir(&m.into(), &base).unwrap();
    }
    lora_over(&base, &["lora.dropout=0.1"])
}

/// The error of starting `cfg` from checkpoint `ckpt`, which must be refused (`why` says what
/// the test expects).
fn refused_resume(cfg: &TrainConfig, ckpt: &Path, why: &str) -> String {
    let comm = collectives::Local::new();
    let (enc, ds) = load_data(cfg).unwrap();
    let (plan, sampler) = Plan::new(cfg, &comm, &ds).unwrap();
    setup::start(
        cfg,
        &comm,
        &ds,
        enc.vocab_size(),
        &plan,
        sampler,
        Some(ckpt),
    )
    .err()
    .expect(why)
    .to_string()
}

/// Full fine-tuning in bf16 (f32 master weights in the optimizer).
fn bf16(_: &Job) -> Vec<String> {
    vec!["train.dtype=\"bf16\"".into()]
}

/// LoRA as [`lora`] with dropout 0.2 on the adapters' input.
fn lora_dropout(job: &Job) -> Vec<String> {
    let mut s = lora(job);
    s.push("lora.dropout=0.2".into());
    s
}

fn resume_equals_uninterrupted(sets: fn(&Job) -> Vec<String>) {
    let comm = collectives::Local::new();
    let job = Job::new("");
    let cfg = load(&job, &sets(&job));
    let (straight, straight_losses, straight_weighter) = with_trainer(&cfg, &comm, None, |t, _| {
        let l = drive(t, 6);
        (params_of(t), l, t.state.weighter.clone())
    });

    let job2 = Job::new("");
    let cfg2 = load(&job2, &sets(&job2));
    let mut first = with_trainer(&cfg2, &comm, None, |t, plan| {
        let l = drive(t, 3);
        let mut c = Checkpointer::new(plan.checkpoint_settings(&cfg2).unwrap(), 0, None);
        c.after_step(t, false, false, None).unwrap();
        c.finish().unwrap();
        assert_eq!(c.last_saved(), Some(3));
        l
    });
    let ckpt = state::checkpoints_dir(&cfg2.output_dir).join(state::step_dir_name(3));
    let (resumed, rest, weighter) = with_trainer(&cfg2, &comm, Some(&ckpt), |t, _| {
        assert_eq!(t.next_step(), 3);
        let l = drive(t, 6);
        (params_of(t), l, t.state.weighter.clone())
    });
    first.extend(rest);
    assert_eq!(first, straight_losses, "training losses of steps 0..6");
    assert_eq!(weighter, straight_weighter, "the weighter's state");
    assert_eq!(resumed, straight, "parameters after 6 steps, bit for bit");
}

#[test]
fn resume_from_the_checkpointer_equals_an_uninterrupted_run() {
    resume_equals_uninterrupted(full);
}

#[test]
fn lora_resume_from_the_checkpointer_equals_an_uninterrupted_run() {
    resume_equals_uninterrupted(lora);
}

#[test]
fn qlora_resume_from_the_checkpointer_equals_an_uninterrupted_run() {
    resume_equals_uninterrupted(qlora);
}

#[test]
fn phi_lora_resume_from_the_checkpointer_equals_an_uninterrupted_run() {
    resume_equals_uninterrupted(phi_lora);
    // Every Phi projection is adapted: 6 modules x (A, B).
    let job = Job::new("");
    let cfg = load(&job, &phi_lora(&job));
    let comm = collectives::Local::new();
    with_trainer(&cfg, &comm, None, |t, _| {
        let names: Vec<String> = params_of(t).into_keys().collect();
        assert_eq!(names.len(), 12, "{names:?}");
        assert!(names
            .iter()
            .any(|n| n.ends_with("self_attn.dense.lora_A.weight")));
        assert!(names.iter().any(|n| n.ends_with("mlp.fc2.lora_B.weight")));
    });
}

#[test]
fn bf16_resume_from_the_checkpointer_equals_an_uninterrupted_run() {
    resume_equals_uninterrupted(bf16);
}

#[test]
fn a_bf16_run_trains_with_f32_master_weights_and_resumes_only_in_bf16() {
    use model::CausalLm;
    let comm = collectives::Local::new();
    let job = Job::new("");
    let cfg = load(&job, &bf16(&job));
    let losses = with_trainer(&cfg, &comm, None, |t, plan| {
        assert_eq!(t.model.dtype(), candle_core::DType::BF16);
        let l = drive(t, 6);
        // Every parameter has an f32 master whose rounding is the parameter.
        for (n, v) in t.model.params() {
            let m = t.opt.master(n).expect("a master copy");
            assert_eq!(m.dtype(), candle_core::DType::F32);
            // Compared widened to f32 (exact for bf16 values).
            let widen = |t: &candle_core::Tensor| {
                t.to_dtype(candle_core::DType::F32)
                    .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                    .unwrap()
            };
            let rounded = m.to_dtype(candle_core::DType::BF16).unwrap();
            assert_eq!(widen(&rounded), widen(v.as_tensor()), "{n}");
        }
        let mut c = Checkpointer::new(plan.checkpoint_settings(&cfg).unwrap(), 0, None);
        c.after_step(t, true, false, None).unwrap();
        c.finish().unwrap();
        l
    });
    // The run learns: the mean training loss of the last steps is below the first step's.
    let mean = |s: &[Option<f64>]| {
        let v: Vec<f64> = s.iter().flatten().copied().collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!(mean(&losses[5]) < mean(&losses[0]), "{losses:?}");
    // The checkpoint holds a bf16 HF model.
    let ckpt = state::checkpoints_dir(&cfg.output_dir).join(state::step_dir_name(6));
    let config = std::fs::read_to_string(ckpt.join("model/config.json")).unwrap();
    assert!(config.contains("\"bfloat16\""), "{config}");
    // A resume in f32 is refused, naming both dtypes.
    let cfg2 = load(&job, &["train.dtype=\"f32\"", "train.max_steps=8"]);
    let err = refused_resume(&cfg2, &ckpt, "an f32 resume of a bf16 run is refused");
    assert!(err.contains("bf16") && err.contains("f32"), "{err}");
    // train.dtype = "auto" (f32 on the CPU for a fresh run) follows the checkpoint: the run
    // continues in bf16, from its f32 masters.
    let cfg3 = load(&job, &["train.max_steps=8"]);
    assert_eq!(cfg3.train.dtype, trainer::train::config::TrainDtype::Auto);
    with_trainer(&cfg3, &comm, Some(&ckpt), |t, _| {
        assert_eq!(t.model.dtype(), candle_core::DType::BF16);
        assert!(t.opt.master("model.norm.weight").is_some());
        drive(t, 7);
    });
}

#[test]
fn qlora_holds_the_base_quantized_and_a_resume_must_keep_the_quantization() {
    let comm = collectives::Local::new();
    let job = Job::new("");
    let cfg = load(&job, &qlora(&job));
    with_trainer(&cfg, &comm, None, |t, plan| {
        let llama = t.model.as_llama().unwrap();
        // 1 layer x 7 projections held as Q8_0 (34 bytes per 32 weights), not parameters.
        assert_eq!(llama.quantized().len(), 7);
        for (n, q) in llama.quantized() {
            assert_eq!(q.format(), candle_core::quantized::GgmlDType::Q8_0);
            assert!(!llama.base_params().contains_key(n));
            let (o, i) = q.dims();
            assert_eq!(q.bytes(), o * i / 32 * 34, "{n}");
        }
        drive(t, 2);
        let mut c = Checkpointer::new(plan.checkpoint_settings(&cfg).unwrap(), 0, None);
        c.after_step(t, true, false, None).unwrap();
        c.finish().unwrap();
    });
    let ckpt = state::checkpoints_dir(&cfg.output_dir).join(state::step_dir_name(2));
    let mut dense = qlora(&job);
    dense.retain(|s| !s.starts_with("lora.quantize_base"));
    let err = refused_resume(
        &load(&job, &dense),
        &ckpt,
        "a resume over a dense base is refused",
    );
    assert!(
        err.contains("quantize_base = \"q8_0\"") && err.contains("\"none\""),
        "{err}"
    );
}

#[test]
fn lora_dropout_resume_from_the_checkpointer_equals_an_uninterrupted_run() {
    resume_equals_uninterrupted(lora_dropout);
}

#[test]
fn lora_dropout_two_ranks_equal_one_rank_through_the_trainer_api() {
    two_ranks_equal_one_rank(
        "lora_dropout_two_ranks_equal_one_rank_through_the_trainer_api",
        lora_dropout,
    );
}

#[test]
fn lora_dropout_changes_the_training_steps() {
    // Against the same run without dropout: other training losses from step 1 on (step 0's
    // forward has B = 0, so the masked adapter adds nothing yet).
    let comm = collectives::Local::new();
    let (with, without) = (Job::new(""), Job::new(""));
    let l1 = with_trainer(&load(&with, &lora_dropout(&with)), &comm, None, |t, _| {
        drive(t, 3)
    });
    let l0 = with_trainer(&load(&without, &lora(&without)), &comm, None, |t, _| {
        drive(t, 3)
    });
    assert_eq!(l1[0], l0[0]);
    assert_ne!(l1[2], l0[2]);
}

#[test]
fn lora_trains_only_the_adapters_and_leaves_the_base_bytes_unchanged() {
    use model::CausalLm;
    let comm = collectives::Local::new();
    let job = Job::new("");
    let cfg = load(&job, &lora(&job));
    with_trainer(&cfg, &comm, None, |t, plan| {
        let llama = t.model.as_llama().unwrap();
        let base_before: BTreeMap<String, Vec<f32>> = llama
            .base_params()
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            })
            .collect();
        let adapters_before = params_of(t);
        assert!(adapters_before.keys().all(|n| n.contains(".lora_")));
        // 1 layer x 7 projections x (A, B).
        assert_eq!(adapters_before.len(), 14);
        drive(t, 3);
        let llama = t.model.as_llama().unwrap();
        for (n, v) in llama.base_params() {
            let now = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(now, base_before[n], "base weight {n} changed");
        }
        let adapters_after = params_of(t);
        let moved = adapters_before
            .iter()
            .filter(|(n, a)| adapters_after[*n] != **a)
            .count();
        assert_eq!(moved, 14, "every adapter matrix was updated");
        // A checkpoint holds the adapters in PEFT format and the optimizer state of them only.
        let mut c = Checkpointer::new(plan.checkpoint_settings(&cfg).unwrap(), 0, None);
        c.after_step(t, true, false, None).unwrap();
        c.finish().unwrap();
        let dir = state::checkpoints_dir(&cfg.output_dir).join(state::step_dir_name(3));
        assert!(dir.join("adapter/adapter_model.safetensors").is_file());
        assert!(dir.join("adapter/adapter_config.json").is_file());
        assert!(!dir.join("model").exists());
        assert_eq!(
            t.opt.state_names(),
            adapters_after.keys().cloned().collect::<Vec<_>>()
        );
        assert!(state::verify_checkpoint(&dir).is_ok());
        assert_eq!(
            t.model.num_parameters(),
            adapters_after.values().map(Vec::len).sum::<usize>()
        );
    });
}

#[test]
fn keep_last_keeps_the_newest_checkpoints_and_best_is_written() {
    let comm = collectives::Local::new();
    let job = Job::new("");
    let cfg = load(
        &job,
        &["checkpoint.every_steps=2", "checkpoint.keep_last=2"],
    );
    with_trainer(&cfg, &comm, None, |t, plan| {
        let mut c = Checkpointer::new(plan.checkpoint_settings(&cfg).unwrap(), 0, None);
        while t.next_step() < 7 {
            let s = t.step(false).unwrap();
            t.probe(s.step).unwrap();
            let best = (t.next_step() == 5).then(|| {
                let e = t.evaluate().unwrap();
                BestSummary::new(t, &e.val_loss, e.ratio_mean)
            });
            c.after_step(t, t.next_step() == 7, false, best).unwrap();
        }
        c.finish().unwrap();
    });
    let kept: Vec<u64> = state::list_checkpoints(&cfg.output_dir)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    // Written after 2, 4, 6 (every 2) and 7 (the last step); the two newest stay.
    assert_eq!(kept, vec![6, 7]);
    for s in kept {
        let dir = state::checkpoints_dir(&cfg.output_dir).join(state::step_dir_name(s));
        assert_eq!(state::read_state(&dir).unwrap().next_step, s);
    }
    let best: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cfg.output_dir.join("best/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(best["step"], 5);
    assert!(cfg.output_dir.join("best/model.safetensors").is_file());
}

/// The rule, independently: stop at the first evaluation `patience` or more evaluations after
/// the best (lowest, earliest on ties) mean so far.
fn expected_stop(means: &[f64], patience: usize) -> Option<usize> {
    (0..means.len()).find(|&i| {
        let best = (0..=i)
            .min_by(|&a, &b| means[a].total_cmp(&means[b]).then(a.cmp(&b)))
            .unwrap();
        i - best >= patience
    })
}

#[test]
fn early_stopping_stops_at_the_right_evaluation() {
    let comm = collectives::Local::new();
    let job = Job::new("");
    // A learning rate far too high: validation gets worse after the first steps.
    let cfg = load(&job, &["train.lr=0.3", "train.clip_grad_norm=0.0"]);
    let patience = 2;
    let es = EarlyStopping {
        patience: patience as u64,
    };
    let (means, stopped_at) = with_trainer(&cfg, &comm, None, |t, _| {
        let (mut best, mut since) = (None, 0);
        let mut means = Vec::new();
        while t.next_step() < 16 {
            let s = t.step(false).unwrap();
            t.probe(s.step).unwrap();
            let e = t.evaluate().unwrap();
            means.push(e.ratio_mean);
            if es.observe(&mut best, &mut since, t.next_step(), e.ratio_mean) == Verdict::Stop {
                return (means.clone(), Some(means.len() - 1));
            }
        }
        (means, None)
    });
    let want = expected_stop(&means, patience);
    assert!(want.is_some(), "the run never got worse: {means:?}");
    assert_eq!(stopped_at, want, "means {means:?}");
}

/// Under `mpirun`, this test binary runs again as the ranks (env `TRAINER_API_RANKS_OUT`).
const CHILD: &str = "TRAINER_API_RANKS_OUT";

#[derive(serde::Serialize, serde::Deserialize)]
struct RankResult {
    params: BTreeMap<String, Vec<f32>>,
    losses: Vec<Vec<Option<f64>>>,
    val_loss: Vec<f64>,
}

fn run_steps(cfg: &TrainConfig, comm: &dyn collectives::Communicator) -> RankResult {
    with_trainer(cfg, comm, None, |t, _| {
        let losses = drive(t, 5);
        let val_loss = t.evaluate().unwrap().val_loss;
        RankResult {
            params: params_of(t),
            losses,
            val_loss,
        }
    })
}

#[test]
fn two_ranks_equal_one_rank_through_the_trainer_api() {
    two_ranks_equal_one_rank("two_ranks_equal_one_rank_through_the_trainer_api", full);
}

#[test]
fn lora_two_ranks_equal_one_rank_through_the_trainer_api() {
    two_ranks_equal_one_rank(
        "lora_two_ranks_equal_one_rank_through_the_trainer_api",
        lora,
    );
}

/// Test `name` (this function's caller) on 2 ranks (micro-batch 2) against 1 rank
/// (micro-batch 4) with the settings `sets` gives for a job (the ranks get them in
/// `TRAINER_API_SETS`, one per line).
fn two_ranks_equal_one_rank(name: &str, sets: fn(&Job) -> Vec<String>) {
    if let Some(out) = std::env::var_os(CHILD) {
        let job_dir = std::env::var("TRAINER_API_JOB").unwrap();
        let text = std::fs::read_to_string(Path::new(&job_dir).join("config.toml")).unwrap();
        let given = std::env::var("TRAINER_API_SETS").unwrap_or_default();
        let mut sets: Vec<String> = given.lines().map(String::from).collect();
        sets.push("train.micro_batch_size=2".into());
        let cfg = config::load(&Sources {
            toml: Some((text, job_dir.clone())),
            env: Vec::new(),
            sets,
        })
        .unwrap();
        let comm = collectives::init(&collectives::InitOptions {
            backend: collectives::BackendChoice::Mpi,
            collective_timeout_s: 120,
            gpu_ranks: false,
        })
        .unwrap();
        let r = run_steps(&cfg, &*comm);
        if comm.rank() == 0 {
            std::fs::write(out, serde_json::to_vec(&r).unwrap()).unwrap();
        }
        return;
    }
    let Some(mpirun) = find_mpirun() else {
        return;
    };
    let two = Job::new("");
    let out = two.dir.path().join("ranks.json");
    let mut cmd = std::process::Command::new(mpirun);
    cmd.args(["-n", "2", "--oversubscribe"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1"])
        .env(CHILD, &out)
        .env("TRAINER_API_SETS", sets(&two).join("\n"))
        .env("TRAINER_API_JOB", two.dir.path())
        .env("RAYON_NUM_THREADS", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    if !Path::new("/usr/bin/ssh").exists() {
        cmd.env("OMPI_MCA_plm", "isolated");
    }
    let o = {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        cmd.output().unwrap()
    };
    ok(&o);
    let r2: RankResult = serde_json::from_slice(&file_bytes(&out)).unwrap();
    let one = Job::new("");
    let r1 = run_steps(&load(&one, &sets(&one)), &collectives::Local::new());
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(1.0);
    for (s, (a, b)) in r1.losses.iter().zip(&r2.losses).enumerate() {
        for (x, y) in a.iter().zip(b) {
            assert!(
                x.zip(*y).is_some_and(|(x, y)| close(x, y)) || (x.is_none() && y.is_none()),
                "train_loss step {s}: {a:?} vs {b:?}"
            );
        }
    }
    for (a, b) in r1.val_loss.iter().zip(&r2.val_loss) {
        assert!(
            close(*a, *b),
            "val_loss {:?} vs {:?}",
            r1.val_loss,
            r2.val_loss
        );
    }
    assert_eq!(
        r1.params.keys().collect::<Vec<_>>(),
        r2.params.keys().collect::<Vec<_>>()
    );
    for (name, a) in &r1.params {
        let b = &r2.params[name];
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff / scale < 1e-5,
            "{name}: max diff {diff} (scale {scale})"
        );
    }
}
