//! A task as the CLI names it (`--task PATH` plus column options), loaded into examples and a
//! seeded train/validation/test split.
//!
//! - a directory of class folders (the BBC News layout): stratified 80/10/10;
//! - a directory with GLUE's `train.tsv` and `dev.tsv`: train is split 90/10 into train and
//!   validation, `dev.tsv` is the test set (GLUE's own test labels are hidden);
//! - a CSV/TSV/JSONL file with named columns: stratified 80/10/10;
//! - a directory with `train/` (class folders) or `train.csv|tsv|jsonl`, and optionally
//!   `validation/` (or `valid`, `dev`) and `test/` beside it in the same form; held-out files can
//!   also be named on their own ([`TaskSpec::validation`], [`TaskSpec::test`]). Only the parts
//!   that are missing are split off the training data (stratified, 10% each), and held-out
//!   examples take the training data's class names: a held-out class it lacks is an error.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::split::{Split, SplitFractions, stratified_split};
use crate::text::{
    GlueTask, OnBadRow, ReadOptions, SkippedRow, TableSpec, TaskKind, TextDataset, TextExample,
    read_class_folders, read_class_folders_labelled, read_glue, read_table,
};

/// Where a task's data is and how to read it; saved with every run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The folder, GLUE directory or CSV/TSV/JSONL file.
    pub path: PathBuf,
    /// Held-out validation examples (a file or class-folder directory, read with the same
    /// options); `None`: split off the training data.
    #[serde(default)]
    pub validation: Option<PathBuf>,
    /// Held-out test examples, as [`TaskSpec::validation`].
    #[serde(default)]
    pub test: Option<PathBuf>,
    /// Column of the text (tables); defaults to `text`.
    pub text_column: Option<String>,
    /// Column of the second text of a pair (tables).
    pub pair_column: Option<String>,
    /// Column of the label (tables); defaults to `label`.
    pub label_column: Option<String>,
    /// Labels are real numbers (tables).
    pub regression: bool,
    /// Any number of labels per row (tables): a JSON list, or a cell split by
    /// `label_separator`.
    #[serde(default)]
    pub multi_label: bool,
    /// What splits a multi-label cell; `|` when not given.
    #[serde(default)]
    pub label_separator: Option<String>,
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
            validation: None,
            test: None,
            text_column: None,
            pair_column: None,
            label_column: None,
            regression: false,
            multi_label: false,
            label_separator: None,
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
            TaskKind::Classification { labels } | TaskKind::MultiLabel { labels } => labels.len(),
            TaskKind::Regression => 1,
        }
    }
}

/// Folder or file names a split directory's parts may have.
const TRAIN_NAMES: &[&str] = &["train"];
const VALIDATION_NAMES: &[&str] = &["validation", "valid", "dev"];
const TEST_NAMES: &[&str] = &["test"];

impl TaskSpec {
    /// Reads the task and splits it from `seed`: 80/10/10, stratified by class where there are
    /// classes, with held-out parts taken as given (see the [module](self) documentation). A
    /// GLUE directory's `dev.tsv` is the test part, and 10% of its `train.tsv` the validation
    /// part.
    pub fn load(&self, seed: u64) -> Result<LoadedTask> {
        let options = self.read_options()?;
        let path = &self.path;
        if self.is_glue_dir() {
            if self.validation.is_some() || self.test.is_some() {
                return Err(DataError::InvalidInput(format!(
                    "{}: a GLUE directory brings its own held-out data (dev.tsv); held-out \
                     files are for other layouts",
                    path.display()
                )));
            }
            return self.load_glue(path, options, seed);
        }
        let (train_path, mut validation, mut test) = match split_dir_parts(path)? {
            Some((train, validation, test)) => (train, validation, test),
            None => (path.clone(), None, None),
        };
        validation = self.validation.clone().or(validation);
        test = self.test.clone().or(test);
        if !train_path.exists() {
            return Err(DataError::InvalidInput(format!(
                "--task {}: no such file or directory",
                train_path.display()
            )));
        }
        let train = self.read_part(&train_path, options, None)?;
        let held_out = |part: Option<PathBuf>| {
            part.map(|p| self.read_part(&p, options, Some(&train.task)))
                .transpose()
        };
        let (validation, test) = (held_out(validation)?, held_out(test)?);
        let fractions = SplitFractions {
            validation: if validation.is_some() { 0.0 } else { 0.1 },
            test: if test.is_some() { 0.0 } else { 0.1 },
        };
        let mut split = split_of(&train, fractions, seed)?;
        let TextDataset {
            task: kind,
            mut examples,
            mut skipped,
            ..
        } = train;
        for (part, indices) in [(validation, &mut split.validation), (test, &mut split.test)] {
            if let Some(part) = part {
                let offset = examples.len();
                indices.extend(offset..offset + part.examples.len());
                examples.extend(part.examples);
                skipped.extend(part.skipped);
            }
        }
        Ok(LoadedTask {
            kind,
            examples,
            split,
            skipped,
        })
    }

    /// Held-out examples in `path` (a file, read with this spec's column and encoding options,
    /// or a class-folder directory), labelled with `kind`'s classes; a label `kind` lacks is an
    /// error naming every such label.
    pub fn read_held_out(&self, path: &Path, kind: &TaskKind) -> Result<TextDataset> {
        self.read_part(path, self.read_options()?, Some(kind))
    }

    /// The reading options of the task's files (bad rows, encoding).
    pub fn read_options(&self) -> Result<ReadOptions> {
        let options = ReadOptions {
            on_bad_row: if self.skip_bad_rows {
                OnBadRow::Skip
            } else {
                OnBadRow::Fail
            },
            encoding: None,
        };
        match &self.encoding {
            Some(label) => options.with_encoding_label(label),
            None => Ok(options),
        }
    }

    /// A GLUE directory: `train.tsv` and `dev.tsv`, and a GLUE task named or the folder's name.
    fn is_glue_dir(&self) -> bool {
        let path = &self.path;
        path.is_dir()
            && path.join("train.tsv").is_file()
            && (self.glue.is_some()
                || (path.join("dev.tsv").is_file()
                    && path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().parse::<GlueTask>().is_ok())))
    }

    /// One part's examples: class folders or a table; `labels_of` gives a held-out part the
    /// training part's classes.
    fn read_part(
        &self,
        path: &Path,
        options: ReadOptions,
        labels_of: Option<&TaskKind>,
    ) -> Result<TextDataset> {
        if path.is_dir() {
            if self.has_column_options() {
                return Err(DataError::InvalidInput(format!(
                    "{}: column options are for CSV/TSV/JSONL files, and this is a directory",
                    path.display()
                )));
            }
            return match labels_of {
                None => read_class_folders(path, options),
                Some(TaskKind::Classification { labels }) => {
                    read_class_folders_labelled(path, options, labels)
                }
                Some(TaskKind::Regression) => Err(DataError::InvalidInput(format!(
                    "{}: class folders, but the task is a regression",
                    path.display()
                ))),
                Some(TaskKind::MultiLabel { .. }) => Err(DataError::InvalidInput(format!(
                    "{}: class folders hold one class per document, but the task is multi-label",
                    path.display()
                ))),
            };
        }
        if !path.is_file() {
            return Err(DataError::InvalidInput(format!(
                "{}: no such file or directory",
                path.display()
            )));
        }
        let mut spec = TableSpec::new(
            self.text_column.as_deref().unwrap_or("text"),
            self.label_column.as_deref().unwrap_or("label"),
        );
        spec.pair_column = self.pair_column.clone();
        spec.regression = self.regression;
        spec.multi_label = self.multi_label;
        spec.label_separator = self
            .multi_label
            .then(|| self.label_separator.clone().unwrap_or_else(|| "|".into()));
        match labels_of {
            Some(TaskKind::Classification { labels }) => spec.labels = Some(labels.clone()),
            Some(TaskKind::MultiLabel { labels }) => {
                spec.multi_label = true;
                spec.labels = Some(labels.clone());
            }
            Some(TaskKind::Regression) => spec.regression = true,
            None => {}
        }
        read_table(path, &spec, options)
    }

    fn has_column_options(&self) -> bool {
        self.text_column.is_some()
            || self.pair_column.is_some()
            || self.label_column.is_some()
            || self.regression
            || self.multi_label
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

/// A split directory's train, validation and test parts.
type SplitParts = (PathBuf, Option<PathBuf>, Option<PathBuf>);

/// A split directory's parts: `train/` (or `train.csv|tsv|jsonl`) and whichever held-out parts
/// sit beside it; `None` when `dir` is not one.
fn split_dir_parts(dir: &Path) -> Result<Option<SplitParts>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let find = |names: &[&str]| -> Result<Option<PathBuf>> {
        let mut found: Vec<PathBuf> = Vec::new();
        for name in names {
            let folder = dir.join(name);
            if folder.is_dir() {
                found.push(folder);
            }
            for ext in ["csv", "tsv", "jsonl"] {
                let file = dir.join(format!("{name}.{ext}"));
                if file.is_file() {
                    found.push(file);
                }
            }
        }
        match found.len() {
            0 | 1 => Ok(found.pop()),
            _ => Err(DataError::Layout {
                path: dir.to_path_buf(),
                message: format!(
                    "more than one candidate for one part: {}",
                    found
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    };
    let Some(train) = find(TRAIN_NAMES)? else {
        return Ok(None);
    };
    Ok(Some((train, find(VALIDATION_NAMES)?, find(TEST_NAMES)?)))
}

fn split_of(dataset: &TextDataset, fractions: SplitFractions, seed: u64) -> Result<Split> {
    let classes = dataset.classes();
    stratified_split(dataset.len(), classes.as_deref(), fractions, seed)
}
