//! bf16 on the CPU (the device-generic composed paths): the statistics that lose precision in
//! 16 bits are computed in f32 (RMSNorm, LayerNorm, softmax, log-softmax / cross-entropy), so
//! a bf16 model's values stay within bf16 rounding of an f64 reference computed from the same
//! (bf16-representable) inputs, and its loss is an f32 number.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{as_f64, assert_bf16_step_agrees};
use model::fused::cross_entropy;
use model::layers::{layer_norm, rms_norm, softmax_last};
use model::{CausalLm, Llama, LlamaConfig, LossOptions, TokenBatch};

/// Deterministic values in `[-scale, scale)`, rounded to bf16 (so f32/f64 references see the
/// very inputs the bf16 path sees).
fn bf16_values(n: usize, scale: f64, seed: u64) -> Vec<f64> {
    let mut s = seed;
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            (2.0 * u - 1.0) * scale
        })
        .collect();
    round_bf16(&v)
}

/// `v` rounded to bf16 (round to nearest even, candle's conversion) and widened back.
fn round_bf16(v: &[f64]) -> Vec<f64> {
    as_f64(&tensor(v, &[v.len()], DType::BF16))
}

fn tensor(v: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// bf16 keeps 8 significant bits: one rounding is within 2^-9 relative.
const BF16_ULP: f64 = 1.0 / 256.0;

#[test]
fn rms_and_layer_norm_of_bf16_inputs_are_within_bf16_rounding_of_f64() {
    let (rows, d) = (6, 96);
    // Rows of very different scales: a sum of squares in bf16 would lose the small ones.
    let mut x = bf16_values(rows * d, 1.0, 1);
    for (i, v) in x.iter_mut().enumerate() {
        *v *= [1e-3, 1.0, 30.0, 0.1, 300.0, 2.0][i / d];
    }
    let x = round_bf16(&x);
    let w = bf16_values(d, 2.0, 2);
    let b = bf16_values(d, 0.5, 3);
    let got = as_f64(
        &rms_norm(
            &tensor(&x, &[rows, d], DType::BF16),
            &tensor(&w, &[d], DType::BF16),
            1e-6,
        )
        .unwrap(),
    );
    let got_ln = as_f64(
        &layer_norm(
            &tensor(&x, &[rows, d], DType::BF16),
            &tensor(&w, &[d], DType::BF16),
            &tensor(&b, &[d], DType::BF16),
            1e-5,
        )
        .unwrap(),
    );
    for r in 0..rows {
        let row = &x[r * d..(r + 1) * d];
        let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + 1e-6).sqrt();
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
        let inv_ln = 1.0 / (var + 1e-5).sqrt();
        for j in 0..d {
            // Two roundings (the normalised value, then the product with w).
            let want = row[j] * inv * w[j];
            let tol = 2.0 * BF16_ULP * want.abs() + 1e-30;
            assert!(
                (got[r * d + j] - want).abs() <= tol,
                "rms [{r}, {j}]: {} vs {want}",
                got[r * d + j]
            );
            // Three roundings (normalised, times w, plus b) against the magnitudes involved.
            let n = (row[j] - mean) * inv_ln;
            let want = n * w[j] + b[j];
            let tol = 3.0 * BF16_ULP * ((n * w[j]).abs() + b[j].abs()) + 1e-30;
            assert!(
                (got_ln[r * d + j] - want).abs() <= tol,
                "ln [{r}, {j}]: {} vs {want}",
                got_ln[r * d + j]
            );
        }
    }
}

#[test]
fn bf16_softmax_and_cross_entropy_are_computed_in_f32() {
    let (n, vocab) = (5, 3000);
    let logits = bf16_values(n * vocab, 12.0, 4);
    let labels: Vec<u32> = (0..n as u32).map(|i| i * 577 % vocab as u32).collect();
    let lb = tensor(&logits, &[n, vocab], DType::BF16);
    let nll = cross_entropy(&lb, &labels).unwrap();
    assert_eq!(
        nll.dtype(),
        DType::F32,
        "the loss is not rounded to 16 bits"
    );
    let got = as_f64(&nll);
    // f64 reference on the same values.
    for r in 0..n {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        let want = lse - row[labels[r] as usize];
        assert!(
            (got[r] - want).abs() <= 1e-5 * want.abs().max(1.0),
            "row {r}: {} vs {want}",
            got[r]
        );
        // A bf16 loss could not even represent it to better than 2^-9 relative.
    }
    // The gradient comes back in bf16, within bf16 rounding of softmax - onehot.
    let var = candle_core::Var::from_tensor(&lb).unwrap();
    let g = cross_entropy(var.as_tensor(), &labels)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = g.get(var.as_tensor()).unwrap();
    assert_eq!(g.dtype(), DType::BF16);
    let g = as_f64(g);
    for r in 0..n {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = row.iter().map(|v| (v - max).exp()).sum();
        for j in 0..vocab {
            let p = (row[j] - max).exp() / z;
            let want = p - f64::from(j == labels[r] as usize);
            let got = g[r * vocab + j];
            assert!(
                (got - want).abs() <= BF16_ULP * want.abs() + 1e-7,
                "[{r}, {j}]: {got} vs {want}"
            );
        }
    }
    // Softmax probabilities of bf16 scores: f32 inside, rounded once.
    let p = as_f64(&softmax_last(&lb).unwrap());
    for r in 0..n {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = row.iter().map(|v| (v - max).exp()).sum();
        for j in (0..vocab).step_by(97) {
            let want = (row[j] - max).exp() / z;
            assert!((p[r * vocab + j] - want).abs() <= BF16_ULP * want + 1e-30);
        }
    }
}

#[test]
fn a_bf16_llama_step_matches_f32_on_the_same_weights() {
    let mut cfg = LlamaConfig::tiny(64, 32, 2, 4, 2);
    cfg.intermediate_size = 48;
    let f32_model = Llama::new_random(cfg.clone(), 3, 0.05, DType::F32, &Device::Cpu).unwrap();
    // The same weights in bf16, and an f32 model of exactly those rounded weights.
    let rounded: Vec<(String, Tensor)> = f32_model
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::BF16).unwrap()))
        .collect();
    let bf16 =
        Llama::from_tensors(cfg.clone(), rounded.clone(), DType::BF16, &Device::Cpu).unwrap();
    let reference = Llama::from_tensors(cfg, rounded, DType::F32, &Device::Cpu).unwrap();
    let ids: Vec<u32> = (0..40).map(|i| (i * 13 + 7) % 64).collect();
    let mut batch = TokenBatch::from_sequence(&ids, 4, 0);
    batch.task_ids.iter_mut().skip(20).for_each(|t| *t = 1);
    let scale = [1.0 / 20.0, 1.0 / 16.0];
    let opts = LossOptions::default();
    let a = bf16.forward_backward(&batch, &scale, opts).unwrap();
    let b = reference.forward_backward(&batch, &scale, opts).unwrap();
    // Gradients in bf16, finite, pointing the f32 way (cosine > 0.99 per tensor).
    assert_bf16_step_agrees(&a, &b, bf16.params(), "llama");
}
