//! kiln-cli's integration tests, one binary: every test binary links Burn, so one per crate
//! keeps the build's link time and disk use down. Each module is one area.

mod broken_inputs;
mod causal_lm;
mod combine;
mod common;
mod encode;
mod fpt;
mod hub;
mod predict;
mod train;
