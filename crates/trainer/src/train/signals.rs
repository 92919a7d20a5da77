//! Slurm preemption: SIGTERM or SIGUSR1 (or a first Ctrl-C) sets a flag; the loop all-reduces it at the start of
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
        // Ctrl-C: the first one stops cleanly like SIGTERM, a second one exits at once.
        signal_hook::flag::register_conditional_shutdown(
            signal_hook::consts::SIGINT,
            130,
            Arc::clone(&flag),
        )?;
        signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&flag))?;
        Ok(Self(flag))
    }

    /// Whether a signal arrived.
    pub fn raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
