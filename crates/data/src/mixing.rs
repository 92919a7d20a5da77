//! Task mixing: per-task probabilities and per-epoch sample quotas.
//!
//! ```
//! use data::{config::Mixing, mixing::{probabilities, quotas}};
//! let n = [300, 100];
//! assert_eq!(probabilities(Mixing::Proportional, &n), vec![0.75, 0.25]);
//! assert_eq!(probabilities(Mixing::Uniform, &n), vec![0.5, 0.5]);
//! let p = probabilities(Mixing::Temperature { t: 2.0 }, &n); // ∝ sqrt(n)
//! assert!((p[0] / p[1] - 3f64.sqrt()).abs() < 1e-12);
//! assert_eq!(quotas(&[0.5, 0.5], 400), vec![200, 200]);
//! ```

use crate::config::Mixing;

/// p_i for train sizes `n` (sums to 1).
pub fn probabilities(mixing: Mixing, n: &[usize]) -> Vec<f64> {
    let w: Vec<f64> = match mixing {
        Mixing::Proportional => n.iter().map(|&x| x as f64).collect(),
        Mixing::Uniform => n.iter().map(|_| 1.0).collect(),
        Mixing::Temperature { t } => n.iter().map(|&x| (x as f64).powf(1.0 / t)).collect(),
    };
    let total: f64 = w.iter().sum();
    w.iter().map(|x| x / total).collect()
}

/// Splits `total` draws by `p` with largest-remainder rounding (sums exactly to `total`;
/// ties go to the lower task id).
pub fn quotas(p: &[f64], total: usize) -> Vec<usize> {
    let raw: Vec<f64> = p.iter().map(|x| x * total as f64).collect();
    let mut q: Vec<usize> = raw.iter().map(|x| x.floor() as usize).collect();
    let mut left = total.saturating_sub(q.iter().sum());
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (raw[a] - raw[a].floor(), raw[b] - raw[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in order.iter().cycle().take(p.len() * 2) {
        if left == 0 {
            break;
        }
        q[i] += 1;
        left -= 1;
    }
    q
}
