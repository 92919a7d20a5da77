//! `coba-dist eval` and `coba-dist generate` end to end on a tiny random Llama with the
//! SmolLM2 tokenizer: the CLI's per-task NLL equals the library's per-sample computation on
//! independently rendered ChatML samples, the three `--model` forms agree, bad input exits 2
//! naming the path, greedy generation is deterministic and matches the library's, and (when
//! built with MPI and `mpirun` exists) `mpirun -n 2` gives the one-process numbers.

use candle_core::{DType, Device};
use model::checkpoint::save_hf_dir;
use model::{CausalLm, Llama, LlamaConfig, LossOptions, Model, Sampling, TokenBatch};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tokenizers::Tokenizer;

/// SmolLM2's vocabulary (added tokens included).
const VOCAB: usize = 49152;
const IM_END: u32 = 2;
const ENDOFTEXT: u32 = 0;

fn tokenizer_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/tokenizers/smollm2/tokenizer.json")
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(tokenizer_path()).unwrap()
}

/// (prompt, completion, split) of the two tasks.
const TASK_A: &[(&str, &str, &str)] = &[
    ("What is 2+2?", "4", "valid"),
    ("Name a colour.", "Blue, like the sky.", "valid"),
    ("Reverse 'abc'.", "cba", "valid"),
    ("Say hi.", "Hi!", "train"),
    ("Count to three.", "1, 2, 3", "train"),
    ("Capital of Italy?", "Rome", "train"),
    ("Spell cat.", "c-a-t", "train"),
];
const TASK_B: &[(&str, &str, &str)] = &[
    ("def add(a, b):", "    return a + b", "valid"),
    ("print('x')", "x", "valid"),
    ("let v = vec![1, 2];", "v.len() == 2", "test"),
    ("SELECT 1;", "1", "test"),
    ("x = 3", "x is an int", "train"),
    ("for i in range(2):", "    print(i)", "train"),
    ("# comment", "ignored", "train"),
];

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: Model,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut cfg = LlamaConfig::tiny(VOCAB, 16, 1, 2, 1);
        cfg.max_position_embeddings = 256;
        let model: Model = Llama::new_random(cfg, 7, 0.5, DType::F32, &Device::Cpu)
            .unwrap()
            .into();
        save_hf_dir(&model, &root.join("hf")).unwrap();
        save_hf_dir(&model, &root.join("ckpt/model")).unwrap();
        for (name, lines) in [("a", TASK_A), ("b", TASK_B)] {
            let text: String = lines
                .iter()
                .map(|(p, c, s)| {
                    serde_json::json!({"prompt": p, "completion": c, "split": s}).to_string() + "\n"
                })
                .collect();
            std::fs::write(root.join(format!("{name}.jsonl")), text).unwrap();
        }
        Self {
            _dir: dir,
            root,
            model,
        }
    }

    fn path(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }

    fn task(&self, name: &str) -> String {
        format!("{name}={}", self.path(&format!("{name}.jsonl")))
    }
}

fn coba_dist(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coba-dist"))
        .args(args)
        .output()
        .expect("run coba-dist")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ids(tok: &Tokenizer, s: &str) -> Vec<u32> {
    tok.encode(s, false).unwrap().get_ids().to_vec()
}

/// `(nll_sum, tokens)` of one sample, rendered here as ChatML by hand (loss on the completion
/// and `<|im_end|>`), evaluated as its own one-row batch.
fn sample_nll(model: &Model, tok: &Tokenizer, prompt: &str, completion: &str) -> (f64, u64) {
    let mut tokens = Vec::new();
    let mut loss = Vec::new();
    let mut push = |t: Vec<u32>, l: u8| {
        loss.extend(std::iter::repeat_n(l, t.len()));
        tokens.extend(t);
    };
    push(ids(tok, "<|im_start|>user\n"), 0);
    push(ids(tok, prompt), 0);
    push(ids(tok, "<|im_end|>\n"), 0);
    push(ids(tok, "<|im_start|>assistant\n"), 0);
    push(ids(tok, completion), 1);
    push(vec![IM_END], 1);
    push(ids(tok, "\n"), 0);
    let n = tokens.len() - 1;
    let batch = TokenBatch {
        rows: 1,
        seq_len: n,
        input_ids: tokens[..n].to_vec(),
        labels: tokens[1..].to_vec(),
        loss_mask: loss[1..].to_vec(),
        ..TokenBatch::default()
    };
    let report = model.evaluate(&batch, LossOptions::default()).unwrap();
    let l = report.per_task[0];
    assert_eq!(l.tokens as usize, ids(tok, completion).len() + 1);
    (l.nll_sum, l.tokens)
}

/// Expected `(nll, tokens)` of a task's `split`.
fn expected(model: &Model, lines: &[(&str, &str, &str)], split: &str) -> (f64, u64) {
    let tok = tokenizer();
    let (mut sum, mut tokens) = (0.0, 0);
    for (p, c, _) in lines.iter().filter(|l| l.2 == split) {
        let (s, t) = sample_nll(model, &tok, p, c);
        sum += s;
        tokens += t;
    }
    (sum / tokens as f64, tokens)
}

fn rel_close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * want.abs().max(1e-300)
}

/// Parses `{"tasks": [{"name", "nll", "ppl", "tokens"}]}`, checking its exact shape.
fn parse_report(o: &Output) -> Vec<(String, f64, f64, u64)> {
    assert!(o.status.success(), "{}", text(o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}\n{}", text(o)));
    let top = v.as_object().unwrap();
    assert_eq!(top.keys().collect::<Vec<_>>(), ["tasks"], "{v}");
    v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let mut keys: Vec<&String> = t.as_object().unwrap().keys().collect();
            keys.sort();
            assert_eq!(keys, ["name", "nll", "ppl", "tokens"], "{t}");
            (
                t["name"].as_str().unwrap().to_string(),
                t["nll"].as_f64().unwrap(),
                t["ppl"].as_f64().unwrap(),
                t["tokens"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn eval_args<'a>(f: &'a [String], model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["eval", "--model", model, "--tokenizer", &f[0]];
    for t in &f[1..] {
        a.extend(["--task", t.as_str()]);
    }
    a.extend(extra);
    a
}

#[test]
fn eval_json_matches_the_library_per_sample() {
    let fx = Fixture::new();
    let base = [
        tokenizer_path().display().to_string(),
        fx.task("a"),
        fx.task("b"),
    ];
    let hf = fx.path("hf");
    let out = coba_dist(&eval_args(&base, &hf, &["--micro-batch", "2", "--json"]));
    let got = parse_report(&out);
    assert_eq!(got.len(), 2, "{}", text(&out));
    for ((name, nll, ppl, tokens), (want_name, lines)) in
        got.iter().zip([("a", TASK_A), ("b", TASK_B)])
    {
        let (want_nll, want_tokens) = expected(&fx.model, lines, "valid");
        assert_eq!(name, want_name);
        assert_eq!(*tokens, want_tokens, "task {name}");
        assert!(
            rel_close(*nll, want_nll, 1e-6),
            "task {name}: nll {nll} vs {want_nll}"
        );
        assert!(
            rel_close(*ppl, nll.exp(), 1e-12),
            "task {name}: ppl {ppl} vs exp({nll})"
        );
        // A random model over 49152 tokens: about ln(49152) = 10.8 nats.
        assert!(*nll > 5.0 && *nll < 30.0, "task {name}: nll {nll}");
    }

    // The training checkpoint form (DIR/model/config.json) and another micro-batch size give
    // the same numbers.
    let ckpt = fx.path("ckpt");
    let out2 = coba_dist(&eval_args(&base, &ckpt, &["--micro-batch", "3", "--json"]));
    for (a, b) in got.iter().zip(parse_report(&out2)) {
        assert_eq!((&a.0, a.3), (&b.0, b.3));
        assert!(rel_close(a.1, b.1, 1e-9), "{} vs {}", a.1, b.1);
    }

    // The table: header, one row per task, then `all` (token-weighted).
    let out3 = coba_dist(&eval_args(&base, &hf, &[]));
    assert!(out3.status.success(), "{}", text(&out3));
    let table = String::from_utf8(out3.stdout.clone()).unwrap();
    eprintln!("{table}");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert_eq!(rows[0], ["task", "nll", "ppl", "tokens"], "{table}");
    assert_eq!(rows[1][0], "a");
    assert_eq!(rows[2][0], "b");
    assert_eq!(rows[3][0], "all");
    let all_tokens: u64 = got.iter().map(|t| t.3).sum();
    let all_nll = got.iter().map(|t| t.1 * t.3 as f64).sum::<f64>() / all_tokens as f64;
    assert_eq!(rows[3][3], all_tokens.to_string(), "{table}");
    let table_nll: f64 = rows[3][1].parse().unwrap();
    assert!(
        (table_nll - all_nll).abs() < 1e-5,
        "{table}: all nll {all_nll}"
    );
    let widths: Vec<usize> = table.lines().map(str::len).collect();
    assert!(
        widths.windows(2).all(|w| w[0] == w[1]),
        "not aligned:\n{table}"
    );
}

#[test]
fn eval_test_split_and_an_empty_split() {
    let fx = Fixture::new();
    let tok = tokenizer_path().display().to_string();
    let hf = fx.path("hf");
    let base = [tok.clone(), fx.task("b")];
    let got = parse_report(&coba_dist(&eval_args(
        &base,
        &hf,
        &["--split", "test", "--json"],
    )));
    let (want_nll, want_tokens) = expected(&fx.model, TASK_B, "test");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].3, want_tokens);
    assert!(
        rel_close(got[0].1, want_nll, 1e-6),
        "{} vs {want_nll}",
        got[0].1
    );

    // Task a has no test samples: exit 2 naming the task and the split.
    let base = [tok, fx.task("b"), fx.task("a")];
    let out = coba_dist(&eval_args(&base, &hf, &["--split", "test"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`a`") && err.contains("test"), "{err}");
    assert!(out.stdout.is_empty(), "{}", text(&out));
}

#[test]
fn bad_input_exits_2_naming_the_path() {
    let fx = Fixture::new();
    let tok = tokenizer_path().display().to_string();
    let missing = fx.path("no-such-model");
    let base = [tok.clone(), fx.task("a")];

    let out = coba_dist(&eval_args(&base, &missing, &[]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&missing),
        "{}",
        text(&out)
    );

    // A directory that is neither form.
    let root = fx.path("");
    let out = coba_dist(&eval_args(&base, &root, &[]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("config.json"),
        "{}",
        text(&out)
    );

    // A task argument without `=`, and a task file that does not exist.
    let hf = fx.path("hf");
    let out = coba_dist(&eval_args(&[tok.clone(), "nonsense".into()], &hf, &[]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nonsense"),
        "{}",
        text(&out)
    );
    let gone = fx.path("gone.jsonl");
    let out = coba_dist(&eval_args(&[tok.clone(), format!("x={gone}")], &hf, &[]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&gone),
        "{}",
        text(&out)
    );

    // generate: a missing model and a negative temperature.
    let gen = |model: &str, extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model",
            model,
            "--tokenizer",
            &tok,
            "--prompt",
            "Hi",
        ];
        a.extend(extra);
        coba_dist(&a)
    };
    let out = gen(&missing, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&missing),
        "{}",
        text(&out)
    );
    let out = gen(&hf, &["--temperature", "-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("temperature"),
        "{}",
        text(&out)
    );
}

#[test]
fn generate_is_deterministic_and_matches_the_library() {
    let fx = Fixture::new();
    let tok_path = tokenizer_path().display().to_string();
    let hf = fx.path("hf");
    let gen = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model",
            &hf,
            "--tokenizer",
            &tok_path,
            "--max-new-tokens",
            "5",
        ];
        a.extend(extra);
        let o = coba_dist(&a);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let raw = gen(&["--prompt", "The capital of France is", "--raw"]);
    assert!(!raw.trim().is_empty(), "{raw:?}");
    assert_eq!(raw, gen(&["--prompt", "The capital of France is", "--raw"]));

    // The ChatML form equals the library's greedy generation on the hand-rendered prompt.
    let q = "What is the capital of France?";
    let chat = gen(&["--prompt", q]);
    let tok = tokenizer();
    let prompt = ids(
        &tok,
        &format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"),
    );
    let mut out = fx
        .model
        .generate(&prompt, 5, &[IM_END, ENDOFTEXT], Sampling::Greedy)
        .unwrap();
    if out.last().is_some_and(|t| [IM_END, ENDOFTEXT].contains(t)) {
        out.pop();
    }
    assert_eq!(chat, tok.decode(&out, true).unwrap() + "\n");
    eprintln!("raw: {raw:?}, chat: {chat:?}");

    // Sampling is reproducible from the seed.
    let sampled = |seed: &str| gen(&["--prompt", q, "--temperature", "1.0", "--seed", seed]);
    assert_eq!(sampled("3"), sampled("3"));
}

/// `mpirun -n 2` gives the one-process JSON (needs a build with the MPI backend, e.g.
/// `cargo test --features collectives/mpi`, and `mpirun` on PATH; otherwise it says why it
/// skips).
#[test]
fn eval_under_mpirun_equals_one_process() {
    if !collectives::MPI_COMPILED {
        eprintln!(
            "SKIPPED eval_under_mpirun_equals_one_process: built without the MPI backend \
             (use --features collectives/mpi)"
        );
        return;
    }
    let Some(mpirun) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mpirun"))
            .find(|p| p.is_file())
    }) else {
        eprintln!("SKIPPED eval_under_mpirun_equals_one_process: mpirun not found on PATH");
        return;
    };
    let fx = Fixture::new();
    let base = [
        tokenizer_path().display().to_string(),
        fx.task("a"),
        fx.task("b"),
    ];
    let hf = fx.path("hf");
    let args = eval_args(&base, &hf, &["--micro-batch", "1", "--json"]);
    let one = parse_report(&coba_dist(&args));
    let out = Command::new(mpirun)
        .args(["-n", "2", "--oversubscribe"])
        .arg(Path::new(env!("CARGO_BIN_EXE_coba-dist")))
        .args(&args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_plm", "isolated")
        .output()
        .expect("run mpirun");
    let two = parse_report(&out);
    assert_eq!(one.len(), two.len(), "{}", text(&out));
    for (a, b) in one.iter().zip(&two) {
        assert_eq!((&a.0, a.3), (&b.0, b.3), "{}", text(&out));
        assert!(rel_close(a.1, b.1, 1e-9), "{}: {} vs {}", a.0, a.1, b.1);
        assert!(rel_close(a.2, b.2, 1e-9), "{}: {} vs {}", a.0, a.2, b.2);
    }
}

/// `coba-dist parity --device cpu`: both sides on the CPU agree exactly (logits, gradients,
/// f32 NLL), the NLL over every validation batch equals the library's per-sample NLL of both
/// tasks, and bf16 moves it by more than 0 and less than 1%.
#[test]
fn parity_on_the_cpu_is_exact_and_its_nll_matches_the_library() {
    let fx = Fixture::new();
    let config = fx.root.join("parity.toml");
    let toml = format!(
        "output_dir = {out:?}\n[model]\ntokenizer = {tok:?}\n[model.arch]\nhidden_size = 16\n\
         num_hidden_layers = 1\nnum_attention_heads = 2\n[data]\ntasks = [\n\
         {{ name = \"a\", paths = [{a:?}] }},\n{{ name = \"b\", paths = [{b:?}] }},\n]\n\
         max_seq_len = 256\ncache_dir = {cache:?}\n",
        out = fx.path("runs"),
        tok = tokenizer_path().display().to_string(),
        a = fx.path("a.jsonl"),
        b = fx.path("b.jsonl"),
        cache = fx.path("cache"),
    );
    std::fs::write(&config, toml).unwrap();
    let hf = fx.path("hf");
    let out = coba_dist(&[
        "parity",
        "--config",
        &config.display().to_string(),
        "--model",
        &hf,
        "--device",
        "cpu",
        "--batches",
        "100",
        "--micro-batch",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let r: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", text(&out)));
    assert_eq!(r["device"], "cpu");
    assert_eq!(r["tf32"], false);
    assert_eq!(r["logits_max_abs_diff"].as_f64(), Some(0.0), "{r}");
    assert_eq!(r["grad_max_rel_diff"].as_f64(), Some(0.0), "{r}");
    assert!(r["logits_max_abs"].as_f64().unwrap() > 0.0, "{r}");
    let (cpu, dev) = (
        r["nll_cpu_f32"].as_f64().unwrap(),
        r["nll_device_f32"].as_f64().unwrap(),
    );
    assert_eq!(cpu, dev);
    // Every validation sample of both tasks: 3 of a, 2 of b, in 2-row micro-batches.
    let (nll_a, tok_a) = expected(&fx.model, TASK_A, "valid");
    let (nll_b, tok_b) = expected(&fx.model, TASK_B, "valid");
    let tokens = tok_a + tok_b;
    let want = (nll_a * tok_a as f64 + nll_b * tok_b as f64) / tokens as f64;
    assert_eq!(r["scored_tokens"].as_u64(), Some(tokens), "{r}");
    assert_eq!(r["batches"].as_u64(), Some(3), "{r}");
    assert!(
        rel_close(cpu, want, 1e-6),
        "parity NLL {cpu} vs library {want}"
    );
    let bf16 = r["nll_bf16_rel_diff"].as_f64().unwrap();
    assert!(bf16 > 0.0 && bf16 < 0.01, "{r}");
    let want_bf16 = (r["nll_device_bf16"].as_f64().unwrap() - dev).abs() / dev;
    assert!(rel_close(bf16, want_bf16, 1e-12), "{r}");
}
