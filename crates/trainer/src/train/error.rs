//! Who shares an error: the scope decides whether the ranks stop together or the job aborts.
//!
//! The loop's methods return [`RunError`]. There is deliberately no `From<anyhow::Error>`:
//! an `anyhow` result needs `.all_ranks()`, `.bad_input()` or `.local()` (the [`Scoped`]
//! trait) before `?` compiles, so a new call site cannot forget to say who shares its error.
//! Collective and tensor errors convert by `?` and are local: a dead peer or a failed kernel
//! is this rank's alone.

use anyhow::anyhow;

/// An error every rank hits at the same point with the same data (a NaN loss, bad data):
/// ranks exit together without aborting the job. `bad_input` marks the user's input at fault
/// (data, tokenizer, model path, config/checkpoint mismatch: exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct AllRanks {
    /// What went wrong.
    pub error: anyhow::Error,
    /// The input (files, settings) is at fault.
    pub bad_input: bool,
}

/// Which ranks share an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only this rank: the job must be aborted so no rank waits forever.
    Local,
    /// Every rank, at the same point: they stop together (exit 1).
    AllRanks,
    /// Every rank, caused by the user's input (exit 2).
    BadInput,
}

/// An error of the training loop with its [`Scope`].
#[derive(Debug)]
pub struct RunError {
    /// Who shares it.
    pub scope: Scope,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl RunError {
    /// An error every rank shares, from a message.
    pub fn all_ranks(message: impl std::fmt::Display) -> Self {
        Self {
            scope: Scope::AllRanks,
            error: anyhow!("{message}"),
        }
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl From<collectives::Error> for RunError {
    fn from(e: collectives::Error) -> Self {
        Self {
            scope: Scope::Local,
            error: e.into(),
        }
    }
}

impl From<candle_core::Error> for RunError {
    fn from(e: candle_core::Error) -> Self {
        Self {
            scope: Scope::Local,
            error: e.into(),
        }
    }
}

impl From<model::ModelError> for RunError {
    fn from(e: model::ModelError) -> Self {
        Self {
            scope: Scope::Local,
            error: e.into(),
        }
    }
}

impl From<RunError> for anyhow::Error {
    /// Shared errors become [`AllRanks`] (what the CLI's exit path looks for).
    fn from(e: RunError) -> Self {
        match e.scope {
            Scope::Local => e.error,
            Scope::AllRanks | Scope::BadInput => anyhow::Error::new(AllRanks {
                error: e.error,
                bad_input: e.scope == Scope::BadInput,
            }),
        }
    }
}

/// Gives a result's error its [`Scope`].
pub trait Scoped<T> {
    /// Every rank has the same error at the same point.
    fn all_ranks(self) -> Result<T, RunError>;
    /// Every rank has it, and the user's input is at fault.
    fn bad_input(self) -> Result<T, RunError>;
    /// Only this rank has it.
    fn local(self) -> Result<T, RunError>;
}

impl<T, E: Into<anyhow::Error>> Scoped<T> for Result<T, E> {
    fn all_ranks(self) -> Result<T, RunError> {
        self.map_err(|e| scoped(Scope::AllRanks, e))
    }
    fn bad_input(self) -> Result<T, RunError> {
        self.map_err(|e| scoped(Scope::BadInput, e))
    }
    fn local(self) -> Result<T, RunError> {
        self.map_err(|e| scoped(Scope::Local, e))
    }
}

fn scoped(scope: Scope, e: impl Into<anyhow::Error>) -> RunError {
    RunError {
        scope,
        error: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_scopes_become_all_ranks_with_the_exit_code_flag() {
        let e: anyhow::Error = Err::<(), _>(anyhow!("bad data"))
            .bad_input()
            .unwrap_err()
            .into();
        let a = e.downcast_ref::<AllRanks>().expect("an AllRanks");
        assert!(a.bad_input);
        let e: anyhow::Error = Err::<(), _>(anyhow!("nan")).all_ranks().unwrap_err().into();
        assert!(!e.downcast_ref::<AllRanks>().expect("an AllRanks").bad_input);
        let e: anyhow::Error = Err::<(), _>(anyhow!("disk")).local().unwrap_err().into();
        assert!(e.downcast_ref::<AllRanks>().is_none());
        assert_eq!(e.to_string(), "disk");
    }
}
