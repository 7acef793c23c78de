//! kiln-data: datasets and tasks. Text classification and regression readers (folder-per-class,
//! CSV/TSV/JSONL, GLUE TSV), seeded stratified splits, and batching through a model's tokenizer.

pub mod batch;
pub mod error;
pub mod split;
pub mod task;
pub mod text;

pub use batch::{TextBatch, make_batch};
pub use error::{DataError, Result};
pub use split::{Split, SplitFractions, SplitMix64, stratified_split};
pub use task::{LoadedTask, TaskSpec};
pub use text::{
    GlueTask, OnBadRow, ReadOptions, SkippedRow, TableFormat, TableSpec, Target, TaskKind,
    TextDataset, TextExample, read_class_folders, read_glue, read_table,
};
