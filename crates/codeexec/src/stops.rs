//! Where greedy generation for a problem stops, on the decoded text (the model's end-of-sequence
//! token stops it too). The rules keep exactly what the composition uses, so stopping early
//! never changes a result, it only saves tokens:
//! - HumanEval-X Python: before the first complete non-empty line that starts without
//!   indentation, and its newline (the body ends there; [`crate::compose::python_truncate`] would drop the rest);
//! - HumanEval-X C++, Java, JavaScript, Go: after the first complete line starting with `}` at
//!   column 0 (the end of the function, or for Java of `class Solution`);
//! - MBPP: at the first ```` ``` ```` (the code ends there; [`crate::compose::mbpp_code`]);
//! - GSM8K: after the line holding `####` (the final answer) is complete.

use crate::problems::{Check, Lang};

/// The length of `text` to keep once generation for `check` should stop, or `None` to go on.
/// `text` is everything generated so far for the problem.
pub fn stop_at(check: &Check, text: &str) -> Option<usize> {
    if let Check::Gsm8k { .. } = check {
        return rule(check, text);
    }
    // Code: the rules apply after a leading fence line (see `compose::code_start`).
    let start = crate::compose::code_start(text)?;
    rule(check, &text[start..]).map(|cut| start + cut)
}

fn rule(check: &Check, text: &str) -> Option<usize> {
    match check {
        Check::Mbpp { .. } => text.find("```"),
        Check::Gsm8k { .. } => {
            let at = text.find("####")?;
            text[at..].find('\n').map(|nl| at + nl + 1)
        }
        Check::HumanEvalX { lang, .. } => {
            let mut start = 0;
            // Only complete lines (followed by '\n') decide.
            while let Some(nl) = text[start..].find('\n') {
                let line = &text[start..start + nl];
                let end = start + nl + 1;
                match lang {
                    Lang::Python => {
                        if !line.trim().is_empty() && !line.starts_with([' ', '\t']) {
                            // Without the newline before it, as the truncation joins lines.
                            return Some(start.saturating_sub(1));
                        }
                    }
                    _ => {
                        if line.starts_with('}') {
                            return Some(end);
                        }
                    }
                }
                start = end;
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::{mbpp_code, python_truncate};

    fn he(lang: Lang) -> Check {
        Check::HumanEvalX {
            lang,
            test_setup: String::new(),
            test: String::new(),
            import: String::new(),
        }
    }

    #[test]
    fn python_stops_where_the_truncation_cuts() {
        let c = he(Lang::Python);
        let text = "    x = 1\n\n    return x\ndef more():\n";
        let cut = stop_at(&c, text).unwrap();
        assert_eq!(&text[..cut], "    x = 1\n\n    return x");
        assert_eq!(python_truncate(&text[..cut]), python_truncate(text));
        assert_eq!(stop_at(&c, "    return 1\ndef"), None, "incomplete line");
    }

    #[test]
    fn brace_languages_stop_after_the_closing_line() {
        for lang in [Lang::Cpp, Lang::Java, Lang::Js, Lang::Go] {
            let text = "    if (x) {\n    }\n    return 1;\n}\nint main() {}\n";
            assert_eq!(
                &text[..stop_at(&he(lang), text).unwrap()],
                "    if (x) {\n    }\n    return 1;\n}\n"
            );
            assert_eq!(stop_at(&he(lang), "  return 1;\n}"), None);
        }
        // Java closes the method (indented) and then the class (column 0).
        let java = "        return 0;\n    }\n}\n";
        assert_eq!(stop_at(&he(Lang::Java), java), Some(java.len()));
    }

    #[test]
    fn rules_apply_after_a_leading_fence() {
        let m = Check::Mbpp {
            test_setup_code: String::new(),
            test_list: vec![],
        };
        assert_eq!(stop_at(&m, "```"), None);
        assert_eq!(stop_at(&m, "```python"), None);
        let t = "```python\ndef f():\n    return 1\n```\nThis function";
        assert_eq!(
            &t[..stop_at(&m, t).unwrap()],
            "```python\ndef f():\n    return 1\n"
        );
        let t = "```cpp\n    return 1;\n}\nint";
        assert_eq!(
            &t[..stop_at(&he(Lang::Cpp), t).unwrap()],
            "```cpp\n    return 1;\n}\n"
        );
    }

    #[test]
    fn mbpp_and_gsm8k() {
        let m = Check::Mbpp {
            test_setup_code: String::new(),
            test_list: vec![],
        };
        let t = "def f():\n    return 1\n```\nextra";
        assert_eq!(&t[..stop_at(&m, t).unwrap()], mbpp_code(t));
        let g = Check::Gsm8k { answer: "3".into() };
        assert_eq!(stop_at(&g, "1+2=3\n#### 3"), None);
        let t = "1+2=3\n#### 3\nQuestion: next";
        assert_eq!(&t[..stop_at(&g, t).unwrap()], "1+2=3\n#### 3\n");
    }
}
