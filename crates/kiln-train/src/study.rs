//! The small-data study of Child-Tuning (Xu et al. 2021): full fine-tuning, plain ("vanilla")
//! and with Child-Tuning F and D, on seeded random subsets of the training split, for several
//! subset sizes and seeds. Writes `study.json` (every run) and `study.md` (mean and sample
//! standard deviation of the test metric per size and variant). Runs are placed and reused as a
//! comparison's are ([`crate::compare`]): only with the settings asked for.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::child_tuning::ChildTuning;
use crate::compare::{Launcher, RunRequest, launch_or_reuse};
use crate::error::{Result, TrainError};
use crate::report::mean_std;
use crate::run::RunSettings;
use crate::trainer::write_json;

/// The study's variants, as `--variants` names them.
pub const VARIANTS: [&str; 3] = ["vanilla", "child-f", "child-d"];

/// What to study.
#[derive(Debug, Clone)]
pub struct StudySettings {
    /// What every run shares (its method should be full fine-tuning): model, task, trainer
    /// settings (the seed is the first seed), lengths, device.
    pub base: RunSettings,
    /// Training-subset sizes.
    pub sizes: Vec<usize>,
    /// Seeds per size and variant: the base seed, the base seed + 1, ...
    pub seeds: u64,
    /// Any of [`VARIANTS`].
    pub variants: Vec<String>,
    /// Child-Tuning's reserve share.
    pub reserve: f64,
    /// The study directory: one run folder per size, variant and seed, and the tables.
    pub out: PathBuf,
}

/// One run's test metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyRun {
    /// Training examples.
    pub size: usize,
    /// The variant.
    pub variant: String,
    /// The seed.
    pub seed: u64,
    /// The test metric's name.
    pub metric: String,
    /// The test metric.
    pub test: f64,
}

/// One size and variant over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyCell {
    /// Training examples.
    pub size: usize,
    /// The variant.
    pub variant: String,
    /// Seeds that finished.
    pub runs: usize,
    /// Mean test metric.
    pub mean: f64,
    /// Sample standard deviation.
    pub std: f64,
}

/// What [`study`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Study {
    /// Every run.
    pub runs: Vec<StudyRun>,
    /// The table's cells.
    pub cells: Vec<StudyCell>,
    /// `study.md`.
    pub table: String,
}

/// Runs (or reuses) every size, variant and seed of `settings` through `launcher`, then writes
/// `study.json` and `study.md`. A failed run stops the study (its cells would be skewed).
pub fn study(settings: &StudySettings, launcher: &dyn Launcher) -> Result<Study> {
    for variant in &settings.variants {
        if !VARIANTS.contains(&variant.as_str()) {
            return Err(TrainError::Invalid(format!(
                "--variants: `{variant}` is not one of {}",
                VARIANTS.join(", ")
            )));
        }
    }
    if settings.sizes.is_empty() || settings.seeds == 0 {
        return Err(TrainError::Invalid(
            "--sizes and --seeds must name at least one run".into(),
        ));
    }
    let _writer = crate::run::lock_run_dir(&settings.out)?;
    let first_seed = settings.base.train.seed;
    let mut runs = Vec::new();
    for &size in &settings.sizes {
        for variant in &settings.variants {
            for seed in first_seed..first_seed + settings.seeds {
                let dir = settings
                    .out
                    .join(format!("n{size}"))
                    .join(format!("{variant}-s{seed}"));
                let request = request_of(settings, size, variant, seed);
                let (_, summary) = launch_or_reuse(&request, &dir, launcher, true)
                    .map_err(|e| TrainError::Invalid(format!("{}: {e}", dir.display())))?;
                let Some(test) = summary.test else {
                    return Err(TrainError::Invalid(format!(
                        "{}: the run has no test split to report",
                        dir.display()
                    )));
                };
                let (metric, value) = test.primary();
                eprintln!("n {size} {variant} seed {seed}: test {metric} {value:.4}");
                runs.push(StudyRun {
                    size,
                    variant: variant.clone(),
                    seed,
                    metric: metric.to_string(),
                    test: value,
                });
            }
        }
    }
    let cells = summarise(settings, &runs);
    let table = markdown(
        settings,
        &cells,
        runs.first().map_or("metric", |r| &r.metric),
    );
    write_json(
        &settings.out.join("study.json"),
        &serde_json::json!({ "runs": runs, "cells": cells }),
    )?;
    crate::write_atomically(&settings.out.join("study.md"), table.as_bytes())?;
    Ok(Study { runs, cells, table })
}

/// Full fine-tuning of a `size`-example subset, plain or with Child-Tuning.
fn request_of(settings: &StudySettings, size: usize, variant: &str, seed: u64) -> RunRequest {
    let mut run = settings.base.clone();
    run.train_examples = Some(size);
    run.train.seed = seed;
    let reserve = settings.reserve;
    run.train.child_tuning = match variant {
        "child-f" => Some(ChildTuning::F { reserve }),
        "child-d" => Some(ChildTuning::D { reserve }),
        _ => None,
    };
    RunRequest::Train(Box::new(run))
}

fn summarise(settings: &StudySettings, runs: &[StudyRun]) -> Vec<StudyCell> {
    let mut cells = Vec::new();
    for &size in &settings.sizes {
        for variant in &settings.variants {
            let values: Vec<f64> = runs
                .iter()
                .filter(|r| r.size == size && &r.variant == variant)
                .map(|r| r.test)
                .collect();
            let (mean, std) = mean_std(&values);
            cells.push(StudyCell {
                size,
                variant: variant.clone(),
                runs: values.len(),
                mean,
                std,
            });
        }
    }
    cells
}

/// Rows: subset sizes; columns: variants; cells: `mean ± std` of the test metric in percent.
fn markdown(settings: &StudySettings, cells: &[StudyCell], metric: &str) -> String {
    let mut text = format!(
        "Test {metric} (%), mean ± sample standard deviation over {} seeds (from {}); full \
         fine-tuning, {} epochs, reserve {} for Child-Tuning.\n\n| train examples |",
        settings.seeds, settings.base.train.seed, settings.base.train.epochs, settings.reserve
    );
    for variant in &settings.variants {
        text.push_str(&format!(" {variant} |"));
    }
    text.push_str("\n|---|");
    text.push_str(&"---|".repeat(settings.variants.len()));
    for &size in &settings.sizes {
        text.push_str(&format!("\n| {size} |"));
        for cell in cells.iter().filter(|c| c.size == size) {
            text.push_str(&format!(
                " {:.1} ± {:.1} |",
                100.0 * cell.mean,
                100.0 * cell.std
            ));
        }
    }
    text.push('\n');
    text
}
