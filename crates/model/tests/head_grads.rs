//! Per-task LM-head gradients from detached hidden states (GradNorm's `G_i`) equal the head
//! weight's gradient of the model's own forward/backward with the other tasks' scale set to 0
//! (f64, untied Llama with GQA and Phi with a head bias).

use candle_core::{DType, Device};
use model::head_grads::head_task_gradients;
use model::{CausalLm, Llama, LlamaConfig, LossOptions, Phi, PhiConfig, TokenBatch};

fn batch(vocab: u32) -> TokenBatch {
    let mut rng = model::init::SplitMix64::new(5);
    let mut tok = || (rng.next_u64() % vocab as u64) as u32;
    let (rows, seq) = (2, 7);
    let n = rows * seq;
    TokenBatch {
        rows,
        seq_len: seq,
        input_ids: (0..n).map(|_| tok()).collect(),
        labels: (0..n).map(|_| tok()).collect(),
        loss_mask: vec![0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0],
        position_ids: vec![0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6],
        segment_ids: vec![1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1],
        task_ids: vec![0, 0, 0, 0, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0],
        dropout_keys: Vec::new(),
    }
}

fn check(m: &dyn CausalLm, name: &str) {
    let b = batch(m.vocab_size() as u32);
    let got = head_task_gradients(m, &b, 3).unwrap();
    let (head, _) = m.head_names();
    for k in 0..3 {
        let mut scale = [0.0; 3];
        scale[k] = 1.0;
        let want = &m
            .forward_backward(&b, &scale, LossOptions::default())
            .unwrap()
            .grads[head];
        let d = (&got[k] - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let scale_of = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            d < 1e-12,
            "{name} task {k}: differs by {d:e} (max {scale_of:e})"
        );
        if k == 1 {
            assert_eq!(scale_of, 0.0, "task 1 has no tokens");
        } else {
            assert!(scale_of > 1e-3, "{name} task {k}: a real gradient");
        }
    }
}

#[test]
fn head_gradients_per_task_equal_the_model_backward() {
    let llama = Llama::new_random(
        LlamaConfig::tiny(31, 8, 2, 4, 2),
        3,
        0.3,
        DType::F64,
        &Device::Cpu,
    )
    .unwrap();
    check(&llama, "llama");
    let phi = Phi::new_random(
        PhiConfig::tiny(31, 8, 1, 2),
        4,
        0.3,
        DType::F64,
        &Device::Cpu,
    )
    .unwrap();
    check(&phi, "phi");
}
