//! kiln-benches: criterion benchmarks, run by `cargo xtask bench` (benchmarks issue).
