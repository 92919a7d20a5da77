//! The weighted objective of one step and the per-token scales that make its gradient exact
//! when summed over micro-batches and ranks (the loss normalisation of the global batch).

/// Per-task token scale `w_i / (N_i Σ_{j present} w_j)` (N_i = the task's global loss-token
/// count; 0 for an absent task), so that gradients summed over micro-batches and ranks are
/// exactly those of `Σ_i w_i L_i / Σ_{i present} w_i`.
pub fn token_scales(weights: &[f64], counts: &[f64]) -> Vec<f64> {
    let present_w: f64 = weights
        .iter()
        .zip(counts)
        .filter(|(_, &n)| n > 0.0)
        .map(|(w, _)| w)
        .sum();
    weights
        .iter()
        .zip(counts)
        .map(|(&w, &n)| {
            if n > 0.0 && present_w > 0.0 {
                w / (n * present_w)
            } else {
                0.0
            }
        })
        .collect()
}

/// `Σ w_i L_i / Σ_{i present} w_i` over the tasks with a loss.
pub fn objective(weights: &[f64], train_loss: &[Option<f64>]) -> f64 {
    let (num, den) = weights
        .iter()
        .zip(train_loss)
        .filter_map(|(w, l)| l.map(|l| (w * l, *w)))
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    num / f64::max(den, f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_scales_normalise_over_present_tasks() {
        // Task 1 has no tokens: the others share the objective by weight.
        let s = token_scales(&[0.5, 0.3, 0.2], &[10.0, 0.0, 4.0]);
        assert_eq!(s[1], 0.0);
        assert!((s[0] - 0.5 / (10.0 * 0.7)).abs() < 1e-15);
        assert!((s[2] - 0.2 / (4.0 * 0.7)).abs() < 1e-15);
        // Summing scale × tokens gives Σ w / Σ w = 1.
        assert!((s[0] * 10.0 + s[2] * 4.0 - 1.0).abs() < 1e-15);
    }

    #[test]
    fn objective_is_the_weighted_mean_of_present_losses() {
        let o = objective(&[0.5, 0.3, 0.2], &[Some(2.0), None, Some(1.0)]);
        assert!((o - (0.5 * 2.0 + 0.2 * 1.0) / 0.7).abs() < 1e-15);
    }
}
