//! The program run for a problem and a completion, exactly as the eval bundle composes it
//! (`data/eval/verify.py`: `compose_humaneval_x`, `compose_mbpp`, which mirror CodeGeeX's
//! `process_humaneval_test`).

use crate::problems::{Check, Lang, Problem};

/// Go packages a completion may use without importing them (CodeGeeX `IMPORT_HELPER["go"]`):
/// each one that `test_setup` lacks and whose last path element followed by `.` occurs in the
/// completion is imported.
pub const GO_IMPORT_HELPER: [&str; 10] = [
    "math",
    "strings",
    "fmt",
    "strconv",
    "time",
    "bytes",
    "regexp",
    "sort",
    "math/rand",
    "crypto/md5",
];

/// A source file to build and run.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    /// Its language.
    pub lang: Lang,
    /// The file name it is written to (`prog.py`, `test.cpp`, `Main.java`, `test.js`,
    /// `main_test.go`).
    pub file: &'static str,
    /// The whole source.
    pub source: String,
}

/// HumanEval-X Python: the completion up to (not including) the first non-empty line that
/// does not start with a space or a tab — only the indented function body survives.
pub fn python_truncate(code: &str) -> String {
    let mut kept = Vec::new();
    for line in code.split('\n') {
        if !line.trim().is_empty() && !line.starts_with([' ', '\t']) {
            break;
        }
        kept.push(line);
    }
    kept.join("\n")
}

/// HumanEval-X Go: the import block for [`GO_IMPORT_HELPER`] packages the completion uses and
/// `test_setup` lacks, or `None`.
pub fn go_extra_imports(test_setup: &str, code: &str) -> Option<String> {
    let pkgs: Vec<String> = GO_IMPORT_HELPER
        .iter()
        .filter(|pkg| !test_setup.contains(*pkg))
        .filter(|pkg| {
            let last = pkg.rsplit('/').next().unwrap_or(pkg);
            code.contains(&format!("{last}."))
        })
        .map(|pkg| format!("\"{pkg}\"\n"))
        .collect();
    if pkgs.is_empty() {
        None
    } else {
        Some(format!("import (\n{})", pkgs.join("    ")))
    }
}

/// MBPP: the code of a completion, i.e. the text before its first ```` ``` ```` (the training
/// target ends with a closing fence).
pub fn mbpp_code(completion: &str) -> &str {
    completion.split("```").next().unwrap_or("")
}

/// Where the code of a generation starts: after a first line that opens a Markdown fence
/// (```` ```python ````), which chat models put before code; 0 otherwise. `None` while the
/// text is only an unfinished fence line (wait for more before judging a stop).
pub fn code_start(text: &str) -> Option<usize> {
    let lead = text.len() - text.trim_start_matches(['\n', ' ']).len();
    if !text[lead..].starts_with("```") {
        return if "```".starts_with(text[lead..].trim_end()) && !text[lead..].contains('\n') {
            None
        } else {
            Some(0)
        };
    }
    text[lead..].find('\n').map(|nl| lead + nl + 1)
}

/// The program for `problem` and `completion` (the text generated after the prompt); `None`
/// for a GSM8K problem, which is checked without running anything.
///
/// A completion whose first line opens a Markdown fence has that line dropped
/// ([`code_start`]; the one leniency over CodeGeeX/MBPP, so a chat model's answer is judged
/// on its code; a trained model continues the prompt and is unaffected).
pub fn compose(problem: &Problem, completion: &str) -> Option<Program> {
    let prompt = problem.prompt.as_str();
    let completion = &completion[code_start(completion).unwrap_or(0)..];
    match &problem.check {
        Check::Gsm8k { .. } => None,
        Check::Mbpp {
            test_setup_code,
            test_list,
        } => Some(Program {
            lang: Lang::Python,
            file: "prog.py",
            source: format!(
                "{}\n{test_setup_code}\n{}\n",
                mbpp_code(completion),
                test_list.join("\n")
            ),
        }),
        Check::HumanEvalX {
            lang,
            test_setup,
            test,
            import,
        } => {
            let (file, source) = match lang {
                Lang::Python => (
                    "prog.py",
                    format!(
                        "{test_setup}{prompt}{}\n{test}\n",
                        python_truncate(completion)
                    ),
                ),
                Lang::Cpp => (
                    "test.cpp",
                    format!("{test_setup}{prompt}{completion}\n{test}"),
                ),
                Lang::Java => ("Main.java", format!("{prompt}{completion}\n{test}")),
                Lang::Js => ("test.js", format!("{prompt}{completion}\n{test}")),
                Lang::Go => {
                    let prompt = prompt.replace(import.as_str(), "");
                    let extra = go_extra_imports(test_setup, completion)
                        .map(|e| format!("{e}\n"))
                        .unwrap_or_default();
                    (
                        "main_test.go",
                        format!("{test_setup}\n{extra}{prompt}{completion}\n{test}"),
                    )
                }
            };
            Some(Program {
                lang: *lang,
                file,
                source,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_truncate_keeps_only_the_indented_body() {
        let c = "    x = 1\n\n    return x\ndef other():\n    pass\n";
        assert_eq!(python_truncate(c), "    x = 1\n\n    return x");
        assert_eq!(python_truncate("\treturn 1\n"), "\treturn 1\n");
        assert_eq!(python_truncate("```python\n    return 1"), "");
    }

    #[test]
    fn go_imports_only_used_helpers_missing_from_the_setup() {
        let setup = "package main\nimport (\n    \"testing\"\n    \"strings\"\n)\n";
        let code = "return strings.ToUpper(fmt.Sprint(rand.Intn(3)))";
        assert_eq!(
            go_extra_imports(setup, code).as_deref(),
            Some("import (\n\"fmt\"\n    \"math/rand\"\n)")
        );
        assert_eq!(go_extra_imports(setup, "return 1"), None);
    }

    #[test]
    fn a_leading_fence_line_is_skipped() {
        assert_eq!(code_start("```python\ndef f():"), Some(10));
        assert_eq!(code_start("\n```\nx"), Some(5));
        assert_eq!(code_start("```pyth"), None, "unfinished fence line");
        assert_eq!(code_start("``"), None);
        assert_eq!(code_start(""), None);
        assert_eq!(code_start("    return 1"), Some(0));
        assert_eq!(code_start("x = 1\n```"), Some(0));
    }

    #[test]
    fn mbpp_code_cuts_at_the_closing_fence() {
        assert_eq!(
            mbpp_code("def f():\n    return 1\n```\nmore"),
            "def f():\n    return 1\n"
        );
        assert_eq!(mbpp_code("no fence"), "no fence");
    }
}
