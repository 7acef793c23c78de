//! kiln-data: datasets and tasks. Text classification and regression readers (folder-per-class,
//! CSV/TSV/JSONL, GLUE TSV), seeded stratified splits, and batching through a model's tokenizer;
//! and the non-language tasks of the Frozen Pretrained Transformer: seeded synthetic generators
//! (bit memory, bit XOR, ListOps) and image readers cut into patch sequences.

#![warn(missing_docs)]

pub mod batch;
pub mod corpus;
pub mod error;
pub mod images;
pub mod sequence;
pub mod split;
pub mod synthetic;
pub mod task;
pub mod text;

pub use batch::{TextBatch, make_batch};
pub use corpus::{Corpus, read_corpus};
pub use error::{DataError, Result};
pub use images::{ImageSet, patches, read_cifar10, read_digits_csv, read_idx, read_mnist_json};
pub use sequence::{
    InputKind, OutputKind, SequenceExample, SequenceInput, SequenceTarget, SequenceTask,
};
pub use split::{Split, SplitFractions, SplitMix64, stratified_split};
pub use synthetic::{
    GeneratedSizes, LISTOPS_VOCAB, ListOp, ListOps, ListOpsBounds, bit_memory, bit_xor, listops,
    listops_expression,
};
pub use task::{LoadedTask, TaskSpec};
pub use text::{
    GlueTask, InputRow, InputSpec, OnBadRow, ReadOptions, SkippedRow, TableFormat, TableSpec,
    Target, TaskKind, TextDataset, TextExample, read_class_folders, read_class_folders_labelled,
    read_glue, read_inputs, read_table,
};
