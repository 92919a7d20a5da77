//! Rank 0's progress: a bar on a terminal and a log line every `log_interval` steps.

use super::trainer::StepOutcome;

/// The progress display of one rank (silent except on rank 0).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    log_interval: u64,
    rank0: bool,
}

impl Progress {
    /// Starts at `at` of `total` steps.
    pub fn new(rank0: bool, total: u64, at: u64, log_interval: u64) -> Self {
        Self {
            bar: rank0.then(|| progress_bar(total, at)),
            log_interval: log_interval.max(1),
            rank0,
        }
    }

    /// After a step (`last`: the run's final step).
    pub fn step(&self, s: &StepOutcome, last: bool) {
        if let Some(pb) = &self.bar {
            pb.set_position(s.step + 1);
            pb.set_message(format!("loss {:.4}", s.loss));
        }
        if self.rank0 && (s.step.is_multiple_of(self.log_interval) || last) {
            tracing::info!(
                "step {}: loss {:.4} lr {:.3e} {:.0} tok/s {:.3}s/step",
                s.step,
                s.loss,
                s.lr,
                s.tokens / s.step_time_s,
                s.step_time_s
            );
        }
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Some(pb) = self.bar {
            pb.finish_and_clear();
        }
    }
}

fn progress_bar(total: u64, at: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_position(at);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
    ) {
        pb.set_style(style);
    }
    pb
}
