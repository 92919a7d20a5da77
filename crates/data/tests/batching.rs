//! Batching, mixing, sharding, cursor, validation and probe, on synthetic in-memory datasets.
use data::batch::{Batch, SampleRef};
use data::config::{BatchMode, Mixing};
use data::dataset::{Dataset, TaskData, TaskStats};
use data::tokenize::Encoded;
use data::train::{Cursor, Shard, TrainSampler};
use data::valid::{batches_per_rank, valid_batches, ProbeSampler};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Sample (t, i) of length L: tokens encode their origin; loss 0 on the first half.
fn sample(t: usize, i: usize, len: usize) -> Encoded {
    let tokens = (0..len)
        .map(|p| (t * 1_000_000 + i * 1000 + p) as u32)
        .collect();
    let loss = (0..len).map(|p| (p >= len / 2) as u8).collect();
    Encoded { tokens, loss }
}

fn dataset(lens: &[Vec<usize>], valid: &[usize], max_seq_len: usize) -> Dataset {
    Dataset {
        max_seq_len,
        tasks: lens
            .iter()
            .enumerate()
            .map(|(t, ls)| TaskData {
                name: format!("t{t}"),
                train: ls
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| sample(t, i, l))
                    .collect(),
                valid: (0..valid[t])
                    .map(|i| sample(t, 500 + i, 3 + i % 5))
                    .collect(),
                test: vec![],
                stats: TaskStats::default(),
            })
            .collect(),
    }
}

/// The unpadded content of each row of a batch: (inputs, labels, mask, task ids, positions).
type RowContent = (Vec<u32>, Vec<u32>, Vec<u8>, Vec<u32>, Vec<u32>);
fn rows_of(b: &Batch) -> Vec<RowContent> {
    (0..b.rows)
        .map(|r| {
            let s = r * b.seq_len..(r + 1) * b.seq_len;
            let keep: Vec<usize> = s.clone().filter(|&i| b.segment_ids[i] != 0).collect();
            (
                keep.iter().map(|&i| b.input_ids[i]).collect(),
                keep.iter().map(|&i| b.labels[i]).collect(),
                keep.iter().map(|&i| b.loss_mask[i]).collect(),
                keep.iter().map(|&i| b.task_ids[i]).collect(),
                keep.iter().map(|&i| b.position_ids[i]).collect(),
            )
        })
        .collect()
}

fn mixing_strategy() -> impl Strategy<Value = Mixing> {
    prop_oneof![
        Just(Mixing::Proportional),
        Just(Mixing::Uniform),
        (0.5f64..4.0).prop_map(|t| Mixing::Temperature { t })
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The union over ranks of each step equals the 1-rank global batch, for 1, 2 and 3 ranks.
    #[test]
    fn sharding_over_1_2_3_ranks_gives_the_same_global_batches(
        lens in prop::collection::vec(prop::collection::vec(2usize..40, 4..40), 1..4),
        pack in any::<bool>(),
        mixing in mixing_strategy(),
        seed in 0u64..1000,
        k in 1usize..3,
    ) {
        let global = 6 * k;
        let valid = vec![1; lens.len()];
        let ds = dataset(&lens, &valid, 48);
        let mode = if pack { BatchMode::Pack } else { BatchMode::Padding };
        let total: usize = lens.iter().map(|l| l.len()).sum();
        prop_assume!(total >= global * 2);
        // a packed epoch may hold fewer rows than one global step: that is a config error
        let one = TrainSampler::new(&ds, mode, mixing, seed, global);
        prop_assume!(one.is_ok());
        let mut one = one.unwrap();
        let mut cursor = Cursor::default();
        for _ in 0..4 {
            let reference = one.rank_step(cursor, Shard { rank: 0, world_size: 1, micro_batch: global, grad_accum: 1 }).unwrap();
            prop_assert_eq!(reference.len(), 1);
            let want_rows = one.global_step_rows(cursor).unwrap();
            prop_assert_eq!(&reference[0].samples, &want_rows);
            let want = rows_of(&reference[0]);
            for ws in 1..=3usize {
                let per_rank = global / ws;
                let mb = if per_rank % 2 == 0 { 2 } else { 1 };
                let mut s = TrainSampler::new(&ds, mode, mixing, seed, global).unwrap();
                let mut got = Vec::new();
                let mut got_refs = Vec::new();
                for rank in 0..ws {
                    let shard = Shard { rank, world_size: ws, micro_batch: mb, grad_accum: per_rank / mb };
                    let batches = s.rank_step(cursor, shard).unwrap();
                    prop_assert_eq!(batches.len(), per_rank / mb);
                    for b in &batches {
                        prop_assert_eq!(b.rows, mb);
                        if pack { prop_assert_eq!(b.seq_len, 48); }
                        got.extend(rows_of(b));
                        got_refs.extend(b.samples.iter().cloned());
                    }
                }
                prop_assert_eq!(&got_refs, &want_rows);
                prop_assert_eq!(&got, &want);
            }
            cursor = one.advance(cursor);
        }
    }
}

#[test]
fn cursor_restores_the_identical_batches_across_epochs() {
    let lens = vec![(0..13).map(|i| 2 + i % 7).collect::<Vec<_>>(), vec![5; 7]];
    let ds = dataset(&lens, &[1, 1], 16);
    for mode in [BatchMode::Padding, BatchMode::Pack] {
        let shard = Shard {
            rank: 1,
            world_size: 2,
            micro_batch: 1,
            grad_accum: 2,
        };
        let mut s = TrainSampler::new(&ds, mode, Mixing::Uniform, 9, 4).unwrap();
        let mut c = Cursor::default();
        let mut seen = Vec::new();
        for _ in 0..12 {
            seen.push((c, s.rank_step(c, shard).unwrap()));
            c = s.advance(c);
        }
        assert!(
            seen.last().unwrap().0.epoch >= 1,
            "{mode:?} crossed an epoch"
        );
        for (c, batches) in &seen {
            let json = serde_json::to_string(c).unwrap();
            let restored: Cursor = serde_json::from_str(&json).unwrap();
            let mut fresh = TrainSampler::new(&ds, mode, Mixing::Uniform, 9, 4).unwrap();
            assert_eq!(&fresh.rank_step(restored, shard).unwrap(), batches);
        }
    }
}

#[test]
fn proportional_epoch_uses_every_train_sample_once() {
    let lens = vec![vec![3; 10], vec![4; 25], vec![2; 5]];
    let ds = dataset(&lens, &[1, 1, 1], 16);
    let mut s = TrainSampler::new(&ds, BatchMode::Padding, Mixing::Proportional, 3, 5).unwrap();
    assert_eq!(s.quotas(), &[10, 25, 5]);
    assert_eq!(s.steps_in_epoch(0), 8);
    for epoch in 0..2 {
        let mut all: Vec<SampleRef> = s.epoch_rows(epoch).iter().flatten().copied().collect();
        all.sort();
        let want: Vec<SampleRef> = lens
            .iter()
            .enumerate()
            .flat_map(|(t, l)| {
                (0..l.len()).map(move |i| SampleRef {
                    task: t as u32,
                    index: i as u32,
                })
            })
            .collect();
        assert_eq!(all, want);
    }
    assert_ne!(
        s.epoch_rows(0).to_vec(),
        s.epoch_rows(1).to_vec(),
        "reshuffled per epoch"
    );
}

#[test]
fn uniform_and_temperature_quotas() {
    let lens = vec![vec![3; 90], vec![3; 10]];
    let ds = dataset(&lens, &[1, 1], 16);
    let mut s = TrainSampler::new(&ds, BatchMode::Padding, Mixing::Uniform, 0, 10).unwrap();
    assert_eq!(s.quotas(), &[50, 50]);
    let rows = s.epoch_rows(0).to_vec();
    let small: Vec<u32> = rows
        .iter()
        .flatten()
        .filter(|r| r.task == 1)
        .map(|r| r.index)
        .collect();
    assert_eq!(small.len(), 50);
    // the small task is cycled: every sample 5 times
    let mut counts = BTreeMap::new();
    for i in small {
        *counts.entry(i).or_insert(0) += 1;
    }
    assert!(counts.values().all(|&c| c == 5), "{counts:?}");
    let s = TrainSampler::new(
        &ds,
        BatchMode::Padding,
        Mixing::Temperature { t: 2.0 },
        0,
        10,
    )
    .unwrap();
    // p ∝ sqrt(n): 3 : 1 → 75 : 25
    assert_eq!(s.quotas(), &[75, 25]);
    assert!((s.probabilities()[0] - 0.75).abs() < 1e-12);
}

#[test]
fn pack_mode_rows_restart_positions_and_keep_samples_whole() {
    let lens = vec![(0..40).map(|i| 2 + (i * 7) % 15).collect::<Vec<_>>()];
    let ds = dataset(&lens, &[1], 20);
    let mut s = TrainSampler::new(&ds, BatchMode::Pack, Mixing::Proportional, 5, 2).unwrap();
    let rows = s.epoch_rows(0).to_vec();
    let mut all: Vec<u32> = rows.iter().flatten().map(|r| r.index).collect();
    all.sort();
    assert_eq!(
        all,
        (0..40).collect::<Vec<_>>(),
        "every sample exactly once, whole"
    );
    for row in &rows {
        let used: usize = row.iter().map(|r| lens[0][r.index as usize] - 1).sum();
        assert!(used <= 20);
    }
    let shard = Shard {
        rank: 0,
        world_size: 1,
        micro_batch: 2,
        grad_accum: 1,
    };
    let b = &s.rank_step(Cursor::default(), shard).unwrap()[0];
    for r in 0..b.rows {
        let mut at = r * b.seq_len;
        for (k, sref) in b.samples[r].iter().enumerate() {
            let smp = &ds.tasks[0].train[sref.index as usize];
            for p in 0..smp.tokens.len() - 1 {
                assert_eq!(b.position_ids[at], p as u32);
                assert_eq!(b.segment_ids[at], k as u32 + 1);
                assert_eq!(b.input_ids[at], smp.tokens[p]);
                assert_eq!(b.labels[at], smp.tokens[p + 1]);
                assert_eq!(b.loss_mask[at], smp.loss[p + 1]);
                at += 1;
            }
        }
        // attention: causal inside a segment only
        for q in 0..b.seq_len {
            for k in 0..b.seq_len {
                let (sq, sk) = (
                    b.segment_ids[r * b.seq_len + q],
                    b.segment_ids[r * b.seq_len + k],
                );
                let want = k == q || (k < q && sq != 0 && sq == sk);
                assert_eq!(b.attends(r, q, k), want);
            }
        }
    }
}

#[test]
fn per_token_task_ids_give_per_task_token_counts() {
    let lens = vec![vec![6; 12], vec![9; 12], vec![4; 12]];
    let ds = dataset(&lens, &[1, 1, 1], 32);
    let mut s = TrainSampler::new(&ds, BatchMode::Pack, Mixing::Uniform, 1, 4).unwrap();
    let shard = Shard {
        rank: 0,
        world_size: 1,
        micro_batch: 4,
        grad_accum: 1,
    };
    let b = &s.rank_step(Cursor::default(), shard).unwrap()[0];
    let mut want = vec![0u64; 3];
    for r in b.samples.iter().flatten() {
        let smp = &ds.tasks[r.task as usize].train[r.index as usize];
        want[r.task as usize] += smp.loss[1..].iter().map(|&x| x as u64).sum::<u64>();
    }
    assert_eq!(b.loss_tokens_per_task(3), want);
    assert_eq!(b.loss_tokens(), want.iter().sum::<u64>());
}

#[test]
fn validation_is_split_evenly_with_masked_fillers() {
    let ds = dataset(&[vec![3; 4], vec![3; 4]], &[7, 1], 16);
    for ws in 1..=3 {
        let mb = 2;
        let mut seen = Vec::new();
        for rank in 0..ws {
            let batches = valid_batches(&ds, 0, rank, ws, mb);
            assert_eq!(batches.len(), batches_per_rank(7, ws, mb));
            for b in &batches {
                assert_eq!(b.rows, mb);
                for (r, row) in b.samples.iter().enumerate() {
                    if row.is_empty() {
                        let s = r * b.seq_len..(r + 1) * b.seq_len;
                        assert!(b.loss_mask[s].iter().all(|&m| m == 0), "filler is masked");
                    }
                    seen.extend(row.iter().map(|x| x.index));
                }
            }
        }
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
    }
}

#[test]
fn probe_is_rank_independent_and_cycles() {
    let ds = dataset(&[vec![3; 4], vec![3; 4], vec![3; 4]], &[5, 2, 9], 16);
    let p = ProbeSampler::new(&ds, 4, 11);
    for probe in 0..3u64 {
        let global = p.probe_refs(probe);
        let mut per_task = [0; 3];
        for r in &global {
            per_task[r.task as usize] += 1;
        }
        assert_eq!(per_task, [4, 4, 4]);
        for ws in 1..=3 {
            let mut union = Vec::new();
            let mut counts = Vec::new();
            for rank in 0..ws {
                let bs = p.rank_batches(&ds, probe, rank, ws, 3);
                counts.push(bs.len());
                union.extend(bs.iter().flat_map(|b| b.samples.iter().flatten().copied()));
            }
            assert!(counts.iter().all(|&c| c == counts[0]));
            assert_eq!(union, global, "ws={ws}");
        }
    }
    // cycling: task 0 has 5 valid samples, probes of 4 → the first 5 draws cover all of them
    let drawn: Vec<u32> = (0..2u64)
        .flat_map(|k| p.probe_refs(k))
        .filter(|r| r.task == 0)
        .map(|r| r.index)
        .take(5)
        .collect();
    let mut sorted = drawn.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
}
