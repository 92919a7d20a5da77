//! Helpers shared by the model test files.

use candle_core::{Device, Tensor};

/// `max |a - b|` over all elements of two float tensors of the same shape and dtype, as f64.
#[allow(dead_code)]
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Sets every LoRA B of `m` to the deterministic non-zero values `((i * 37 % 11) - 5) * scale`
/// (A keeps its init), so the adapters change the output.
#[allow(dead_code)] // not every test file has adapters
pub fn perturb_lora_b(m: &model::Model, scale: f64) {
    use model::CausalLm;
    for (n, v) in m.params() {
        if n.contains("lora_B") {
            let k = v.elem_count();
            let vals: Vec<f64> = (0..k)
                .map(|i| ((i * 37 % 11) as f64 - 5.0) * scale)
                .collect();
            let t = Tensor::from_vec(vals, v.dims(), &Device::Cpu)
                .unwrap()
                .to_dtype(v.dtype())
                .unwrap();
            v.set(&t).unwrap();
        }
    }
}

/// All elements of a float tensor as f64, row-major.
#[allow(dead_code)]
pub fn as_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Cosine of the angle between two vectors.
#[allow(dead_code)]
pub fn cosine(x: &[f64], y: &[f64]) -> f64 {
    let dot: f64 = x.iter().zip(y).map(|(a, b)| a * b).sum();
    let nx = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    let ny = y.iter().map(|v| v * v).sum::<f64>().sqrt();
    dot / (nx * ny)
}

/// A bf16 model's step `a` agrees with the f32 step `b` on the same (rounded) weights:
/// objective and per-task losses within 1%, the same gradients, each finite, in the dtype of
/// its parameter in `params` (the bf16 model's) and pointing the f32 way (cosine > 0.99).
#[allow(dead_code)]
pub fn assert_bf16_step_agrees(
    a: &model::StepOutput,
    b: &model::StepOutput,
    params: &std::collections::BTreeMap<String, candle_core::Var>,
    what: &str,
) {
    let rel = (a.report.objective - b.report.objective).abs() / b.report.objective;
    assert!(
        rel < 1e-2,
        "{what}: objective {} vs {}",
        a.report.objective,
        b.report.objective
    );
    for (task, (x, y)) in a.report.per_task.iter().zip(&b.report.per_task).enumerate() {
        assert_eq!(x.tokens, y.tokens, "{what} task {task}");
        assert!(
            (x.mean() - y.mean()).abs() < 1e-2 * y.mean(),
            "{what} task {task}"
        );
    }
    assert_eq!(
        a.grads.keys().collect::<Vec<_>>(),
        b.grads.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (name, g) in &a.grads {
        assert_eq!(g.dtype(), params[name].dtype(), "{what} {name}");
        let (x, y) = (as_f64(g), as_f64(&b.grads[name]));
        assert!(x.iter().all(|v| v.is_finite()), "{what} {name}");
        if y.iter().any(|&v| v != 0.0) {
            let c = cosine(&x, &y);
            assert!(c > 0.99, "{what} {name}: cosine {c}");
        }
    }
}
