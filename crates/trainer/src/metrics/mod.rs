//! Metrics of a run: the typed records of `metrics.jsonl` ([`record`]) and their reader
//! ([`reader`]), shared by the training loop, `plot` and `compare`; the JSONL writer ([`jsonl`]); TensorBoard event files
//! ([`tensorboard`]); and rank 0's sinks ([`sink`]).

pub mod jsonl;
pub mod reader;
pub mod record;
pub mod sink;
pub mod tensorboard;

pub use jsonl::MetricsWriter;
pub use reader::{LineError, MetricsFile};
pub use record::{per_task, Header, PerTask, StepRecord};
pub use sink::MetricSinks;
