//! A task as the CLI names it (`--task PATH` plus column options), loaded into examples and a
//! seeded train/validation/test split.
//!
//! - a directory of class folders (the BBC News layout): stratified 80/10/10;
//! - a directory with GLUE's `train.tsv` and `dev.tsv`: train is split 90/10 into train and
//!   validation, `dev.tsv` is the test set (GLUE's own test labels are hidden);
//! - a CSV/TSV/JSONL file with named columns: stratified 80/10/10.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::split::{Split, SplitFractions, stratified_split};
use crate::text::{
    GlueTask, OnBadRow, ReadOptions, SkippedRow, TableSpec, TaskKind, TextDataset, TextExample,
    read_class_folders, read_glue, read_table,
};

/// Where a task's data is and how to read it; saved with every run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The folder, GLUE directory or CSV/TSV/JSONL file.
    pub path: PathBuf,
    /// Column of the text (tables); defaults to `text`.
    pub text_column: Option<String>,
    /// Column of the second text of a pair (tables).
    pub pair_column: Option<String>,
    /// Column of the label (tables); defaults to `label`.
    pub label_column: Option<String>,
    /// Labels are real numbers (tables).
    pub regression: bool,
    /// GLUE task name for a GLUE directory; defaults to the directory's name.
    pub glue: Option<String>,
    /// WHATWG label of the files' encoding when they are not UTF-8.
    pub encoding: Option<String>,
    /// Skip and count bad rows instead of stopping at the first.
    pub skip_bad_rows: bool,
}

impl TaskSpec {
    /// The task in `path` with every reading option at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            text_column: None,
            pair_column: None,
            label_column: None,
            regression: false,
            glue: None,
            encoding: None,
            skip_bad_rows: false,
        }
    }
}

/// A task's examples with a seeded split into train, validation and test.
#[derive(Debug, Clone)]
pub struct LoadedTask {
    /// Classification (with the class names) or regression.
    pub kind: TaskKind,
    /// Every usable example.
    pub examples: Vec<TextExample>,
    /// Which examples are for training, validation and test.
    pub split: Split,
    /// What was left out (with `--skip-bad-rows`) and why.
    pub skipped: Vec<SkippedRow>,
}

impl LoadedTask {
    /// The examples at `indices` (a part of the split).
    pub fn part(&self, indices: &[usize]) -> Vec<&TextExample> {
        indices.iter().map(|&i| &self.examples[i]).collect()
    }

    /// Outputs the model's head needs: the classes, or one for regression.
    pub fn num_outputs(&self) -> usize {
        match &self.kind {
            TaskKind::Classification { labels } => labels.len(),
            TaskKind::Regression => 1,
        }
    }
}

impl TaskSpec {
    /// Reads the task and splits it from `seed`: 80/10/10, stratified by class where there are
    /// classes. A GLUE directory's `dev.tsv` is the test part, and 10% of its `train.tsv` the
    /// validation part.
    pub fn load(&self, seed: u64) -> Result<LoadedTask> {
        let mut options = ReadOptions {
            on_bad_row: if self.skip_bad_rows {
                OnBadRow::Skip
            } else {
                OnBadRow::Fail
            },
            encoding: None,
        };
        if let Some(label) = &self.encoding {
            options = options.with_encoding_label(label)?;
        }
        let path = &self.path;
        if path.is_dir() && path.join("train.tsv").is_file() {
            return self.load_glue(path, options, seed);
        }
        if self.has_column_options() && !path.is_file() {
            return Err(DataError::InvalidInput(format!(
                "{}: column options are for CSV/TSV/JSONL files, and this is not a file",
                path.display()
            )));
        }
        let dataset = if path.is_dir() {
            read_class_folders(path, options)?
        } else if path.is_file() {
            let mut spec = TableSpec::new(
                self.text_column.as_deref().unwrap_or("text"),
                self.label_column.as_deref().unwrap_or("label"),
            );
            spec.pair_column = self.pair_column.clone();
            spec.regression = self.regression;
            read_table(path, &spec, options)?
        } else {
            return Err(DataError::InvalidInput(format!(
                "--task {}: no such file or directory",
                path.display()
            )));
        };
        let split = split_of(&dataset, SplitFractions::EIGHTY_TEN_TEN, seed)?;
        Ok(LoadedTask {
            kind: dataset.task,
            examples: dataset.examples,
            split,
            skipped: dataset.skipped,
        })
    }

    fn has_column_options(&self) -> bool {
        self.text_column.is_some()
            || self.pair_column.is_some()
            || self.label_column.is_some()
            || self.regression
    }

    fn load_glue(&self, dir: &Path, options: ReadOptions, seed: u64) -> Result<LoadedTask> {
        let name = match &self.glue {
            Some(name) => name.clone(),
            None => dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
        };
        let task: GlueTask = name.parse().map_err(|_| {
            DataError::InvalidInput(format!(
                "{}: a GLUE directory, but `{name}` is not a GLUE task; pass --glue sst2|cola|mrpc|rte|sts-b",
                dir.display()
            ))
        })?;
        let train = read_glue(dir, task, "train", options)?;
        let dev = read_glue(dir, task, "dev", options)?;
        let held_out = SplitFractions {
            validation: 0.1,
            test: 0.0,
        };
        let inner = split_of(&train, held_out, seed)?;
        let offset = train.examples.len();
        let split = Split {
            train: inner.train,
            validation: inner.validation,
            test: (offset..offset + dev.examples.len()).collect(),
        };
        let mut skipped = train.skipped;
        skipped.extend(dev.skipped);
        let mut examples = train.examples;
        examples.extend(dev.examples);
        Ok(LoadedTask {
            kind: train.task,
            examples,
            split,
            skipped,
        })
    }
}

fn split_of(dataset: &TextDataset, fractions: SplitFractions, seed: u64) -> Result<Split> {
    let classes = dataset.classes();
    stratified_split(dataset.len(), classes.as_deref(), fractions, seed)
}
