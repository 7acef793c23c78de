//! kiln-train: the training loop, optimiser and schedules, gradient transforms, metrics,
//! checkpoints and reports.
//!
//! The loop arrives with the trainer issue; this crate fixes its place in the workspace.
