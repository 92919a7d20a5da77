//! Templates, the `text` format, directory discovery and the stats report.
mod common;
use common::*;
use data::config::{Mixing, TemplateConfig, TemplatePreset};
use data::format::Content;
use data::stats::stats;
use data::tokenize::Encoder;
use std::io::Write;

#[test]
fn mftcoder_preset_renders_human_bot_markers_and_eos() {
    let t = TemplateConfig {
        preset: TemplatePreset::Mftcoder,
        ..Default::default()
    };
    let enc = Encoder::from_file(&tokenizer_path(), &t).unwrap();
    assert_eq!(enc.eos_id(), 0, "<|endoftext|>");
    let s = enc.encode(&Content::Chat {
        system: Some("Be brief.".into()),
        rounds: vec![("a?".into(), "b.".into()), ("c?".into(), "d.".into())],
    });
    let tok = enc.tokenizer();
    assert_eq!(
        tok.decode(&s.tokens, false).unwrap(),
        "<s>system\nBe brief.\n<s>human\na?\n<s>bot\nb.<|endoftext|><s>human\nc?\n<s>bot\nd.<|endoftext|>"
    );
    let loss: Vec<u32> = s
        .tokens
        .iter()
        .zip(&s.loss)
        .filter(|(_, &l)| l == 1)
        .map(|(&t, _)| t)
        .collect();
    assert_eq!(
        tok.decode(&loss, false).unwrap(),
        "b.<|endoftext|>d.<|endoftext|>"
    );
}

#[test]
fn overridden_markers_and_default_system() {
    let t = TemplateConfig {
        user_prefix: Some("U: ".into()),
        default_system: Some("sys".into()),
        ..Default::default()
    };
    let enc = Encoder::from_file(&tokenizer_path(), &t).unwrap();
    let s = enc.encode(&Content::Chat {
        system: None,
        rounds: vec![("x".into(), "y".into())],
    });
    assert_eq!(
        enc.tokenizer().decode(&s.tokens, false).unwrap(),
        "<|im_start|>system\nsys<|im_end|>\nU: x<|im_end|>\n<|im_start|>assistant\ny<|im_end|>\n"
    );
    let bad = TemplateConfig {
        eos: Some("not a token".into()),
        ..Default::default()
    };
    assert!(Encoder::from_file(&tokenizer_path(), &bad).is_err());
}

#[test]
fn text_samples_have_loss_on_every_token() {
    let enc = encoder();
    let s = enc.encode(&Content::Text("def f(x):\n    return x".into()));
    assert!(s.loss.iter().all(|&l| l == 1));
    assert_eq!(s.tokens.last(), Some(&2));
}

#[test]
fn directories_are_searched_recursively_and_gzip_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    std::fs::create_dir_all(&nested).unwrap();
    let body = |tag: &str, n: usize| -> String {
        (0..n)
            .map(|i| {
                format!("{{\"query\": \"{tag}{i}\", \"answer\": \"r\", \"split\": \"train\"}}\n")
            })
            .collect()
    };
    std::fs::write(dir.path().join("one.jsonl"), body("p", 10)).unwrap();
    std::fs::write(nested.join("ignored.json"), body("x", 99)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(nested.join("two.jsonl.gz")).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(body("g", 7).as_bytes()).unwrap();
    gz.write_all(b"{\"text\": \"held out\", \"split\": \"valid\"}\n")
        .unwrap();
    gz.finish().unwrap();
    let c = cfg(vec![task("t", dir.path())]);
    let t = data::dataset::load(&c, &encoder()).unwrap().tasks.remove(0);
    assert_eq!(
        (t.stats.train, t.stats.valid, t.stats.carved_valid),
        (17, 1, 0)
    );
}

#[test]
fn stats_report_json_shape_and_mixing() {
    let mut c = cfg(vec![
        task("seed", repo_data().join("tasks/instruct_seed.jsonl.gz")),
        task("utg", repo_data().join("tasks/unit_test_gen.jsonl.gz")),
    ]);
    c.mixing = Mixing::Uniform;
    let r = stats(&c, &tokenizer_path()).unwrap();
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    for (t, name) in tasks.iter().zip(["seed", "utg"]) {
        assert_eq!(t["name"], name);
        for k in [
            "train",
            "valid",
            "test",
            "prompt_tokens",
            "completion_tokens",
            "longest_sample",
            "truncated",
            "dropped",
            "skipped",
            "skipped_total",
            "mixing_probability",
            "carved_valid",
        ] {
            assert!(t.get(k).is_some(), "missing {k}");
        }
        assert_eq!(t["mixing_probability"], 0.5);
    }
    let [train, valid, test] = count_splits(&repo_data().join("tasks/unit_test_gen.jsonl.gz"));
    assert_eq!(
        (
            tasks[1]["train"].as_u64(),
            tasks[1]["valid"].as_u64(),
            tasks[1]["test"].as_u64()
        ),
        (Some(train as u64), Some(valid as u64), Some(test as u64))
    );
    assert!(r.table().lines().count() == 3);
}
