//! Collective communication for data-parallel training (see ARCHITECTURE.md).
//!
//! Not written yet: the communicator trait and its backends land with the `collectives` issue.
