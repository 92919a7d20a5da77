//! Small numeric kernels shared by the weighting rules. All float64.

/// Sums of absolute values below this count as zero (guards of the pinned semantics, README §2).
pub(crate) const ZERO_NORM: f64 = 1e-12;

/// Softmax of `logits` written into a new vector, shifted by the maximum for stability.
///
/// `logits` must be non-empty and finite; the result is positive and sums to 1 (up to rounding).
pub(crate) fn softmax(logits: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut out: Vec<f64> = logits.into_iter().collect();
    let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for x in &mut out {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in &mut out {
        *x /= sum;
    }
    out
}

/// `x` divided by its sum (for positive inputs).
pub(crate) fn normalize(mut x: Vec<f64>) -> Vec<f64> {
    let sum: f64 = x.iter().sum();
    for v in &mut x {
        *v /= sum;
    }
    x
}

/// `1/k` repeated `k` times.
pub(crate) fn uniform(k: usize) -> Vec<f64> {
    vec![1.0 / k as f64; k]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_matches_definition() {
        let x = [0.5f64, -1.0, 2.0];
        let z: f64 = x.iter().map(|v| v.exp()).sum();
        let got = softmax(x);
        for (g, v) in got.iter().zip(x) {
            assert!((g - v.exp() / z).abs() < 1e-15);
        }
    }

    #[test]
    fn softmax_survives_huge_logits() {
        let got = softmax([1e300, 0.0]);
        assert_eq!(got, vec![1.0, 0.0]);
    }
}
