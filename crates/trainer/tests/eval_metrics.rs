//! `coba-dist eval --metrics pass@1,accuracy`: the table from a hand-made completions file
//! equals the count of known-good programs in it (computed here from the bundle's own
//! flags, not by the executor), and generated completions equal the library's greedy decoding
//! of the ChatML prompt rendered here by hand (one process and, with MPI, `mpirun -n 2`).

use candle_core::{DType, Device};
use model::checkpoint::save_hf_dir;
use model::{CausalLm, Llama, LlamaConfig, Model, Sampling};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_gz_jsonl(path: &Path) -> Vec<Value> {
    let mut s = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut s)
        .unwrap();
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
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

/// A wrong body per language (compiles where the language compiles).
fn wrong(lang: &str) -> &'static str {
    match lang {
        "python" => "    return None\n",
        "js" => "  return null;\n}\n",
        _ => "this is not code\n",
    }
}

#[test]
fn pass_at_1_of_a_completions_file_equals_the_known_good_count() {
    let eval = repo().join("data/eval");
    // (task, lang) -> (expected passed, chosen)
    let mut want: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    let mut lines = String::new();
    for (task, file) in [
        ("code_completion", "code_completion_test.jsonl.gz"),
        ("text_to_code", "text_to_code_test.jsonl.gz"),
    ] {
        for (i, r) in read_gz_jsonl(&eval.join(file)).iter().enumerate() {
            if i % 4 != 0 {
                continue; // a quarter of the problems
            }
            let id = r["id"].as_str().unwrap();
            let lang = r["lang"].as_str().unwrap_or("python");
            let good = i % 8 == 0;
            let completion = if good {
                r["canonical_solution"].as_str().unwrap().to_string()
            } else if task == "text_to_code" {
                "def nothing():\n    return None\n```\n".to_string()
            } else {
                wrong(lang).to_string()
            };
            // JavaScript/162 needs the js-md5 package; JavaScript/155's canonical is wrong.
            let passes =
                good && r["canonical_passes"] == Value::Bool(true) && id != "JavaScript/162";
            let e = want.entry((task.into(), lang.into())).or_default();
            e.0 += passes as usize;
            e.1 += 1;
            lines.push_str(&serde_json::json!({"id": id, "completion": completion}).to_string());
            lines.push('\n');
        }
    }
    for (i, r) in read_gz_jsonl(&eval.join("math_gsm8k_test.jsonl.gz"))
        .iter()
        .enumerate()
    {
        if i % 50 != 0 {
            continue;
        }
        let answer = r["answer"].as_str().unwrap();
        let good = i % 100 == 0;
        let completion = if good {
            format!("She pays 3 * 4 = 12.\n#### {answer}\n")
        } else {
            format!("The answer is {answer}1.")
        };
        let e = want.entry(("math_gsm8k".into(), "-".into())).or_default();
        e.0 += good as usize;
        e.1 += 1;
        lines.push_str(&serde_json::json!({"id": r["id"], "completion": completion}).to_string());
        lines.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("completions.jsonl");
    std::fs::write(&file, &lines).unwrap();
    let out_dir = dir.path().join("out");
    let f = file.display().to_string();
    let o = out_dir.display().to_string();
    let e = eval.display().to_string();
    let args = [
        "eval",
        "--metrics",
        "pass@1,accuracy",
        "--completions",
        &f,
        "--eval-data",
        &e,
        "--out",
        &o,
        "--json",
    ];
    let out = coba_dist(&args);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    for ((task, lang), (passed, chosen)) in &want {
        let row = rows
            .iter()
            .find(|r| r["task"] == task.as_str() && r["lang"] == lang.as_str())
            .unwrap_or_else(|| panic!("no row {task}/{lang}: {}", text(&out)));
        let skipped = row["skipped"].as_u64().unwrap() as usize;
        if skipped > 0 {
            // A missing toolchain: every problem of the row is skipped, none counted.
            assert_eq!(
                (skipped, row["total"].as_u64().unwrap()),
                (*chosen, 0),
                "{row}"
            );
            assert!(
                row["skip_reason"].as_str().unwrap().starts_with("no "),
                "{row}"
            );
            eprintln!("{task}/{lang}: skipped ({})", row["skip_reason"]);
            continue;
        }
        assert_eq!(row["passed"].as_u64().unwrap() as usize, *passed, "{row}");
        assert_eq!(row["total"].as_u64().unwrap() as usize, *chosen, "{row}");
        let score = row["score"].as_f64().unwrap();
        assert!(
            (score - *passed as f64 / *chosen as f64).abs() < 1e-12,
            "{row}"
        );
        assert_eq!(
            row["metric"],
            if task == "math_gsm8k" {
                "accuracy"
            } else {
                "pass@1"
            }
        );
    }
    // programs.jsonl: one line per completion, in the results' terms.
    let programs = std::fs::read_to_string(out_dir.join("programs.jsonl")).unwrap();
    let programs: Vec<Value> = programs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(programs.len(), lines.lines().count());
    let passed = programs.iter().filter(|p| p["verdict"] == "passed").count();
    let total_passed: u64 = rows
        .iter()
        .filter(|r| r["lang"] != "all")
        .map(|r| r["passed"].as_u64().unwrap())
        .sum();
    assert_eq!(passed as u64, total_passed);
    let failed = programs.iter().find(|p| p["id"] == "mbpp/15").unwrap();
    assert_eq!(failed["verdict"], "failed");
    assert!(
        failed["detail"].as_str().unwrap().contains("NameError"),
        "{failed}"
    );
    assert!(
        failed["program"].as_str().unwrap().contains("assert "),
        "{failed}"
    );
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk["rows"], report["rows"]);

    // An id that is not a problem is refused, naming the file and line.
    std::fs::write(&file, "{\"id\": \"Python/148\", \"completion\": \"\"}\n{\"id\": \"nope/1\", \"completion\": \"\"}\n").unwrap();
    let out = coba_dist(&args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("completions.jsonl, line 2") && err.contains("nope/1"),
        "{err}"
    );

    // An empty file, a missing bundle directory and --limit with --completions are refused.
    std::fs::write(&file, "").unwrap();
    let out = coba_dist(&args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no completions"));
    let missing = dir.path().join("no-bundle").display().to_string();
    let out = coba_dist(&[
        "eval",
        "--metrics",
        "pass@1",
        "--completions",
        &f,
        "--eval-data",
        &missing,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&missing));
    let out = coba_dist(&[
        "eval",
        "--metrics",
        "pass@1",
        "--completions",
        &f,
        "--limit",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

const IM_END: u32 = 2;
const ENDOFTEXT: u32 = 0;

/// A tiny random Llama over SmolLM2's vocabulary, saved as an HF directory.
fn tiny_model(dir: &Path) -> Model {
    let mut cfg = LlamaConfig::tiny(49152, 16, 1, 2, 1);
    cfg.max_position_embeddings = 2048;
    let model: Model = Llama::new_random(cfg, 11, 0.5, DType::F32, &Device::Cpu)
        .unwrap()
        .into();
    save_hf_dir(&model, &dir.join("hf")).unwrap();
    model
}

fn run_generation(launcher: Option<&Path>, dir: &Path, out: &str) -> Output {
    let tok = repo().join("data/tokenizers/smollm2/tokenizer.json");
    let hf = dir.join("hf").display().to_string();
    let tok = tok.display().to_string();
    let cc = format!(
        "code_completion={}",
        repo().join("data/tasks/code_completion.jsonl.gz").display()
    );
    let gsm = format!(
        "math_gsm8k={}",
        repo().join("data/tasks/math_gsm8k.jsonl.gz").display()
    );
    let e = repo().join("data/eval").display().to_string();
    let args = [
        "eval",
        "--metrics",
        "pass@1,accuracy",
        "--model",
        &hf,
        "--tokenizer",
        &tok,
        "--task",
        &cc,
        "--task",
        &gsm,
        "--eval-data",
        &e,
        "--limit",
        "3",
        "--max-new-tokens",
        "5",
        "--out",
        out,
        "--template",
        "chatml",
    ];
    match launcher {
        None => coba_dist(&args),
        Some(mpirun) => Command::new(mpirun)
            .args(["-n", "2", "--oversubscribe"])
            .arg(env!("CARGO_BIN_EXE_coba-dist"))
            .args(args)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_plm", "isolated")
            .output()
            .expect("run mpirun"),
    }
}

fn programs(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("programs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn generated_completions_equal_the_library_greedy_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out1 = dir.path().join("one");
    let out = run_generation(None, dir.path(), &out1.display().to_string());
    assert!(out.status.success(), "{}", text(&out));
    let got = programs(&out1);
    // --limit 3: three problems per task, evenly spaced.
    let ids: Vec<&str> = got.iter().map(|p| p["id"].as_str().unwrap()).collect();
    // Indices k * n / 3 of each bundle file, in file order.
    let mut want_ids = Vec::new();
    for file in ["code_completion_test.jsonl.gz", "math_gsm8k_test.jsonl.gz"] {
        let rows = read_gz_jsonl(&repo().join("data/eval").join(file));
        for k in 0..3 {
            want_ids.push(rows[k * rows.len() / 3]["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(ids, want_ids);
    let tok =
        tokenizers::Tokenizer::from_file(repo().join("data/tokenizers/smollm2/tokenizer.json"))
            .unwrap();
    let enc = |s: &str| tok.encode_fast(s, false).unwrap().get_ids().to_vec();
    let prompts: BTreeMap<String, String> = ["code_completion", "math_gsm8k"]
        .iter()
        .flat_map(|t| read_gz_jsonl(&repo().join(format!("data/tasks/{t}.jsonl.gz"))))
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["prompt"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for p in &got {
        let id = p["id"].as_str().unwrap();
        let mut ids = enc("<|im_start|>user\n");
        ids.extend(enc(&prompts[id]));
        ids.extend(enc("<|im_end|>\n"));
        ids.extend(enc("<|im_start|>assistant\n"));
        let new = model
            .generate(&ids, 5, &[IM_END, ENDOFTEXT], Sampling::Greedy)
            .unwrap();
        let body: Vec<u32> = new
            .iter()
            .copied()
            .filter(|t| *t != IM_END && *t != ENDOFTEXT)
            .collect();
        let want = tok.decode(&body, true).unwrap();
        let got = p["completion"].as_str().unwrap();
        // The stop rules may only cut the text shorter.
        assert!(
            want.starts_with(got),
            "{id}: {got:?} vs the library's {want:?}"
        );
        assert!(
            got.len() == want.len() || p["lang"] != "-",
            "{id}: GSM8K text cut: {got:?}"
        );
    }
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out1.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["generation"]["max_new_tokens"], 5);
    assert!(results["generation"]["tokens"].as_u64().unwrap() <= 6 * 5);

    if !collectives::MPI_COMPILED {
        eprintln!("SKIPPED the mpirun -n 2 part: built without the MPI backend");
        return;
    }
    let Some(mpirun) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mpirun"))
            .find(|p| p.is_file())
    }) else {
        eprintln!("SKIPPED the mpirun -n 2 part: mpirun not found on PATH");
        return;
    };
    let out2 = dir.path().join("two");
    let out = run_generation(Some(&mpirun), dir.path(), &out2.display().to_string());
    assert!(out.status.success(), "{}", text(&out));
    let two = programs(&out2);
    let strip = |v: &[Value]| -> Vec<(Value, Value, Value)> {
        v.iter()
            .map(|p| {
                (
                    p["id"].clone(),
                    p["completion"].clone(),
                    p["verdict"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(strip(&got), strip(&two));
}
