//! Collective watchdog: a background thread that ends the job when one collective call takes
//! longer than `collective_timeout_s`.
//!
//! MPI has no timeouts: a network partition between two workers (with the launcher's links
//! intact) leaves every rank blocked forever. Each collective arms the watchdog with its name
//! and the current step and disarms it on return; if the deadline passes first, the watchdog
//! calls its `on_timeout` action (print a message naming the collective and step, then abort).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default `collective_timeout_s`, in seconds.
pub const DEFAULT_COLLECTIVE_TIMEOUT_S: u64 = 600;

/// What the watchdog does on expiry; receives the human-readable message.
pub type TimeoutAction = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Debug)]
struct Armed {
    collective: &'static str,
    step: u64,
    started: Instant,
}

#[derive(Debug, Default)]
struct State {
    armed: Option<Armed>,
    /// Incremented on every arm so a late disarm cannot clear a newer arming.
    generation: u64,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Watches one collective at a time (collectives on a communicator are sequential).
pub struct Watchdog {
    shared: Arc<Shared>,
    timeout: Duration,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Returned by [`Watchdog::arm`]; disarms the watchdog when dropped (at the end of the
/// collective call).
#[must_use = "the watchdog is disarmed when the guard is dropped"]
pub struct WatchGuard<'a> {
    watchdog: &'a Watchdog,
    generation: u64,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.watchdog.shared.lock();
        if state.generation == self.generation {
            state.armed = None;
        }
    }
}

impl Watchdog {
    /// Start a watchdog thread for `rank` that calls `on_timeout` when a collective runs longer
    /// than `timeout`.
    pub fn new(timeout: Duration, rank: usize, on_timeout: TimeoutAction) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("collective-watchdog".to_owned())
            .spawn(move || watch(&thread_shared, timeout, rank, &on_timeout))?;
        Ok(Self {
            shared,
            timeout,
            thread: Some(thread),
        })
    }

    /// The configured timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Mark the start of `collective` at training step `step`.
    pub fn arm(&self, collective: &'static str, step: u64) -> WatchGuard<'_> {
        let mut state = self.shared.lock();
        state.generation += 1;
        state.armed = Some(Armed {
            collective,
            step,
            started: Instant::now(),
        });
        let generation = state.generation;
        drop(state);
        self.shared.wake.notify_one();
        WatchGuard {
            watchdog: self,
            generation,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // A panic in the watchdog thread has already been reported by the panic hook.
            let _ = thread.join();
        }
    }
}

fn watch(shared: &Shared, timeout: Duration, rank: usize, on_timeout: &TimeoutAction) {
    let mut state = shared.lock();
    loop {
        if state.shutdown {
            return;
        }
        let Some(armed) = &state.armed else {
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let elapsed = armed.started.elapsed();
        if elapsed >= timeout {
            let message = format!(
                "coba-dist: rank {rank}: collective `{}` at step {} did not complete within \
                 collective_timeout_s = {} s (a peer died or hangs, or the network is \
                 partitioned); aborting the job",
                armed.collective,
                armed.step,
                timeout.as_secs_f64()
            );
            let generation = state.generation;
            drop(state);
            on_timeout(&message);
            state = shared.lock();
            // If the action returned (tests), fire only once per arming.
            if state.generation == generation {
                state.armed = None;
            }
            continue;
        }
        let (next, _) = shared
            .wake
            .wait_timeout(state, timeout - elapsed)
            .unwrap_or_else(PoisonError::into_inner);
        state = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn recording(timeout_ms: u64) -> (Watchdog, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let action: TimeoutAction = Box::new(move |m: &str| {
            let _ = tx.lock().map(|t| t.send(m.to_owned()));
        });
        let dog = Watchdog::new(Duration::from_millis(timeout_ms), 3, action).unwrap();
        (dog, rx)
    }

    #[test]
    fn fires_with_collective_and_step() {
        let (dog, rx) = recording(50);
        let _guard = dog.arm("all_reduce_sum_f32", 17);
        let msg = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(msg.contains("rank 3"), "{msg}");
        assert!(msg.contains("`all_reduce_sum_f32` at step 17"), "{msg}");
        // Only once per arming.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    }

    #[test]
    fn quiet_when_collectives_finish_in_time() {
        let (dog, rx) = recording(300);
        for step in 0..20 {
            let _guard = dog.arm("barrier", step);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(rx.recv_timeout(Duration::from_millis(600)).is_err());
    }

    #[test]
    fn rearming_resets_the_deadline() {
        let (dog, rx) = recording(150);
        for step in 0..6 {
            let guard = dog.arm("broadcast_f64", step);
            std::thread::sleep(Duration::from_millis(100));
            drop(guard);
        }
        assert!(rx.try_recv().is_err());
    }
}
