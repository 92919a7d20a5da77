//! Tokenization throughput (MB/s of decompressed JSONL) and cached reload time, over all
//! shipped tasks (`data/tasks/*.jsonl.gz`) with the SmolLM2 tokenizer and the chatml template.
//!
//! `cargo bench -p data` (release), or quicker in the dev profile (dependencies are optimised):
//! `cargo test -p data --bench tokenize -- --bench`.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use data::config::{DataConfig, TaskSpec};
use data::dataset::load;
use data::tokenize::Encoder;
use std::path::PathBuf;
use std::time::Duration;

fn shipped() -> (DataConfig, Encoder, u64) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data");
    let mut tasks = Vec::new();
    let mut bytes = 0u64;
    for entry in std::fs::read_dir(root.join("tasks")).expect("data/tasks") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if let Some(task) = name.strip_suffix(".jsonl.gz") {
            bytes += data::source::read_all(&path).expect("read").len() as u64;
            tasks.push(TaskSpec {
                name: task.to_string(),
                paths: vec![path],
            });
        }
    }
    tasks.sort_by(|a, b| a.name.cmp(&b.name));
    let mut cfg = DataConfig::with_tasks(tasks);
    cfg.max_seq_len = 2048;
    let enc = Encoder::from_file(
        &root.join("tokenizers/smollm2/tokenizer.json"),
        &cfg.template,
    )
    .expect("tokenizer");
    (cfg, enc, bytes)
}

fn bench(c: &mut Criterion) {
    let (cfg, enc, bytes) = shipped();
    let mut g = c.benchmark_group("shipped_tasks");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("tokenize_uncached", |b| {
        b.iter(|| load(&cfg, &enc).expect("load"))
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cached = cfg.clone();
    cached.cache_dir = Some(dir.path().to_path_buf());
    load(&cached, &enc).expect("warm the cache");
    g.bench_function("cached_reload", |b| {
        b.iter(|| load(&cached, &enc).expect("load"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
