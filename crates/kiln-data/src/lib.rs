//! kiln-data: datasets and tasks (text folders, CSV/TSV/JSONL, GLUE TSV; synthetic bit memory,
//! bit XOR, ListOps; image readers), seeded splits and batching.
//!
//! Readers arrive with the trainer issue; this crate fixes their place in the workspace.
