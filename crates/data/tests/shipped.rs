//! The shipped data (`data/tasks/*.jsonl.gz`, `data/mftcoder-format/`) loads with the counts an
//! independent scan of the files gives.
mod common;
use common::*;
use data::dataset::{carve_count, load, Dataset};
use data::format::Content;
use std::sync::OnceLock;

const MAX: usize = 8192;

fn shipped() -> &'static Dataset {
    static DS: OnceLock<Dataset> = OnceLock::new();
    DS.get_or_init(|| {
        let mut tasks: Vec<_> = SHIPPED
            .iter()
            .map(|n| task(n, repo_data().join(format!("tasks/{n}.jsonl.gz"))))
            .collect();
        tasks.push(task("mft_seed", repo_data().join("mftcoder-format")));
        let mut c = cfg(tasks);
        c.max_seq_len = MAX;
        load(&c, &encoder()).expect("shipped data loads")
    })
}

#[test]
fn split_counts_match_an_independent_scan() {
    let ds = shipped();
    for (t, name) in ds.tasks.iter().zip(SHIPPED) {
        let [train, valid, test] =
            count_splits(&repo_data().join(format!("tasks/{name}.jsonl.gz")));
        let s = &t.stats;
        assert_eq!(
            (s.truncated, s.dropped, s.skipped_total()),
            (0, 0, 0),
            "{name}"
        );
        assert!(s.longest_sample <= MAX + 1);
        assert_eq!(s.test, test, "{name}");
        assert_eq!(s.lines, train + valid + test, "{name}");
        if valid == 0 {
            let k = carve_count(train, 0.05);
            assert_eq!(
                (s.train, s.valid, s.carved_valid),
                (train - k, k, k),
                "{name}"
            );
        } else {
            assert_eq!(
                (s.train, s.valid, s.carved_valid),
                (train, valid, 0),
                "{name}"
            );
        }
        assert_eq!(
            (t.train.len(), t.valid.len(), t.test.len()),
            (s.train, s.valid, s.test)
        );
    }
    // instruct_seed ships without a valid split: carved.
    assert!(ds.tasks[2].stats.carved_valid > 0);
}

#[test]
fn mftcoder_chat_rounds_one_sample_per_line() {
    let ds = shipped();
    let t = &ds.tasks[6];
    let text =
        std::fs::read_to_string(repo_data().join("mftcoder-format/instruct_seed.jsonl")).unwrap();
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    let k = carve_count(lines, 0.05);
    assert_eq!(
        (t.stats.train, t.stats.valid, t.stats.test),
        (lines - k, k, 0)
    );
    // every assistant round ends with <|im_end|> in the loss: count rounds independently
    let rounds: usize = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["chat_rounds"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| matches!(r["role"].as_str(), Some("bot" | "assistant" | "gpt")))
                .count()
        })
        .sum();
    let eos_in_loss: usize = [&t.train, &t.valid]
        .iter()
        .flat_map(|s| s.iter())
        .map(|s| {
            s.tokens
                .iter()
                .zip(&s.loss)
                .filter(|(&tok, &l)| tok == 2 && l == 1)
                .count()
        })
        .sum();
    assert_eq!(eos_in_loss, rounds);
}

#[test]
fn gsm8k_completion_tokens_match_the_readme_scale() {
    // shared README: math_gsm8k has ~912K training completion tokens (SmolLM2 tokenizer);
    // ours add one <|im_end|> per sample.
    let s = &shipped().tasks[3].stats;
    let got = s.train_completion_tokens as f64 - s.train as f64;
    assert!((got / 912_000.0 - 1.0).abs() < 0.03, "{got}");
}

#[test]
fn loss_mask_covers_exactly_the_completion_and_eos() {
    let enc = encoder();
    let line = std::fs::read(repo_data().join("tasks/code_completion.jsonl.gz")).unwrap();
    let mut text = String::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(&line[..])
        .read_to_string(&mut text)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let (p, c) = (
        v["prompt"].as_str().unwrap(),
        v["completion"].as_str().unwrap(),
    );
    let s = enc.encode(&Content::Chat {
        system: None,
        rounds: vec![(p.into(), c.into())],
    });
    let tok = enc.tokenizer();
    let pick = |want: u8| -> Vec<u32> {
        s.tokens
            .iter()
            .zip(&s.loss)
            .filter(|(_, &l)| l == want)
            .map(|(&t, _)| t)
            .collect()
    };
    assert_eq!(
        tok.decode(&pick(1), false).unwrap(),
        format!("{c}<|im_end|>")
    );
    assert_eq!(
        tok.decode(&s.tokens, false).unwrap(),
        format!("<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n{c}<|im_end|>\n")
    );
    assert_eq!(s.tokens[0], 1, "starts with <|im_start|>");
    // the loss region is one contiguous run ending in <|im_end|> (id 2) before the final "\n"
    let first = s.loss.iter().position(|&l| l == 1).unwrap();
    let last = s.loss.iter().rposition(|&l| l == 1).unwrap();
    assert!(s.loss[first..=last].iter().all(|&l| l == 1));
    assert_eq!((s.tokens[last], last + 2), (2, s.tokens.len()));
}

#[test]
fn carve_out_is_seeded_and_stable() {
    let path = repo_data().join("tasks/instruct_seed.jsonl.gz");
    let enc = encoder();
    let load_valid = |seed| {
        let mut c = cfg(vec![task("s", &path)]);
        c.seed = seed;
        load(&c, &enc).unwrap().tasks[0].valid.clone()
    };
    let a = load_valid(1);
    assert_eq!(a, load_valid(1));
    assert_ne!(a, load_valid(2));
}
