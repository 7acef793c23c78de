//! kiln-tuning: the transfer methods (one file per method under `methods/`), the one
//! trainability mechanism (parameter-path patterns), the method registry, merge and export.
//!
//! Methods arrive with the trainer issue; this crate fixes their place in the workspace.
