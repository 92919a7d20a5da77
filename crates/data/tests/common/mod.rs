#![allow(dead_code)]
use data::config::{DataConfig, TaskSpec, TemplateConfig};
use data::tokenize::Encoder;
use std::path::PathBuf;

pub fn repo_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data")
}

pub fn tokenizer_path() -> PathBuf {
    repo_data().join("tokenizers/smollm2/tokenizer.json")
}

pub fn encoder() -> Encoder {
    Encoder::from_file(&tokenizer_path(), &TemplateConfig::default()).expect("tokenizer")
}

pub fn task(name: &str, path: impl Into<PathBuf>) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        paths: vec![path.into()],
    }
}

pub fn cfg(tasks: Vec<TaskSpec>) -> DataConfig {
    DataConfig::with_tasks(tasks)
}

pub const SHIPPED: [&str; 6] = [
    "code_completion",
    "code_translation",
    "instruct_seed",
    "math_gsm8k",
    "text_to_code",
    "unit_test_gen",
];

/// Independent scan: (train, valid, test) line counts of a gzip or plain JSONL file, by its
/// `split` field (absent = train).
pub fn count_splits(path: &std::path::Path) -> [usize; 3] {
    let bytes = std::fs::read(path).unwrap();
    let text = if path.extension().is_some_and(|e| e == "gz") {
        let mut s = String::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .unwrap();
        s
    } else {
        String::from_utf8(bytes).unwrap()
    };
    let mut c = [0; 3];
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        match v.get("split").and_then(|s| s.as_str()) {
            None | Some("train") => c[0] += 1,
            Some("valid") => c[1] += 1,
            Some("test") => c[2] += 1,
            Some(other) => panic!("unexpected split {other}"),
        }
    }
    c
}
