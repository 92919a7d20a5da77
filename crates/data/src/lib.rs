//! Multi-task data for training (see ARCHITECTURE.md).
//!
//! Not written yet: sources, tokenization and batching land with the `data` issue.
