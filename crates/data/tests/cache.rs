//! The tokenization cache: a hit equals a fresh load; any input change invalidates it; ranks
//! sharing a directory build once.
mod common;
use common::*;
use data::cache::{cache_path, load_task_cached};
use data::dataset::load_task;
use data::source::task_files;

fn lines(n: usize, tag: &str) -> String {
    (0..n)
        .map(|i| format!("{{\"instruction\": \"{tag} q{i}\", \"output\": \"a{i}\"}}\n"))
        .collect()
}

#[test]
fn hit_equals_fresh_load_and_inputs_invalidate() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let data = dir.path().join("t.jsonl");
    std::fs::write(&data, lines(30, "x")).unwrap();
    let enc = encoder();
    let spec = task("t", &data);
    let c = cfg(vec![spec.clone()]);
    let fresh = load_task(&spec, &c, &enc).unwrap();
    let first = load_task_cached(&cache, &spec, &c, &enc).unwrap();
    let entries = || std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(entries(), 1);
    let hit = load_task_cached(&cache, &spec, &c, &enc).unwrap();
    assert_eq!(first, fresh);
    assert_eq!(hit, fresh);
    let files = task_files("t", &spec.paths).unwrap();
    let p0 = cache_path(&cache, &spec, &files, &c, &enc).unwrap();

    // a setting change → a new key
    let mut c2 = c.clone();
    c2.max_seq_len = 7;
    assert_ne!(cache_path(&cache, &spec, &files, &c2, &enc).unwrap(), p0);
    c2 = c.clone();
    c2.seed = 1;
    assert_ne!(cache_path(&cache, &spec, &files, &c2, &enc).unwrap(), p0);
    // a different template → a new key
    let mut c3 = c.clone();
    c3.template.preset = data::config::TemplatePreset::Mftcoder;
    let enc3 = data::tokenize::Encoder::from_file(&tokenizer_path(), &c3.template).unwrap();
    assert_ne!(cache_path(&cache, &spec, &files, &c3, &enc3).unwrap(), p0);

    // a content change → a new entry with the new data, not the stale one
    std::fs::write(&data, lines(31, "y")).unwrap();
    let changed = load_task_cached(&cache, &spec, &c, &enc).unwrap();
    assert_eq!(changed, load_task(&spec, &c, &enc).unwrap());
    assert_ne!(changed, fresh);
    assert_eq!(entries(), 2);
    assert!(!std::fs::read_dir(&cache).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp")));
}

#[test]
fn a_corrupt_entry_is_an_error_not_silent_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("t.jsonl");
    std::fs::write(&data, lines(10, "z")).unwrap();
    let enc = encoder();
    let spec = task("t", &data);
    let c = cfg(vec![spec.clone()]);
    load_task_cached(dir.path(), &spec, &c, &enc).unwrap();
    let p = cache_path(dir.path(), &spec, std::slice::from_ref(&data), &c, &enc).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 9]).unwrap();
    let e = load_task_cached(dir.path(), &spec, &c, &enc).unwrap_err();
    assert!(e.to_string().contains("corrupt tokenization cache"), "{e}");
}

#[test]
fn concurrent_ranks_share_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("t.jsonl");
    std::fs::write(&data, lines(200, "w")).unwrap();
    let cache = dir.path().join("c");
    let enc = encoder();
    let spec = task("t", &data);
    let c = cfg(vec![spec.clone()]);
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| load_task_cached(&cache, &spec, &c, &enc).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    let names: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with(".bin"));
}

#[test]
fn a_lock_left_by_a_dead_builder_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("t.jsonl");
    std::fs::write(&data, lines(10, "d")).unwrap();
    let enc = encoder();
    let spec = task("t", &data);
    let c = cfg(vec![spec.clone()]);
    let p = cache_path(dir.path(), &spec, std::slice::from_ref(&data), &c, &enc).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    if host.trim().is_empty() {
        return; // no /proc: only the timeout applies
    }
    // a pid far above pid_max on Linux: certainly not running
    std::fs::write(
        p.with_extension("bin.lock"),
        format!("{} 4294967", host.trim()),
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    let t = load_task_cached(dir.path(), &spec, &c, &enc).unwrap();
    assert!(t0.elapsed().as_secs() < 60);
    assert_eq!(t, load_task(&spec, &c, &enc).unwrap());
    assert!(!p.with_extension("bin.lock").exists());
}
