//! Multi-task data for training: everything between files on disk and the token batches a
//! rank trains on, with per-task accounting carried all the way through. Pure data: no
//! tensors, no candle.
//!
//! Pipeline: [`source`] finds and reads files → [`format`] parses each line → [`template`] +
//! [`tokenize`] render and tokenize with loss masks → [`dataset`] applies the bad-line and
//! overlong policies and the validation carve-out (through [`cache`]) → [`train`] mixes,
//! packs and shards training batches ([`batch`]), [`valid`] serves validation and the CoBa
//! probe → [`stats`] reports.
//!
//! ```no_run
//! use data::{config::{DataConfig, TaskSpec}, dataset::load, tokenize::Encoder,
//!            train::{TrainSampler, Shard, Cursor}};
//! let cfg = DataConfig::with_tasks(vec![
//!     TaskSpec { name: "math".into(), paths: vec!["data/tasks/math_gsm8k.jsonl.gz".into()] },
//!     TaskSpec { name: "seed".into(), paths: vec!["data/tasks/instruct_seed.jsonl.gz".into()] },
//! ]);
//! let enc = Encoder::from_file("data/tokenizers/smollm2/tokenizer.json".as_ref(), &cfg.template)?;
//! let ds = load(&cfg, &enc)?;
//! let shard = Shard { rank: 0, world_size: 1, micro_batch: 8, grad_accum: 1 };
//! let mut sampler = TrainSampler::new(&ds, cfg.batch_mode, cfg.mixing, cfg.seed, shard.global_rows())?;
//! let batches = sampler.rank_step(Cursor::default(), shard)?;
//! assert_eq!(batches[0].rows, 8);
//! # Ok::<(), data::DataError>(())
//! ```
#![warn(missing_docs)]

pub mod batch;
pub mod cache;
pub mod config;
pub mod dataset;
mod error;
pub mod format;
pub mod gsm8k;
pub mod mixing;
pub mod rng;
pub mod source;
pub mod stats;
pub mod template;
pub mod tokenize;
pub mod train;
pub mod valid;

pub use error::{DataError, Result};
