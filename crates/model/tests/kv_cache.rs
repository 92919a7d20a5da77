//! Decoding with the KV cache against the full (training-path) forward: the hidden states of
//! positions fed incrementally (a prompt, then one token at a time) equal those of one forward
//! over the whole sequence, and greedy generation picks the same tokens as an argmax loop over
//! full forwards. Llama with GQA, Qwen2 biases, Phi with partial rotary and GQA; f64.

mod common;
use candle_core::{DType, Device, Tensor, D};
use common::max_abs_diff;
use model::{CausalLm, KvCache, Llama, LlamaConfig, Phi, PhiConfig, Sampling, TokenBatch};

fn models() -> Vec<(&'static str, Box<dyn CausalLm>)> {
    let dev = Device::Cpu;
    let llama = Llama::new_random(LlamaConfig::tiny(29, 16, 2, 4, 2), 1, 0.3, DType::F64, &dev);
    let mut qwen = LlamaConfig::tiny(29, 16, 1, 4, 1);
    qwen.model_type = "qwen2".into();
    let qwen = Llama::new_random(qwen, 2, 0.3, DType::F64, &dev);
    let mut phi = PhiConfig::tiny(29, 16, 2, 2);
    phi.num_key_value_heads = Some(1);
    let phi = Phi::new_random(phi, 3, 0.3, DType::F64, &dev);
    vec![
        ("llama gqa", Box::new(llama.unwrap())),
        ("qwen2", Box::new(qwen.unwrap())),
        ("phi", Box::new(phi.unwrap())),
    ]
}

fn full_hidden(m: &dyn CausalLm, ids: &[u32]) -> Tensor {
    m.hidden(&TokenBatch::inputs(1, ids.len(), ids.to_vec()), false)
        .unwrap()
}

#[test]
fn cached_hidden_states_equal_the_full_forward() {
    let ids: Vec<u32> = vec![3, 17, 5, 28, 0, 9, 9, 14, 1];
    for (name, m) in models() {
        let full = full_hidden(m.as_ref(), &ids);
        let mut cache = KvCache::new();
        // Prompt of 5, then 4 single tokens.
        let mut got = vec![m.hidden_cached(&ids[..5], &mut cache).unwrap().unwrap()];
        for i in 5..ids.len() {
            got.push(m.hidden_cached(&ids[i..=i], &mut cache).unwrap().unwrap());
        }
        assert_eq!(cache.len(), ids.len());
        let got = Tensor::cat(&got, 1).unwrap();
        let d = max_abs_diff(&got, &full);
        assert!(
            d < 1e-12,
            "{name}: cached vs full hidden states differ by {d:e}"
        );
    }
}

#[test]
fn greedy_generation_matches_an_argmax_loop_over_full_forwards() {
    let prompt: Vec<u32> = vec![4, 11, 2];
    for (name, m) in models() {
        let got = m.generate(&prompt, 8, &[], Sampling::Greedy).unwrap();
        let (w, b) = m.head(false);
        let mut tokens = prompt.clone();
        for _ in 0..8 {
            let h = full_hidden(m.as_ref(), &tokens);
            let last = h
                .narrow(1, tokens.len() - 1, 1)
                .unwrap()
                .squeeze(1)
                .unwrap();
            let mut logits = last.matmul(&w.t().unwrap()).unwrap();
            if let Some(b) = &b {
                logits = logits.broadcast_add(b).unwrap();
            }
            let next = logits
                .squeeze(0)
                .unwrap()
                .argmax(D::Minus1)
                .unwrap()
                .to_scalar::<u32>()
                .unwrap();
            tokens.push(next);
        }
        assert_eq!(got, tokens[prompt.len()..], "{name}");
    }
}

#[test]
fn padded_batch_hidden_states_equal_each_row_alone() {
    // Rows of 5, 2 and 4 prompt ids, left-padded to 5, then two tokens per row.
    let rows: [Vec<u32>; 3] = [vec![3, 17, 5, 28, 0], vec![9, 14], vec![1, 2, 3, 4]];
    let next: [[u32; 2]; 3] = [[7, 8], [20, 21], [11, 12]];
    for (name, m) in models() {
        let pad: Vec<usize> = rows.iter().map(|r| 5 - r.len()).collect();
        let mut cache = KvCache::with_padding(pad.clone());
        let ids: Vec<u32> = rows
            .iter()
            .zip(&pad)
            .flat_map(|(r, &p)| std::iter::repeat_n(28, p).chain(r.iter().copied()))
            .collect();
        let first = m.hidden_cached(&ids, &mut cache).unwrap().unwrap();
        let mut steps = vec![];
        for k in 0..2 {
            let ids: Vec<u32> = next.iter().map(|n| n[k]).collect();
            steps.push(m.hidden_cached(&ids, &mut cache).unwrap().unwrap());
        }
        for (r, row) in rows.iter().enumerate() {
            let mut all = row.clone();
            all.extend(next[r]);
            let alone = full_hidden(m.as_ref(), &all);
            let got = Tensor::cat(
                &[
                    first.get(r).unwrap().narrow(0, pad[r], row.len()).unwrap(),
                    steps[0].get(r).unwrap(),
                    steps[1].get(r).unwrap(),
                ],
                0,
            )
            .unwrap()
            .unsqueeze(0)
            .unwrap();
            let d = max_abs_diff(&got, &alone);
            assert!(
                d < 1e-12,
                "{name} row {r}: padded batch vs alone differ by {d:e}"
            );
        }
        // Dropping row 1 keeps the others' caches.
        cache.retain_rows(&[0, 2]).unwrap();
        assert_eq!(cache.padding(), [pad[0], pad[2]]);
        let h = m.hidden_cached(&[5, 6], &mut cache).unwrap().unwrap();
        let mut all = rows[2].clone();
        all.extend(next[2]);
        all.push(6);
        let alone = full_hidden(m.as_ref(), &all);
        let d = max_abs_diff(
            &h.get(1).unwrap().unsqueeze(0).unwrap(),
            &alone.narrow(1, all.len() - 1, 1).unwrap(),
        );
        assert!(d < 1e-12, "{name}: after retain_rows, {d:e}");
        // Dropping every row leaves an empty cache that a new prompt starts from position 0.
        cache.retain_rows(&[]).unwrap();
        assert!(cache.is_empty(), "{name}: {} positions left", cache.len());
        assert_eq!(cache.rows(), 1);
        let h = m.hidden_cached(&rows[0], &mut cache).unwrap().unwrap();
        let d = max_abs_diff(&h, &full_hidden(m.as_ref(), &rows[0]));
        assert!(d < 1e-12, "{name}: after dropping every row, {d:e}");
    }
}

#[test]
fn batched_greedy_generation_equals_one_prompt_at_a_time() {
    let prompts: Vec<Vec<u32>> = vec![
        vec![4, 11, 2],
        vec![7],
        vec![1, 2, 3, 4, 5, 6],
        vec![9, 9],
        vec![3, 1, 4, 1, 5],
    ];
    for (name, m) in models() {
        // Row r stops after 3 + r tokens or at token 0.
        let stop = |r: usize, out: &[u32]| out.len() >= 3 + r || out.last() == Some(&0);
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .enumerate()
            .map(|(r, p)| {
                m.generate_until(p, 10, Sampling::Greedy, &mut |out| stop(r, out))
                    .unwrap()
            })
            .collect();
        // All rows at once, and 2 rows at a time (finished rows replaced by queued prompts).
        for max_rows in [8, 2, 1] {
            let got = m
                .generate_batch(&prompts, 10, max_rows, &mut |r, out| stop(r, out))
                .unwrap();
            assert_eq!(got, alone, "{name}, {max_rows} rows at a time");
        }
    }
}
