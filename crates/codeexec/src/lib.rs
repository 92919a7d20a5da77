//! Functional correctness of generated programs, as the CoBa paper measures it: the eval
//! bundle's held-out problems ([`problems`]), the program for a problem and a completion
//! ([`compose`], CodeGeeX's HumanEval-X rules and MBPP's asserts), where generation stops
//! ([`stops`]), a sandboxed executor ([`sandbox`]) over the installed toolchains
//! ([`toolchain`]), the verdict of one generation ([`judge`]) and the Pass@1 / accuracy table
//! ([`score`]).

pub mod compose;
pub mod judge;
pub mod problems;
pub mod sandbox;
pub mod score;
pub mod stops;
pub mod toolchain;

pub use judge::{judge, judge_all, Judgement, TimeLimits, Verdict};
pub use problems::{load_task, Check, Lang, Metric, Problem};
pub use sandbox::{Isolation, Limits, Sandbox};
pub use toolchain::{ToolchainOptions, Toolchains};
