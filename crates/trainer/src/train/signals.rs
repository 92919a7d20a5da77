//! Slurm preemption: SIGTERM or SIGUSR1 sets a flag; the loop all-reduces it at the start of
//! every step, so every rank finishes the same step, checkpoints and exits cleanly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A flag raised by SIGTERM or SIGUSR1.
#[derive(Clone, Debug)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Installs the handlers. Repeated signals only keep the flag raised (Slurm sends SIGUSR1
    /// as a warning and SIGTERM at the deadline: neither may interrupt the checkpoint write).
    ///
    /// # Errors
    /// The handlers cannot be registered.
    pub fn install() -> std::io::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
            signal_hook::flag::register(sig, Arc::clone(&flag))?;
        }
        Ok(Self(flag))
    }

    /// Whether a signal arrived.
    pub fn raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
