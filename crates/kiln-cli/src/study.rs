//! `kiln study`: the small-data study of Child-Tuning (Xu et al. 2021). Full fine-tuning, plain
//! ("vanilla") and with Child-Tuning F and D, on seeded random subsets of the training split, for
//! several subset sizes and seeds; each run is a `kiln train` of its own ([`crate::runs`]).
//! Writes `study.json` (every run) and `study.md` (mean and sample standard deviation of the test
//! metric per size and variant).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use kiln_models::DeviceChoice;
use kiln_train::report::mean_std;
use kiln_train::trainer::write_json;

use crate::runs::Launcher;
use crate::train::TaskArgs;

#[derive(Args)]
pub struct StudyArgs {
    /// HF model directory (BERT or GPT-2).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    task: TaskArgs,
    /// Training-subset sizes.
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
    sizes: Vec<usize>,
    /// Seeds per size and variant: --seed, --seed + 1, ...
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Any of vanilla, child-f, child-d.
    #[arg(long, value_delimiter = ',', default_value = "vanilla,child-f,child-d")]
    variants: Vec<String>,
    /// Child-Tuning's reserve share.
    #[arg(long, default_value_t = 0.3)]
    reserve: f64,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Peak learning rate [default: full fine-tuning's, 5e-5].
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Study directory: one run directory per size, variant and seed, plus the tables.
    #[arg(long, default_value = "runs/study")]
    out: PathBuf,
}

#[derive(Serialize)]
struct StudyRun {
    size: usize,
    variant: String,
    seed: u64,
    metric: String,
    test: f64,
}

#[derive(Serialize)]
struct StudyCell {
    size: usize,
    variant: String,
    runs: usize,
    mean: f64,
    std: f64,
}

pub fn study(args: StudyArgs, device: DeviceChoice) -> Result<()> {
    for variant in &args.variants {
        if !matches!(variant.as_str(), "vanilla" | "child-f" | "child-d") {
            bail!("--variants: `{variant}` is not one of vanilla, child-f, child-d");
        }
    }
    if args.sizes.is_empty() || args.seeds == 0 {
        bail!("--sizes and --seeds must name at least one run");
    }
    let launcher = Launcher::new(device, &args.model, &args.task)?;
    let mut runs = Vec::new();
    for &size in &args.sizes {
        for variant in &args.variants {
            for seed in args.seed..args.seed + args.seeds {
                let dir = args
                    .out
                    .join(format!("n{size}"))
                    .join(format!("{variant}-s{seed}"));
                let summary = launcher.train(&run_options(&args, size, variant, seed), &dir)?;
                let Some(test) = summary.test else {
                    bail!("{}: the run has no test split to report", dir.display());
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
    let cells = summarise(&args, &runs);
    let table = markdown(&args, &cells, runs.first().map_or("metric", |r| &r.metric));
    write_json(
        &args.out.join("study.json"),
        &serde_json::json!({ "runs": runs, "cells": cells }),
    )?;
    kiln_train::write_atomically(&args.out.join("study.md"), table.as_bytes())?;
    println!("{table}");
    println!("study written to {}", args.out.display());
    Ok(())
}

/// The `kiln train` options of one study run: full fine-tuning of a subset, plain or with
/// Child-Tuning.
fn run_options(args: &StudyArgs, size: usize, variant: &str, seed: u64) -> Vec<String> {
    let mut options: Vec<String> = [
        "--method",
        "full",
        "--train-examples",
        &size.to_string(),
        "--seed",
        &seed.to_string(),
        "--epochs",
        &args.epochs.to_string(),
        "--batch-size",
        &args.batch_size.to_string(),
        "--max-len",
        &args.max_len.to_string(),
    ]
    .map(str::to_string)
    .into();
    if let Some(lr) = args.lr {
        options.extend(["--lr".into(), lr.to_string()]);
    }
    if let Some(kind) = variant.strip_prefix("child-") {
        options.extend([
            "--child-tuning".into(),
            kind.into(),
            "--reserve".into(),
            args.reserve.to_string(),
        ]);
    }
    options
}

fn summarise(args: &StudyArgs, runs: &[StudyRun]) -> Vec<StudyCell> {
    let mut cells = Vec::new();
    for &size in &args.sizes {
        for variant in &args.variants {
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
fn markdown(args: &StudyArgs, cells: &[StudyCell], metric: &str) -> String {
    let mut text = format!(
        "Test {metric} (%), mean ± sample standard deviation over {} seeds (from {}); full \
         fine-tuning, {} epochs, reserve {} for Child-Tuning.\n\n| train examples |",
        args.seeds, args.seed, args.epochs, args.reserve
    );
    for variant in &args.variants {
        text.push_str(&format!(" {variant} |"));
    }
    text.push_str("\n|---|");
    text.push_str(&"---|".repeat(args.variants.len()));
    for &size in &args.sizes {
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
