//! GSM8K accuracy: the final number of a generation, compared as a string with the reference
//! answer (`data/eval/math_gsm8k_test.jsonl.gz`). The rule is the eval bundle's
//! (`data/eval/verify.py`, `gsm8k_extract` / `gsm8k_match`): the first number after the last
//! `####` if there is one, else the last number of the text; a number is `-?\d[\d,]*(\.\d+)?`;
//! commas removed, a trailing `.` dropped, and a decimal part's trailing zeros (and then its
//! `.`) dropped, so `18.00` is `18` and `2,125` is `2125`.

/// The numbers of `text` in order: leftmost, non-overlapping matches of `-?\d[\d,]*(\.\d+)?`.
fn numbers(text: &str) -> Vec<&str> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let mut j = i;
        if b[j] == b'-' {
            j += 1;
        }
        if j >= b.len() || !b[j].is_ascii_digit() {
            i += 1;
            continue;
        }
        while j < b.len() && (b[j].is_ascii_digit() || b[j] == b',') {
            j += 1;
        }
        if j + 1 < b.len() && b[j] == b'.' && b[j + 1].is_ascii_digit() {
            j += 1;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
        }
        out.push(&text[start..j]);
        i = j;
    }
    out
}

/// A matched number in canonical form (see the module docs).
fn normalise(s: &str) -> String {
    let mut s: String = s.chars().filter(|&c| c != ',').collect();
    while s.ends_with('.') {
        s.pop();
    }
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    s
}

/// The final answer of a generation: the first number after the last `####`, else the last
/// number; `None` when there is none.
pub fn extract_answer(generation: &str) -> Option<String> {
    match generation.rsplit_once("####") {
        Some((_, tail)) => numbers(tail).first().map(|n| normalise(n)),
        None => numbers(generation).last().map(|n| normalise(n)),
    }
}

/// Whether a generation's final answer equals the reference `answer` (as given in the eval
/// file: digits, commas removed).
pub fn answer_matches(generation: &str, answer: &str) -> bool {
    extract_answer(generation).as_deref() == Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_vectors() {
        let cases = [
            ("Natalia sold 72 clips.\n#### 72\n", Some("72")),
            ("#### 2,125", Some("2125")),
            ("so the answer is 18.00.", Some("18")),
            ("1.50 dollars", Some("1.5")),
            ("she lost -3 apples", Some("-3")),
            ("x-5", Some("-5")),
            ("#### 5 then #### 7 and 9", Some("7")),
            ("#### no number here", None),
            ("nothing at all", None),
            ("3, 4, and 1,000,", Some("1000")),
            ("10.", Some("10")),
        ];
        for (text, want) in cases {
            assert_eq!(extract_answer(text).as_deref(), want, "{text:?}");
        }
        assert!(answer_matches("... #### 1,319", "1319"));
        assert!(!answer_matches("... #### 1319.5", "1319"));
    }
}
