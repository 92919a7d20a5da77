//! Sliding-window least-squares slope in O(1) amortized per push.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// OLS slope of the last `capacity` entries of a series whose absent entries are dropped and
/// whose present entries are re-indexed `x = 0..n-1` (MFTCoder's `CoBaStatus` fit, pinned in the
/// test vectors' README: "zeros/empties dropped, x = 0..n_k-1").
///
/// Keeps running sums Σy and Σx·y over the present points, so [`push`](Self::push) and
/// [`slope`](Self::slope) are O(1) amortized. The sums are recomputed exactly from the buffer
/// once every `capacity` pushes (bounded drift over long runs), and whenever an evicted value
/// was large next to what remains (a spike of 1e8 leaving the window would otherwise leave
/// cancellation garbage of the order of 1e8 · 2^-52 in the sums).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowFit {
    capacity: usize,
    /// Grows up to `capacity` (allocated lazily: H may be huge).
    buf: VecDeque<Option<f64>>,
    /// Number of present points in `buf`.
    n: usize,
    sum_y: f64,
    sum_xy: f64,
    /// Σ|y| of the present points: the magnitude the eviction guard compares against.
    sum_abs: f64,
    pushes_since_exact: usize,
}

/// An evicted value this many times larger than the mean magnitude left in the window forces
/// an exact recomputation (ordinary loss curves stay far below it).
const SPIKE_FACTOR: f64 = 16.0;

impl WindowFit {
    /// An empty window holding at most `capacity` entries (`capacity >= 1`).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            buf: VecDeque::new(),
            n: 0,
            sum_y: 0.0,
            sum_xy: 0.0,
            sum_abs: 0.0,
            pushes_since_exact: 0,
        }
    }

    /// Appends one entry (`None` = absent), evicting the oldest once the window is full.
    /// Present values must be finite.
    pub fn push(&mut self, y: Option<f64>) {
        let mut exact = false;
        if self.buf.len() == self.capacity {
            if let Some(Some(y0)) = self.buf.pop_front() {
                // The evicted point had x = 0; every remaining present point moves down by one.
                self.n -= 1;
                self.sum_y -= y0;
                self.sum_xy -= self.sum_y;
                self.sum_abs -= y0.abs();
                exact = self.n > 0 && y0.abs() > SPIKE_FACTOR * self.sum_abs / self.n as f64;
            }
        }
        self.buf.push_back(y);
        if let Some(y) = y {
            self.sum_xy += self.n as f64 * y;
            self.sum_y += y;
            self.sum_abs += y.abs();
            self.n += 1;
        }
        self.pushes_since_exact += 1;
        if exact || self.pushes_since_exact >= self.capacity || self.n == 0 {
            self.recompute();
        }
    }

    fn recompute(&mut self) {
        let (mut n, mut sum_y, mut sum_xy, mut sum_abs) = (0usize, 0.0, 0.0, 0.0);
        for y in self.buf.iter().flatten() {
            sum_xy += n as f64 * y;
            sum_y += y;
            sum_abs += y.abs();
            n += 1;
        }
        (self.n, self.sum_y, self.sum_xy, self.sum_abs) = (n, sum_y, sum_xy, sum_abs);
        self.pushes_since_exact = 0;
    }

    /// Least-squares slope of the present points against `x = 0..n-1`; 0 when `n < 2`.
    pub fn slope(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        let x_mean = (n - 1.0) / 2.0;
        let sxx = n * (n * n - 1.0) / 12.0;
        (self.sum_xy - x_mean * self.sum_y) / sxx
    }

    /// Number of present points in the window.
    pub fn len_present(&self) -> usize {
        self.n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct two-pass OLS over the present points of the last `cap` entries.
    fn reference(series: &[Option<f64>], cap: usize) -> f64 {
        let start = series.len().saturating_sub(cap);
        let ys: Vec<f64> = series[start..].iter().flatten().copied().collect();
        if ys.len() < 2 {
            return 0.0;
        }
        let n = ys.len() as f64;
        let xm = (n - 1.0) / 2.0;
        let ym = ys.iter().sum::<f64>() / n;
        let (mut num, mut den) = (0.0, 0.0);
        for (i, y) in ys.iter().enumerate() {
            num += (i as f64 - xm) * (y - ym);
            den += (i as f64 - xm).powi(2);
        }
        num / den
    }

    #[test]
    fn matches_two_pass_fit_with_gaps_and_eviction() {
        let series: Vec<Option<f64>> = (0..500)
            .map(|i| {
                if i % 7 == 3 || i % 11 == 0 {
                    None
                } else {
                    Some(1.0 / (1.0 + i as f64 * 0.01) + 0.001 * ((i * 37 % 17) as f64))
                }
            })
            .collect();
        for cap in [2, 3, 10, 64] {
            let mut w = WindowFit::new(cap);
            for (i, y) in series.iter().enumerate() {
                w.push(*y);
                let want = reference(&series[..=i], cap);
                assert!(
                    (w.slope() - want).abs() < 1e-12,
                    "cap {cap} step {i}: {} vs {want}",
                    w.slope()
                );
            }
        }
    }

    #[test]
    fn a_spike_leaving_the_window_leaves_no_garbage() {
        let mut series = vec![Some(1e20)];
        series.extend((1..40).map(|i| Some(1.0 - 0.01 * i as f64)));
        let mut w = WindowFit::new(10);
        for (i, y) in series.iter().enumerate() {
            w.push(*y);
            let want = reference(&series[..=i], 10);
            let tol = 1e-12 * want.abs().max(1.0);
            assert!(
                (w.slope() - want).abs() < tol,
                "step {i}: {} vs {want}",
                w.slope()
            );
        }
    }

    #[test]
    fn fewer_than_two_points_is_zero() {
        let mut w = WindowFit::new(5);
        assert_eq!(w.slope(), 0.0);
        w.push(Some(3.0));
        w.push(None);
        assert_eq!(w.slope(), 0.0);
        w.push(Some(1.0));
        assert_eq!(w.slope(), -2.0);
    }
}
