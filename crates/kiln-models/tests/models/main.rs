//! kiln-models' tests of loading and parity with transformers, one binary (every test binary
//! links Burn: fewer binaries keep the build's link time and disk use down). `fused.rs`, which
//! seeds and trains, stays a binary of its own so that these tests' model initialisations cannot
//! land inside its seeded runs.

#[path = "../common/mod.rs"]
mod common;
mod loading;
mod minilm;
mod parity;
mod tokenizer;
