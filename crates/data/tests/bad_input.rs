//! Every kind of bad input gives an error naming file, line and field; `on_bad_line = "skip"`
//! counts skipped lines per reason.
mod common;
use common::*;
use data::config::{DataConfig, OnBadLine, Overlong};
use data::dataset::load;
use data::tokenize::Encoder;
use data::DataError;
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn good(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"prompt\": \"q{i}\", \"completion\": \"a{i}\"}}\n"))
        .collect()
}

fn one_task(path: &Path) -> DataConfig {
    cfg(vec![task("t", path)])
}

fn err_of(body: &[u8]) -> (PathBuf, DataError) {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bad.jsonl", body);
    let e = load(&one_task(&p), &encoder()).unwrap_err();
    (p, e)
}

#[test]
fn each_bad_line_names_file_line_and_field() {
    let cases: Vec<(&str, &str, &str)> = vec![
        ("{\"prompt\": \"a\", \"completion\": ", "invalid_json", ":3:"),
        ("{\"prompt\": \"a\"}", "missing_field", "completion"),
        ("{\"prompt\": \"a\", \"completion\": [1]}", "wrong_type", "`completion` must be a string"),
        ("{\"prompt\": \"a\", \"completion\": \"b\", \"split\": \"eval\"}", "bad_value", "`split`"),
        (
            "{\"chat_rounds\": [{\"role\": \"human\", \"content\": \"a\"}, {\"role\": \"robot\", \"content\": \"b\"}]}",
            "unknown_role",
            "chat_rounds[1].role",
        ),
        (
            "{\"chat_rounds\": [{\"role\": \"bot\", \"content\": \"a\"}]}",
            "role_order",
            "chat_rounds[0].role",
        ),
        (
            "{\"chat_rounds\": [{\"role\": \"human\", \"content\": \"a\"}]}",
            "role_order",
            "must end with an assistant turn",
        ),
        (
            "{\"chat_rounds\": [{\"role\": \"human\", \"content\": 5}, {\"role\": \"bot\", \"content\": \"b\"}]}",
            "wrong_type",
            "chat_rounds[0].content",
        ),
        ("{\"foo\": 1}", "missing_field", "prompt+completion|chat_rounds|text"),
    ];
    for (bad, reason, needle) in cases {
        // two good lines, then the bad one on line 3
        let body = format!("{}{bad}\n{}", good(2), good(30));
        let (p, e) = err_of(body.as_bytes());
        let msg = e.to_string();
        assert_eq!(e.skip_reason(), Some(reason), "{msg}");
        assert!(msg.contains(&format!("{}:3:", p.display())), "{msg}");
        assert!(msg.contains(needle), "{msg} lacks {needle}");
    }
}

#[test]
fn non_utf8_line_is_reported_with_its_line() {
    let mut body = good(3).into_bytes();
    body.extend_from_slice(b"{\"prompt\": \"\xff\xfe\", \"completion\": \"x\"}\n");
    body.extend_from_slice(good(30).as_bytes());
    let (p, e) = err_of(&body);
    assert!(matches!(e, DataError::NotUtf8 { line: 4, .. }), "{e}");
    assert!(e.to_string().starts_with(&p.display().to_string()));
}

#[test]
fn skip_policy_counts_per_reason_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut body = good(40).into_bytes();
    body.extend_from_slice(b"not json\n{\"prompt\": \"a\"}\n{\"text\": 3}\n\n   \n{\"prompt\": \"\xff\", \"completion\": \"x\"}\n{\"bad\n");
    let p = write(dir.path(), "mixed.jsonl", &body);
    let mut c = one_task(&p);
    c.on_bad_line = OnBadLine::Skip;
    let t = &load(&c, &encoder()).unwrap().tasks[0];
    let s = &t.stats;
    assert_eq!(s.skipped.get("invalid_json"), Some(&2));
    assert_eq!(s.skipped.get("missing_field"), Some(&1));
    assert_eq!(s.skipped.get("wrong_type"), Some(&1));
    assert_eq!(s.skipped.get("not_utf8"), Some(&1));
    assert_eq!(s.skipped_total(), 5);
    assert_eq!(s.lines, 45, "blank lines are not counted");
    assert_eq!(s.train + s.valid, 40);
}

#[test]
fn a_task_reduced_to_zero_samples_is_an_error_even_when_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "junk.jsonl", b"nope\nstill nope\n");
    let mut c = one_task(&p);
    c.on_bad_line = OnBadLine::Skip;
    let e = load(&c, &encoder()).unwrap_err();
    assert!(
        matches!(e, DataError::EmptySplit { ref task, .. } if task == "t"),
        "{e}"
    );
    assert!(e.to_string().contains("zero samples"), "{e}");
}

#[test]
fn empty_file_no_files_missing_file_and_missing_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "empty.jsonl", b"\n\n");
    let e = load(&one_task(&p), &encoder()).unwrap_err();
    assert!(matches!(e, DataError::EmptyFile { .. }), "{e}");
    assert!(e.to_string().contains("empty.jsonl"));

    let sub = dir.path().join("nothing_here");
    std::fs::create_dir(&sub).unwrap();
    write(&sub, "notes.txt", b"hello");
    let e = load(&one_task(&sub), &encoder()).unwrap_err();
    assert!(matches!(e, DataError::NoFiles { .. }), "{e}");

    let e = load(&one_task(&dir.path().join("absent.jsonl")), &encoder()).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }) && e.to_string().contains("absent.jsonl"));

    let tok = dir.path().join("no_tokenizer.json");
    let e = Encoder::from_file(&tok, &Default::default()).err().unwrap();
    assert!(
        matches!(e, DataError::Tokenizer { .. }) && e.to_string().contains("no_tokenizer.json")
    );
    let bad = write(dir.path(), "tokenizer.json", b"{}");
    assert!(Encoder::from_file(&bad, &Default::default()).is_err());
}

#[test]
fn no_train_or_no_valid_after_filtering() {
    let dir = tempfile::tempdir().unwrap();
    // only test samples: no train
    let body: String = (0..5)
        .map(|i| format!("{{\"text\": \"t{i}\", \"split\": \"test\"}}\n"))
        .collect();
    let p = write(dir.path(), "only_test.jsonl", body.as_bytes());
    let e = load(&one_task(&p), &encoder()).unwrap_err();
    assert!(
        matches!(e, DataError::EmptySplit { split: "train", .. }),
        "{e}"
    );
    // a single train sample cannot be carved: no valid
    let p = write(dir.path(), "one.jsonl", good(1).as_bytes());
    let e = load(&one_task(&p), &encoder()).unwrap_err();
    assert!(
        matches!(e, DataError::EmptySplit { split: "valid", .. }),
        "{e}"
    );
}

#[test]
fn overlong_samples_are_truncated_or_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let enc = encoder();
    let long = "word ".repeat(200);
    let mut body = good(20);
    for i in 0..3 {
        body.push_str(&format!(
            "{{\"prompt\": \"p{i}\", \"completion\": \"{long}\"}}\n"
        ));
    }
    // prompt alone longer than the limit: nothing to learn after truncation -> dropped
    body.push_str(&format!(
        "{{\"prompt\": \"{long}\", \"completion\": \"x\"}}\n"
    ));
    let p = write(dir.path(), "long.jsonl", body.as_bytes());
    let mut c = one_task(&p);
    c.max_seq_len = 64;
    let t = load(&c, &enc).unwrap().tasks.remove(0);
    assert_eq!((t.stats.truncated, t.stats.dropped), (3, 1));
    assert_eq!(t.stats.train + t.stats.valid, 23);
    let longest = t
        .train
        .iter()
        .chain(&t.valid)
        .map(|s| s.tokens.len())
        .max()
        .unwrap();
    assert_eq!(
        longest, 65,
        "max_seq_len + 1 tokens = max_seq_len positions"
    );
    c.overlong = Overlong::Drop;
    let t = load(&c, &enc).unwrap().tasks.remove(0);
    assert_eq!((t.stats.truncated, t.stats.dropped), (0, 4));
    assert_eq!(t.stats.train + t.stats.valid, 20);
}

#[test]
fn config_rejects_unknown_fields_and_bad_values() {
    assert!(serde_json::from_str::<DataConfig>(r#"{"tasks": [], "max_seq_lne": 5}"#).is_err());
    assert!(serde_json::from_str::<DataConfig>(
        r#"{"tasks": [], "template": {"preset": "chatml", "eso": "x"}}"#
    )
    .is_err());
    let mut c = cfg(vec![task("a", "x"), task("a", "y")]);
    assert!(c.validate().is_err());
    c.tasks.pop();
    c.valid_fraction = 1.5;
    assert!(c.validate().is_err());
}
