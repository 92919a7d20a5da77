//! `metrics.jsonl` written by an earlier version (commit f7b465e, before the typed records:
//! a shortened demo run on 2 ranks, header + steps 0-10, the first CoBa computation step 50
//! and the evaluation step 59) reads into the typed records, and writing each record again
//! gives the same bytes as the line it came from (same keys, same order, same numbers).

use trainer::metrics::{Header, MetricsFile, StepRecord};

const OLD: &str = include_str!("data/metrics-f7b465e.jsonl");

#[test]
fn a_metrics_file_of_the_earlier_version_reads_and_writes_back_byte_for_byte() {
    let file = MetricsFile::parse(OLD.as_bytes()).unwrap();
    let lines: Vec<&str> = OLD.lines().collect();
    assert_eq!(serde_json::to_string(&file.header).unwrap(), lines[0]);
    assert_eq!(file.steps.len(), lines.len() - 1);
    for (record, line) in file.steps.iter().zip(&lines[1..]) {
        assert_eq!(&serde_json::to_string(record).unwrap(), line);
    }
    // Typed values where the old writer put them.
    let h: &Header = &file.header;
    assert_eq!((h.world_size, h.method.as_deref()), (Some(2), Some("coba")));
    assert_eq!(h.tasks.len(), 6);
    let step = |s: u64| -> &StepRecord { file.steps.iter().find(|r| r.step == s).unwrap() };
    assert!(step(5).val_ratio.is_some() && step(5).probe_val_loss.is_some());
    assert!(step(4).val_ratio.is_none());
    assert!(step(50).df.is_some() && step(50).rcs.as_ref().is_some_and(|m| m.len() == 6));
    assert_eq!(step(50).weights_source.as_deref(), Some("computed"));
    assert!(step(59).val_ratio_mean.is_some() && step(59).val_loss.is_some());
    let w: f64 = step(0)
        .weights
        .as_ref()
        .unwrap()
        .values()
        .map(|v| v.unwrap())
        .sum();
    assert!((w - 1.0).abs() < 1e-12, "weights sum to 1: {w}");
}
