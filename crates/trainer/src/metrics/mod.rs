//! Metrics of a run: the typed records of `metrics.jsonl` ([`record`]), shared by the
//! training loop, `plot` and `compare`; the JSONL writer ([`jsonl`]); TensorBoard event files
//! ([`tensorboard`]); and rank 0's sinks ([`sink`]).

pub mod jsonl;
pub mod record;
pub mod sink;
pub mod tensorboard;

pub use jsonl::MetricsWriter;
pub use record::{per_task, Header, MetricsFile, PerTask, StepRecord};
pub use sink::MetricSinks;
