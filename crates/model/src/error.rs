//! Errors of the model module.

/// What can go wrong building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed (shape mismatch inside candle, out of memory, ...).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The configuration is malformed or inconsistent.
    #[error("invalid model config: {0}")]
    Config(String),
    /// The configuration asks for something this model does not implement.
    #[error("unsupported model feature: {0}")]
    Unsupported(String),
    /// A parameter the architecture needs is absent from the weights.
    #[error("missing parameter {0}")]
    MissingParameter(String),
    /// The weights hold a tensor the architecture does not know.
    #[error("unexpected parameter {0}")]
    UnexpectedParameter(String),
    /// A parameter has the wrong shape.
    #[error("parameter {name}: expected shape {expected:?}, got {got:?}")]
    Shape {
        /// HF parameter name.
        name: String,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape found.
        got: Vec<usize>,
    },
    /// A batch is malformed (array lengths, token ids out of the vocabulary, task ids).
    #[error("invalid batch: {0}")]
    Batch(String),
}
