//! The eval bundle's held-out problems (`data/eval/<task>_test.jsonl[.gz]`): per problem its
//! `id` (the task file's), the prompt, and how a generation is checked — HumanEval-X unit
//! tests per language, MBPP asserts, or a GSM8K final answer. Field meanings are the bundle
//! README's (`data/eval/README.md`).

use serde::Deserialize;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// The language a program is written in (HumanEval-X's five; MBPP is Python).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// `python3 prog.py`.
    Python,
    /// `g++ -std=c++11 test.cpp && ./a.out`.
    Cpp,
    /// `javac Main.java && java Main`.
    Java,
    /// `node test.js`.
    Js,
    /// `go test main_test.go` (needs the testify vendor tree).
    Go,
}

impl Lang {
    /// The name used in the bundle and in tables (`python`, `cpp`, `java`, `js`, `go`).
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::Cpp => "cpp",
            Lang::Java => "java",
            Lang::Js => "js",
            Lang::Go => "go",
        }
    }

    /// Parses a bundle `lang` value.
    pub fn parse(s: &str) -> Option<Lang> {
        [Lang::Python, Lang::Cpp, Lang::Java, Lang::Js, Lang::Go]
            .into_iter()
            .find(|l| l.as_str() == s)
    }
}

/// How a generation for a problem is judged.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// HumanEval-X: the program is composed from the prompt, the completion and `test`
    /// (CodeGeeX `process_humaneval_test`); passes iff it builds and exits 0 (js: and prints
    /// nothing).
    HumanEvalX {
        /// Program language.
        lang: Lang,
        /// Text placed before the prompt (imports; `""` for java and js).
        test_setup: String,
        /// The unit tests, appended after prompt + completion.
        test: String,
        /// Go: the prompt's own import block, removed when composing (`""` otherwise).
        import: String,
    },
    /// MBPP: the code before the first ```` ``` ```` of the completion, then `test_setup_code`
    /// and the three asserts of `test_list`, run as one Python file.
    Mbpp {
        /// Setup code between the solution and the asserts (non-empty only for mbpp/367).
        test_setup_code: String,
        /// The asserts.
        test_list: Vec<String>,
    },
    /// GSM8K: the final number of the generation equals `answer` ([`data::gsm8k`]).
    Gsm8k {
        /// The reference answer, normalised (`2125`, `-3`).
        answer: String,
    },
}

impl Check {
    /// The program language of a code check; `None` for GSM8K.
    pub fn lang(&self) -> Option<Lang> {
        match self {
            Check::HumanEvalX { lang, .. } => Some(*lang),
            Check::Mbpp { .. } => Some(Lang::Python),
            Check::Gsm8k { .. } => None,
        }
    }

    /// The metric this check contributes to: `pass@1` for programs, `accuracy` for GSM8K.
    pub fn metric(&self) -> Metric {
        match self {
            Check::Gsm8k { .. } => Metric::Accuracy,
            _ => Metric::PassAt1,
        }
    }
}

/// What `eval --metrics` computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Metric {
    /// Share of problems whose one greedy program passes its unit tests.
    #[serde(rename = "pass@1")]
    PassAt1,
    /// Share of GSM8K problems whose final number matches the answer.
    #[serde(rename = "accuracy")]
    Accuracy,
}

impl Metric {
    /// `pass@1` or `accuracy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::PassAt1 => "pass@1",
            Metric::Accuracy => "accuracy",
        }
    }

    /// Parses `pass@1` or `accuracy`.
    pub fn parse(s: &str) -> Option<Metric> {
        match s {
            "pass@1" => Some(Metric::PassAt1),
            "accuracy" => Some(Metric::Accuracy),
            _ => None,
        }
    }
}

/// One held-out problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The task it belongs to (`code_completion`, `text_to_code`, `math_gsm8k`).
    pub task: String,
    /// The task file's `id` (`Python/148`, `mbpp/11`, `gsm8k/test/0`).
    pub id: String,
    /// The prompt, byte-identical to the task file's (empty for GSM8K records, which only
    /// carry the answer: the prompt comes from the task file).
    pub prompt: String,
    /// How a generation is judged.
    pub check: Check,
    /// The reference solution (code problems), for checking the harness itself.
    pub canonical: Option<String>,
    /// Whether the reference solution passes (false for JavaScript/155, a HumanEval-X bug).
    pub canonical_passes: bool,
}

/// A bundle file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file cannot be opened or read.
    #[error("eval bundle {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a record of the expected shape.
    #[error("eval bundle {path}, line {line}: {message}")]
    Record {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (names the field).
        message: String,
    },
    /// No bundle file for a task.
    #[error("no execution tests for task `{task}`: expected {expected} (the eval bundle, e.g. data/eval/)")]
    Missing {
        /// The task.
        task: String,
        /// The path looked for.
        expected: PathBuf,
    },
}

#[derive(Deserialize)]
struct Record {
    id: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    lang: Option<String>,
    #[serde(default)]
    test_setup: Option<String>,
    #[serde(default)]
    test: Option<String>,
    #[serde(default)]
    import: Option<String>,
    #[serde(default)]
    test_setup_code: Option<String>,
    #[serde(default)]
    test_list: Option<Vec<String>>,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    canonical_solution: Option<String>,
    #[serde(default)]
    canonical_passes: Option<bool>,
}

/// The bundle file of `task` in `dir`: `<task>_test.jsonl.gz`, else `<task>_test.jsonl`.
pub fn bundle_path(dir: &Path, task: &str) -> Option<PathBuf> {
    let gz = dir.join(format!("{task}_test.jsonl.gz"));
    let plain = dir.join(format!("{task}_test.jsonl"));
    [gz, plain].into_iter().find(|p| p.is_file())
}

/// Loads task `task`'s problems from `dir` (see [`bundle_path`]), in file order.
///
/// # Errors
/// [`BundleError::Missing`] without a file; [`BundleError::Io`]; [`BundleError::Record`] naming
/// the line and field for a malformed record (no `id`, an unknown `lang`, a HumanEval-X record
/// without `prompt`/`test`, ...).
pub fn load_task(dir: &Path, task: &str) -> Result<Vec<Problem>, BundleError> {
    let path = bundle_path(dir, task).ok_or_else(|| BundleError::Missing {
        task: task.to_string(),
        expected: dir.join(format!("{task}_test.jsonl.gz")),
    })?;
    let io = |source| BundleError::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(io)?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| BundleError::Record {
            path: path.clone(),
            line: i + 1,
            message,
        };
        let r: Record = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        out.push(problem(task, r).map_err(bad)?);
    }
    Ok(out)
}

fn problem(task: &str, r: Record) -> Result<Problem, String> {
    let need = |v: Option<String>, field: &str| {
        v.ok_or_else(|| format!("record `{}` has no field `{field}`", r.id))
    };
    let check = if let Some(answer) = r.answer.clone() {
        Check::Gsm8k { answer }
    } else if let Some(test_list) = r.test_list.clone() {
        Check::Mbpp {
            test_setup_code: r.test_setup_code.clone().unwrap_or_default(),
            test_list,
        }
    } else {
        let lang = need(r.lang.clone(), "lang")?;
        Check::HumanEvalX {
            lang: Lang::parse(&lang).ok_or_else(|| {
                format!(
                    "record `{}`: field `lang` is `{lang}` (expected python, cpp, java, js or go)",
                    r.id
                )
            })?,
            test_setup: r.test_setup.clone().unwrap_or_default(),
            test: need(r.test.clone(), "test")?,
            import: r.import.clone().unwrap_or_default(),
        }
    };
    let prompt = match check {
        Check::Gsm8k { .. } => r.prompt.clone().unwrap_or_default(),
        _ => need(r.prompt.clone(), "prompt")?,
    };
    Ok(Problem {
        task: task.to_string(),
        prompt,
        check,
        canonical: r.canonical_solution,
        canonical_passes: r.canonical_passes.unwrap_or(true),
        id: r.id,
    })
}
