//! Regression tests for the data side of issue 12, "What a new user hits in the first hour":
//! item 5 (memory and time grow without bound with long samples), item 6 (silent data loss,
//! loading without training's requirements) and item 10 (a UTF-8 byte-order mark).
mod common;
use common::*;
use data::config::{DataConfig, OnBadLine, Overlong};
use data::dataset::{load, load_with, Needs};
use data::format::{parse_line, Content, Split};
use data::stats::stats;
use data::DataError;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn good(n: usize, tag: &str) -> String {
    (0..n)
        .map(|i| format!("{{\"prompt\": \"{tag} q{i}\", \"completion\": \"a{i}\"}}\n"))
        .collect()
}

fn one_task(path: &Path) -> DataConfig {
    cfg(vec![task("t", path)])
}

/// The records of a shipped task file, read independently of `data::source`.
fn shipped_contents(name: &str) -> Vec<Content> {
    let path = repo_data().join(format!("tasks/{name}.jsonl.gz"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| parse_line(l, &path, i + 1).unwrap().content)
        .collect()
}

/// Issue 12, item 5: the bounded encoding (text cut to a budget before tokenizing) gives the
/// same first `max_seq_len + 1` tokens and loss as tokenizing everything and truncating, and
/// does work proportional to `max_seq_len`, not to the text.
#[test]
fn long_sample_tokenization_is_bounded_and_exact() {
    let enc = encoder();
    // The longest decoded token, computed here from the vocabulary.
    let tok = enc.tokenizer();
    let longest = (0..tok.get_vocab_size(true) as u32)
        .map(|id| tok.decode(&[id], false).unwrap().len())
        .max()
        .unwrap();
    assert_eq!(enc.max_token_bytes(), longest);

    // Long texts from shipped samples: every sample of a task concatenated, and one sample
    // repeated; plus a run without any whitespace (no pre-token boundary to cut at).
    let mut long: Vec<Content> = Vec::new();
    for name in SHIPPED {
        let contents = shipped_contents(name);
        let (mut users, mut assistants, mut all) = (String::new(), String::new(), String::new());
        for c in contents.iter().take(100) {
            match c {
                Content::Chat { rounds, .. } => {
                    for (u, a) in rounds {
                        users.push_str(u);
                        users.push('\n');
                        assistants.push_str(a);
                        assistants.push(' ');
                        all.push_str(u);
                        all.push_str(a);
                    }
                }
                Content::Text(t) => all.push_str(t),
            }
        }
        for text in [&mut users, &mut assistants, &mut all] {
            *text = text.repeat(100_000 / text.len() + 1);
        }
        long.push(Content::Chat {
            system: Some(users.clone()),
            rounds: vec![(users.clone(), assistants.clone())],
        });
        // Short prompt, long completion: the loss mask must survive the cut.
        long.push(Content::Chat {
            system: None,
            rounds: vec![("Q".into(), assistants.clone())],
        });
        long.push(Content::Text(all));
        if let Content::Chat { rounds, .. } = &contents[0] {
            let one = format!("{}{}", rounds[0].0, rounds[0].1);
            long.push(Content::Text(one.repeat(300)));
            // Many rounds: rounds after the first max_seq_len + 1 tokens are not rendered.
            long.push(Content::Chat {
                system: None,
                rounds: vec![rounds[0].clone(); 400],
            });
        }
    }
    long.push(Content::Text("abcdefghij".repeat(20_000)));
    long.push(Content::Text("é1,".repeat(40_000)));

    for (i, c) in long.iter().enumerate() {
        let full = enc.encode(c);
        for max_seq_len in [16, 64, 512] {
            let n = max_seq_len + 1;
            let (bounded, cut) = enc.encode_bounded(c, max_seq_len);
            assert!(full.tokens.len() > n, "case {i} is not long");
            assert!(cut, "case {i} at {max_seq_len}: nothing was cut");
            assert!(
                bounded.tokens.len() > n,
                "overlong decision changed (case {i})"
            );
            assert_eq!(
                bounded.tokens[..n],
                full.tokens[..n],
                "tokens differ: case {i}, max_seq_len {max_seq_len}"
            );
            assert_eq!(
                bounded.loss[..n],
                full.loss[..n],
                "loss differs: case {i}, max_seq_len {max_seq_len}"
            );
            // Bounded work: each text field holds at most budget bytes and a token at least
            // one, and a sample has at most 3 text fields per rendered round.
            let fields = match c {
                Content::Text(_) => 1,
                Content::Chat { rounds, .. } => 1 + 2 * rounds.len(),
            };
            assert!(
                bounded.tokens.len() <= fields * enc.text_budget_bytes(max_seq_len) + 64 * fields
            );
            if max_seq_len <= 64 {
                assert!(
                    bounded.tokens.len() * 4 < full.tokens.len(),
                    "case {i}: {} of {} tokens",
                    bounded.tokens.len(),
                    full.tokens.len()
                );
            }
        }
    }

    // Through `load`: a 4 MB line gives exactly the truncated full encoding.
    let dir = tempfile::tempdir().unwrap();
    let body = "lorem ipsum dolor sit amet ".repeat(150_000);
    let line = serde_json::json!({"prompt": "Summarise.", "completion": body}).to_string();
    let p = write(
        dir.path(),
        "long.jsonl",
        format!("{line}\n{}", good(30, "x")).as_bytes(),
    );
    let mut c = one_task(&p);
    c.max_seq_len = 128;
    let t = load(&c, &enc).unwrap().tasks.remove(0);
    let mut expect = enc.encode(&Content::Chat {
        system: None,
        rounds: vec![("Summarise.".into(), body)],
    });
    expect.tokens.truncate(129);
    expect.loss.truncate(129);
    assert!(t.train.iter().chain(&t.valid).any(|s| *s == expect));
    assert_eq!((t.stats.truncated, t.stats.cut_before_tokenizing), (1, 1));
    assert!(t.stats.longest_sample > 129);
}

/// Issue 12, item 5: a line above `max_line_bytes` is an error naming file, line and size
/// (or, when skipping, a counted skip), and a line of exactly the limit is accepted.
#[test]
fn long_line_above_limit_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let line3 = format!(
        "{{\"prompt\": \"big\", \"completion\": \"{}\"}}",
        "z".repeat(5000)
    );
    let body = format!("{}{line3}\n{}", good(2, "a"), good(30, "b"));
    for gz in [false, true] {
        let p = if gz {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
            e.write_all(body.as_bytes()).unwrap();
            write(dir.path(), "big.jsonl.gz", &e.finish().unwrap())
        } else {
            write(dir.path(), "big.jsonl", body.as_bytes())
        };
        let mut c = one_task(&p);
        c.max_line_bytes = 1000;
        let e = load(&c, &encoder()).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, DataError::LineTooLong { line: 3, bytes, limit: 1000, .. } if bytes == line3.len()),
            "{msg}"
        );
        assert!(msg.contains(&format!("{}:3:", p.display())), "{msg}");
        assert!(msg.contains(&line3.len().to_string()), "{msg}");
        assert!(msg.contains("data.max_line_bytes"), "{msg}");

        c.on_bad_line = OnBadLine::Skip;
        let t = load(&c, &encoder()).unwrap().tasks.remove(0);
        assert_eq!(t.stats.skipped.get("too_long"), Some(&1));
        assert_eq!(t.stats.skipped_total(), 1);
        assert_eq!(t.stats.lines, 33);
        assert_eq!(t.stats.train + t.stats.valid, 32);

        c.on_bad_line = OnBadLine::Error;
        c.max_line_bytes = line3.len();
        let t = load(&c, &encoder()).unwrap().tasks.remove(0);
        assert_eq!(t.stats.train + t.stats.valid, 33);
    }
}

/// Issue 12, item 6: drops are counted per reason and records per split before filtering.
#[test]
fn data_loss_counts_by_reason() {
    let enc = encoder();
    let max_seq_len = 64;
    let long = "word ".repeat(200);
    // The classes below are far from the limit on either side.
    assert!(enc.ids(&long).len() > 3 * max_seq_len);
    assert!(enc.ids("short q99 a99").len() + 16 < max_seq_len);

    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Good,
        LongCompletion,
        LongPrompt,
        EmptyText,
        Bad,
    }
    use Kind::*;
    let splits = ["train", "valid", "test"];
    let mut lines: Vec<(Kind, usize)> = Vec::new();
    for i in 0..60 {
        let kind = match i % 10 {
            0 | 7 => LongCompletion,
            3 => LongPrompt,
            5 => EmptyText,
            9 => Bad,
            _ => Good,
        };
        lines.push((kind, i % 3));
    }
    let mut body = String::new();
    for (i, &(kind, split)) in lines.iter().enumerate() {
        let s = splits[split];
        body.push_str(&match kind {
            Good => format!(
                "{{\"prompt\": \"short q{i}\", \"completion\": \"a{i}\", \"split\": \"{s}\"}}"
            ),
            LongCompletion => {
                format!("{{\"prompt\": \"q{i}\", \"completion\": \"{long}\", \"split\": \"{s}\"}}")
            }
            LongPrompt => {
                format!("{{\"prompt\": \"{long}\", \"completion\": \"a{i}\", \"split\": \"{s}\"}}")
            }
            EmptyText => format!("{{\"text\": \"\", \"split\": \"{s}\"}}"),
            Bad => "{\"prompt\": ".to_string(),
        });
        body.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "mixed.jsonl", body.as_bytes());
    let count =
        |pred: &dyn Fn(Kind, usize) -> bool| lines.iter().filter(|&&(k, s)| pred(k, s)).count();

    let mut c = one_task(&p);
    c.max_seq_len = max_seq_len;
    c.on_bad_line = OnBadLine::Skip;
    for overlong in [Overlong::Truncate, Overlong::Drop] {
        c.overlong = overlong;
        let r = stats(&c, &tokenizer_path()).unwrap();
        let st = &r.tasks[0].stats;
        let parsed = |s: usize| count(&|k, sp| k != Bad && sp == s);
        assert_eq!(
            (st.records.train, st.records.valid, st.records.test),
            (parsed(0), parsed(1), parsed(2))
        );
        assert_eq!(
            st.skipped.get("invalid_json"),
            Some(&count(&|k, _| k == Bad))
        );
        assert_eq!(st.lines, lines.len());
        let (kept_kinds, expect_overlong, expect_noloss, expect_trunc): (
            &[Kind],
            usize,
            usize,
            usize,
        ) = match overlong {
            Overlong::Truncate => (
                &[Good, LongCompletion],
                0,
                count(&|k, _| k == LongPrompt || k == EmptyText),
                count(&|k, _| k == LongCompletion),
            ),
            Overlong::Drop => (
                &[Good],
                count(&|k, _| k == LongPrompt || k == LongCompletion),
                count(&|k, _| k == EmptyText),
                0,
            ),
        };
        assert_eq!(st.dropped_overlong, expect_overlong);
        assert_eq!(st.dropped_no_loss_token, expect_noloss);
        assert_eq!(st.dropped, expect_overlong + expect_noloss);
        assert_eq!(st.truncated, expect_trunc);
        let kept = |s: usize| count(&|k, sp| kept_kinds.contains(&k) && sp == s);
        assert_eq!((st.train, st.valid, st.test), (kept(0), kept(1), kept(2)));
        assert_eq!(st.carved_valid, 0);
        // The JSON report and the table carry the same counts.
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["tasks"][0]["dropped_overlong"], expect_overlong);
        assert_eq!(v["tasks"][0]["dropped_no_loss_token"], expect_noloss);
        assert_eq!(v["tasks"][0]["records"]["valid"], parsed(1));
        let table = r.table();
        let row = table.lines().find(|l| l.starts_with("t ")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
        let col = |name: &str| cols[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(col("drop_long"), expect_overlong.to_string());
        assert_eq!(col("drop_noloss"), expect_noloss.to_string());
        assert_eq!(col("trunc"), expect_trunc.to_string());
        assert_eq!(col("train"), kept(0).to_string());
        assert_eq!(
            col("skipped_by_reason"),
            format!("invalid_json={}", count(&|k, _| k == Bad))
        );
    }
}

/// Issue 12, item 6/7: `eval --split valid` does not need train samples.
#[test]
fn eval_without_train_samples_loads_valid_split() {
    let dir = tempfile::tempdir().unwrap();
    let body: String = (0..5)
        .map(|i| {
            format!("{{\"prompt\": \"q{i}\", \"completion\": \"a{i}\", \"split\": \"valid\"}}\n")
        })
        .collect();
    let p = write(dir.path(), "valid_only.jsonl", body.as_bytes());
    let enc = encoder();
    for cache in [false, true] {
        let mut c = one_task(&p);
        if cache {
            c.cache_dir = Some(dir.path().join("cache"));
            // A cache entry written under another `Needs` must not change the checks.
            load_with(&c, &enc, Needs::Nothing).unwrap();
        }
        let ds = load_with(&c, &enc, Needs::Split(Split::Valid)).unwrap();
        let t = &ds.tasks[0];
        assert_eq!((t.train.len(), t.valid.len(), t.test.len()), (0, 5, 0));
        let e = load(&c, &enc).unwrap_err();
        assert!(
            matches!(e, DataError::EmptySplit { split: "train", .. }),
            "{e}"
        );
        let e = load_with(&c, &enc, Needs::Split(Split::Test)).unwrap_err();
        assert!(
            matches!(e, DataError::EmptySplit { split: "test", .. }),
            "{e}"
        );
    }
    // A train-only file evaluates the carved-out validation samples, as training does.
    let p = write(dir.path(), "train_only.jsonl", good(40, "t").as_bytes());
    let c = one_task(&p);
    let valid = load_with(&c, &enc, Needs::Split(Split::Valid)).unwrap();
    let trained = load(&c, &enc).unwrap();
    assert_eq!(valid.tasks[0].valid, trained.tasks[0].valid);
    assert_eq!(valid.tasks[0].stats.carved_valid, 2); // round(40 * 0.05)
}

/// Issue 12, item 6/7: `data stats` reports a task whose every line is dropped instead of
/// failing, with a warning.
#[test]
fn data_stats_shows_a_task_reduced_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    let long = "word ".repeat(200);
    let n_dropped = 7;
    let body: String = (0..n_dropped)
        .map(|i| format!("{{\"prompt\": \"{long}\", \"completion\": \"a{i}\"}}\n"))
        .collect();
    let gone = write(dir.path(), "gone.jsonl", body.as_bytes());
    let kept = write(dir.path(), "kept.jsonl", good(20, "k").as_bytes());
    let mut c = cfg(vec![task("kept", &kept), task("gone", &gone)]);
    c.max_seq_len = 32;
    assert!(load(&c, &encoder()).is_err(), "training still refuses it");
    let r = stats(&c, &tokenizer_path()).unwrap();
    let st = &r.tasks[1].stats;
    assert_eq!(st.name, "gone");
    assert_eq!((st.train, st.valid, st.test), (0, 0, 0));
    assert_eq!(
        (st.records.train, st.dropped_no_loss_token),
        (n_dropped, n_dropped)
    );
    assert_eq!(r.tasks[1].mixing_probability, 0.0);
    assert_eq!(r.tasks[0].stats.train + r.tasks[0].stats.valid, 20);
    let table = r.table();
    let warnings: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 1, "{table}");
    assert!(
        warnings[0].contains("`gone`") && warnings[0].contains("zero samples"),
        "{table}"
    );
    // A task left without a split training needs is warned about too.
    let only_test: String = (0..3)
        .map(|i| format!("{{\"text\": \"t{i}\", \"split\": \"test\"}}\n"))
        .collect();
    let p = write(dir.path(), "only_test.jsonl", only_test.as_bytes());
    let r = stats(&one_task(&p), &tokenizer_path()).unwrap();
    assert_eq!(r.tasks[0].stats.test, 3);
    assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings); // no train, no valid
}

/// Issue 12, item 10: a UTF-8 byte-order mark at the start of a file (plain or gzip) is
/// accepted; elsewhere it is still invalid JSON.
#[test]
fn bom_at_start_of_jsonl_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let enc = encoder();
    let plain = good(20, "b");
    let reference = load(
        &one_task(&write(dir.path(), "plain.jsonl", plain.as_bytes())),
        &enc,
    )
    .unwrap()
    .tasks
    .remove(0);
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(plain.as_bytes());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), Default::default());
    gz.write_all(&with_bom).unwrap();
    for (name, bytes) in [
        ("bom.jsonl", with_bom.clone()),
        ("bom.jsonl.gz", gz.finish().unwrap()),
    ] {
        let t = load(&one_task(&write(dir.path(), name, &bytes)), &enc)
            .unwrap()
            .tasks
            .remove(0);
        assert_eq!(
            (&t.train, &t.valid),
            (&reference.train, &reference.valid),
            "{name}"
        );
    }
    let mut late = plain.lines().next().unwrap().as_bytes().to_vec();
    late.extend_from_slice(b"\n\xEF\xBB\xBF");
    late.extend_from_slice(plain.as_bytes());
    let e = load(&one_task(&write(dir.path(), "late.jsonl", &late)), &enc).unwrap_err();
    assert!(matches!(e, DataError::Json { line: 2, .. }), "{e}");
}
