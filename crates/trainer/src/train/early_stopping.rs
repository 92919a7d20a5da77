//! Model selection and early stopping on the mean validation-loss ratio (the paper's
//! selection: the evaluation with the lowest mean ratio over tasks wins `best/`).
//!
//! The bookkeeping (`best`, `evals_since_best`) lives in the checkpoint's `TrainState`, so a
//! resumed run decides exactly as the uninterrupted one; this component only decides.

/// What one evaluation means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A new lowest mean ratio: write `best/`.
    NewBest,
    /// No improvement; keep training.
    NoImprovement,
    /// `patience` evaluations in a row without improvement: stop the run.
    Stop,
}

/// Patience on the mean validation ratio (0 = never stop early), as burn-train's
/// `EarlyStoppingStrategy` and HF's `EarlyStoppingCallback` (strict improvement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyStopping {
    /// Evaluations without a new best before stopping; 0 disables stopping.
    pub patience: u64,
}

impl EarlyStopping {
    /// Records the evaluation after `steps_done` steps with mean ratio `mean` (finite) into
    /// `best` (`(steps_done, mean)` of the best evaluation) and `evals_since_best`.
    pub fn observe(
        &self,
        best: &mut Option<(u64, f64)>,
        evals_since_best: &mut u64,
        steps_done: u64,
        mean: f64,
    ) -> Verdict {
        if best.is_none_or(|(_, b)| mean < b) {
            *best = Some((steps_done, mean));
            *evals_since_best = 0;
            return Verdict::NewBest;
        }
        *evals_since_best += 1;
        if self.patience > 0 && *evals_since_best >= self.patience {
            Verdict::Stop
        } else {
            Verdict::NoImprovement
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds a curve of mean ratios (one evaluation every 10 steps) and returns the verdicts.
    fn run(patience: u64, curve: &[f64]) -> (Vec<Verdict>, Option<(u64, f64)>) {
        let es = EarlyStopping { patience };
        let (mut best, mut since) = (None, 0);
        let mut out = Vec::new();
        for (i, &m) in curve.iter().enumerate() {
            let v = es.observe(&mut best, &mut since, 10 * (i as u64 + 1), m);
            out.push(v);
            if v == Verdict::Stop {
                break;
            }
        }
        (out, best)
    }

    #[test]
    fn early_stopping_stops_at_the_patience_th_evaluation_without_a_new_best() {
        use Verdict::*;
        let (v, best) = run(2, &[0.9, 0.8, 0.85, 0.7, 0.7, 0.8, 0.5]);
        // A miss, then a new best resets the count; an equal ratio is no improvement (strict),
        // so the second miss in a row after 0.7 stops before 0.5 is seen.
        assert_eq!(
            v,
            [
                NewBest,
                NewBest,
                NoImprovement,
                NewBest,
                NoImprovement,
                Stop
            ]
        );
        assert_eq!(best, Some((40, 0.7)));
    }

    #[test]
    fn early_stopping_with_zero_patience_never_stops() {
        let (v, best) = run(0, &[0.5, 0.6, 0.7, 0.8, 0.9]);
        assert!(!v.contains(&Verdict::Stop));
        assert_eq!(best, Some((10, 0.5)));
    }
}
