//! The coba-dist trainer: command line, replay, and (as the issues land) the model, optimizer,
//! training loop, checkpoints and metrics. See ARCHITECTURE.md.
#![warn(missing_docs)]

pub mod alloc;
pub mod bench_step;
pub mod cli;
pub mod functional;
pub mod metrics;
pub mod plot;
pub mod replay;
pub mod train;
