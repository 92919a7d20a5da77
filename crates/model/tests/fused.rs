//! The fused CPU kernels (`model::fused`) against the composed candle forms in
//! `model::layers` (independent code: elementary candle ops and candle's autodiff):
//! values and gradients in f64 at 1e-12, values in f32 at 1e-5, including packed segments,
//! partial rotary and grouped heads. The whole models are also gradient-checked against finite
//! differences in `model_gradcheck.rs`, and their logits against candle-transformers.

mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::max_abs_diff;
use model::fused::{
    attention, cross_entropy, exp_f32, head_cross_entropy, linear, merge_heads, rms_norm,
    split_heads, swiglu, AttentionMask, RopeTables,
};
use model::init::SplitMix64;
use model::layers;

fn rand(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    let v = SplitMix64::new(seed).normal_vec(n, 1.0);
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Compares `fused(inputs)` with `composed(inputs)` and the gradients of `sum(out * r)` (a
/// fixed random `r`) with respect to every input, in f64.
fn check(
    name: &str,
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> Tensor,
    composed: impl Fn(&[Tensor]) -> Tensor,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let yf = fused(&ts);
    let yc = composed(&ts);
    let d = max_abs_diff(&yf, &yc);
    assert!(d < 1e-12, "{name}: values differ by {d:e}");
    let r = rand(yf.dims(), 4242, DType::F64);
    let gf = (&yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gc = (&yc * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, v) in vars.iter().enumerate() {
        let a = gf.get(v.as_tensor()).expect("fused gradient");
        let b = gc.get(v.as_tensor()).expect("composed gradient");
        let d = max_abs_diff(a, b);
        assert!(d < 1e-12, "{name}: gradient of input {i} differs by {d:e}");
    }
}

fn segments() -> Vec<u32> {
    // Row 0: two packed samples (positions 0..4 and 4..7); row 1: one sample.
    vec![1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
}

fn positions() -> Vec<u32> {
    vec![0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6]
}

#[test]
fn rms_norm_matches_composed() {
    let x = rand(&[2, 7, 12], 1, DType::F64);
    let w = rand(&[12], 2, DType::F64);
    check(
        "rms_norm",
        &[x, w],
        |t| rms_norm(&t[0], &t[1], 1e-5).unwrap(),
        |t| layers::rms_norm(&t[0], &t[1], 1e-5).unwrap(),
    );
}

#[test]
fn linear_matches_composed() {
    let x = rand(&[2, 7, 12], 3, DType::F64);
    let w = rand(&[5, 12], 4, DType::F64);
    let b = rand(&[5], 5, DType::F64);
    check(
        "linear",
        &[x, w, b],
        |t| linear(&t[0], &t[1], Some(&t[2])).unwrap(),
        |t| layers::linear(&t[0], &t[1], Some(&t[2])).unwrap(),
    );
}

#[test]
fn swiglu_matches_composed() {
    // 2 x 7 x 700 = 9,800 elements: two full blocks of 4,096 and a partial one.
    let g = rand(&[2, 7, 700], 6, DType::F64);
    let u = rand(&[2, 7, 700], 7, DType::F64);
    check(
        "swiglu",
        &[g, u],
        |t| swiglu(&t[0], &t[1]).unwrap(),
        |t| (t[0].silu().unwrap() * &t[1]).unwrap(),
    );
}

#[test]
fn split_heads_with_full_and_partial_rope_matches_composed() {
    let (b, s, h, hd) = (2, 7, 3, 8);
    for rot in [8, 4] {
        let tables =
            RopeTables::new(&positions(), b, s, rot, 10_000.0, DType::F64, &Device::Cpu).unwrap();
        let (cos, sin) =
            layers::rope_tables(&positions(), b, s, rot, 10_000.0, DType::F64, &Device::Cpu)
                .unwrap();
        let x = rand(&[b, s, h * hd], 8, DType::F64);
        check(
            &format!("split_heads rot {rot}"),
            &[x],
            |t| split_heads(&t[0], h, Some(&tables)).unwrap(),
            |t| {
                let y = t[0]
                    .reshape((b, s, h, hd))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap();
                layers::partial_rope(&y, rot, &cos, &sin).unwrap()
            },
        );
    }
    let x = rand(&[b, s, h * hd], 9, DType::F64);
    check(
        "split_heads without rope",
        &[x],
        |t| split_heads(&t[0], h, None).unwrap(),
        |t| {
            t[0].reshape((b, s, h, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        },
    );
    let y = rand(&[b, h, s, hd], 10, DType::F64);
    check(
        "merge_heads",
        &[y],
        |t| merge_heads(&t[0]).unwrap(),
        |t| {
            t[0].transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
                .reshape((b, s, h * hd))
                .unwrap()
        },
    );
}

fn composed_attention(t: &[Tensor], scale: f64, seg: &[u32]) -> Tensor {
    let (b, _, s, _) = t[0].dims4().unwrap();
    let mask = layers::attention_mask(seg, b, s, DType::F64, &Device::Cpu).unwrap();
    let att = t[0]
        .matmul(&t[1].t().unwrap())
        .unwrap()
        .affine(scale, 0.0)
        .unwrap()
        .broadcast_add(&mask)
        .unwrap();
    layers::softmax_last(&att).unwrap().matmul(&t[2]).unwrap()
}

#[test]
fn attention_matches_composed_with_and_without_segments() {
    let (b, h, s, hd) = (2, 3, 7, 5);
    let scale = 1.0 / (hd as f64).sqrt();
    for seg in [segments(), Vec::new()] {
        let mask = AttentionMask::new(b, s, &seg).unwrap();
        let q = rand(&[b, h, s, hd], 11, DType::F64);
        let k = rand(&[b, h, s, hd], 12, DType::F64);
        let v = rand(&[b, h, s, hd], 13, DType::F64);
        check(
            &format!("attention, {} segment ids", seg.len()),
            &[q, k, v],
            |t| attention(&t[0], &t[1], &t[2], scale, &mask).unwrap(),
            |t| composed_attention(t, scale, &seg),
        );
    }
}

#[test]
fn cross_entropy_matches_log_softmax_gather() {
    let logits = rand(&[9, 37], 15, DType::F64).affine(4.0, 0.0).unwrap();
    let labels: Vec<u32> = (0..9).map(|i| (i * 7 % 37) as u32).collect();
    let ids = Tensor::from_slice(&labels, (9, 1), &Device::Cpu).unwrap();
    check(
        "cross_entropy",
        &[logits],
        |t| cross_entropy(&t[0], &labels).unwrap(),
        |t| {
            layers::log_softmax_last(&t[0])
                .unwrap()
                .gather(&ids, 1)
                .unwrap()
                .squeeze(1)
                .unwrap()
                .neg()
                .unwrap()
        },
    );
    assert!(cross_entropy(&rand(&[2, 3], 1, DType::F64), &[0, 3]).is_err());
}

#[test]
fn head_cross_entropy_matches_matmul_log_softmax_gather() {
    let h = rand(&[9, 6], 16, DType::F64);
    let w = rand(&[37, 6], 17, DType::F64).affine(2.0, 0.0).unwrap();
    let labels: Vec<u32> = (0..9).map(|i| (i * 5 % 37) as u32).collect();
    let ids = Tensor::from_slice(&labels, (9, 1), &Device::Cpu).unwrap();
    let composed = |h: &Tensor, w: &Tensor, b: Option<&Tensor>| {
        let logits = h.matmul(&w.t().unwrap()).unwrap();
        let logits = match b {
            Some(b) => logits.broadcast_add(b).unwrap(),
            None => logits,
        };
        layers::log_softmax_last(&logits)
            .unwrap()
            .gather(&ids, 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .neg()
            .unwrap()
    };
    check(
        "head_cross_entropy",
        &[h.clone(), w.clone()],
        |t| head_cross_entropy(&t[0], &t[1], None, &labels).unwrap(),
        |t| composed(&t[0], &t[1], None),
    );
    let b = rand(&[37], 18, DType::F64);
    check(
        "head_cross_entropy with a bias",
        &[h, w, b],
        |t| head_cross_entropy(&t[0], &t[1], Some(&t[2]), &labels).unwrap(),
        |t| composed(&t[0], &t[1], Some(&t[2])),
    );
}

#[test]
fn f32_kernels_match_composed_within_1e_5() {
    let (b, h, s, hd) = (2, 3, 7, 8);
    let f = |t: Tensor| t.to_dtype(DType::F32).unwrap();
    let q = f(rand(&[b, h, s, hd], 21, DType::F64));
    let k = f(rand(&[b, h, s, hd], 22, DType::F64));
    let v = f(rand(&[b, h, s, hd], 23, DType::F64));
    let seg = segments();
    let mask = AttentionMask::new(b, s, &seg).unwrap();
    let a = attention(&q, &k, &v, 0.3, &mask).unwrap();
    let m = layers::attention_mask(&seg, b, s, DType::F32, &Device::Cpu).unwrap();
    let c = layers::softmax_last(
        &q.matmul(&k.t().unwrap())
            .unwrap()
            .affine(0.3, 0.0)
            .unwrap()
            .broadcast_add(&m)
            .unwrap(),
    )
    .unwrap()
    .matmul(&v)
    .unwrap();
    assert!(max_abs_diff(&a, &c) < 1e-5);
    let logits = f(rand(&[5, 300], 24, DType::F64).affine(5.0, 0.0).unwrap());
    let labels = [1u32, 50, 299, 0, 7];
    let ids = Tensor::from_slice(&labels, (5, 1), &Device::Cpu).unwrap();
    let ce = cross_entropy(&logits, &labels).unwrap();
    let reference = layers::log_softmax_last(&logits)
        .unwrap()
        .gather(&ids, 1)
        .unwrap()
        .squeeze(1)
        .unwrap()
        .neg()
        .unwrap();
    assert!(max_abs_diff(&ce, &reference) < 1e-5);
    let g = f(rand(&[3, 500], 25, DType::F64).affine(3.0, 0.0).unwrap());
    let u = f(rand(&[3, 500], 26, DType::F64));
    let sw = swiglu(&g, &u).unwrap();
    assert!(max_abs_diff(&sw, &(g.silu().unwrap() * &u).unwrap()) < 1e-5);
    let x = f(rand(&[4, 64], 27, DType::F64));
    let w = f(rand(&[64], 28, DType::F64));
    let rn = rms_norm(&x, &w, 1e-6).unwrap();
    assert!(max_abs_diff(&rn, &layers::rms_norm(&x, &w, 1e-6).unwrap()) < 1e-5);
}

#[test]
fn exp_f32_is_within_two_ulp_of_exp() {
    let mut worst = 0.0f64;
    let n = 2_000_000;
    for i in 0..=n {
        let x = -87.0f32 + 175.0 * i as f32 / n as f32;
        let exact = (x as f64).exp();
        let got = exp_f32(x) as f64;
        let ulp = (exact as f32).abs() * f32::EPSILON;
        worst = worst.max((got - exact).abs() / ulp as f64);
    }
    assert!(worst <= 2.0, "worst error {worst} ulp");
    assert_eq!(exp_f32(0.0), 1.0);
    // Clamped ends: never infinite, never negative.
    assert!(exp_f32(1000.0).is_finite() && exp_f32(-1000.0) >= 0.0);
    assert!(exp_f32(f32::NEG_INFINITY) < 1e-37);
}

/// Gradients of `sum(out * r)` w.r.t. `x`, computed by `backward` twice on the same graph.
fn grad_twice(x: &Var, out: &Tensor) -> (Tensor, Tensor) {
    let r = rand(out.dims(), 77, out.dtype());
    let loss = (out * &r).unwrap().sum_all().unwrap();
    let first = loss.backward().unwrap();
    let second = loss.backward().unwrap();
    (
        first.get(x.as_tensor()).unwrap().clone(),
        second.get(x.as_tensor()).unwrap().clone(),
    )
}

#[test]
fn a_second_backward_through_cached_kernels_gives_the_same_gradient() {
    // attention and head_cross_entropy hand their saved activations to the first backward; a
    // second backward through the same graph must recompute them, not fail.
    let q = Var::from_tensor(&rand(&[2, 3, 7, 5], 31, DType::F64)).unwrap();
    let mask = AttentionMask::new(2, 7, &segments()).unwrap();
    let o = attention(q.as_tensor(), q.as_tensor(), q.as_tensor(), 0.4, &mask).unwrap();
    let (a, b) = grad_twice(&q, &o);
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    let h = Var::from_tensor(&rand(&[9, 6], 32, DType::F64)).unwrap();
    let w = rand(&[37, 6], 33, DType::F64);
    let labels: Vec<u32> = (0..9).map(|i| (i * 5 % 37) as u32).collect();
    let nll = head_cross_entropy(h.as_tensor(), &w, None, &labels).unwrap();
    let (a, b) = grad_twice(&h, &nll);
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn cross_entropy_gradient_is_exact_when_the_label_logit_is_far_below() {
    // The log-sum-exp is kept from the forward, not rebuilt as nll + logit[label] (which is
    // NaN for a -inf label logit and loses every digit for -1e9).
    for (row, want) in [
        (
            [f64::NEG_INFINITY, 1.0, 2.0],
            [-1.0, 0.268_941_421_369_995, 0.731_058_578_630_005],
        ),
        ([0.0, 0.0, -1e9], [0.5, 0.5, -1.0]),
    ] {
        for dtype in [DType::F64, DType::F32] {
            let x = Var::from_tensor(
                &Tensor::from_slice(&row, (1, 3), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap();
            let label = if row[0].is_infinite() { 0 } else { 2 };
            let grads = cross_entropy(x.as_tensor(), &[label])
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g = grads
                .get(x.as_tensor())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for (got, want) in g.iter().zip(want) {
                assert!((got - want).abs() < 1e-6, "{row:?} {dtype:?}: {g:?}");
            }
        }
    }
}

#[test]
fn empty_inputs_take_the_composed_path() {
    let x = Tensor::zeros((5, 0), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((3, 0), DType::F32, &Device::Cpu).unwrap();
    let y = linear(&x, &w, None).unwrap();
    assert_eq!(y.dims(), [5, 3]);
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vec![0.0; 15]
    );
    // A later fused op still works (nothing poisoned the thread pool).
    let x = rand(&[4, 8], 34, DType::F32);
    let w = rand(&[8], 35, DType::F32);
    assert!(rms_norm(&x, &w, 1e-6).is_ok());
}
