//! `kiln study`: the small-data study of Child-Tuning (Xu et al. 2021). Full fine-tuning, plain
//! ("vanilla") and with Child-Tuning F and D, on seeded random subsets of the training split, for
//! several subset sizes and seeds; each run is a `kiln train` of its own (own process, so each is
//! reproducible from its seed), skipped when its `summary.json` exists and resumed when it was
//! interrupted. Writes `study.json` (every run) and `study.md` (mean and sample standard
//! deviation of the test metric per size and variant).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use kiln_models::DeviceChoice;
use kiln_train::trainer::{read_json, write_json};

use crate::train::{RunSummary, TaskArgs};

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
    let exe = std::env::current_exe().context("finding the kiln executable")?;
    let mut runs = Vec::new();
    for &size in &args.sizes {
        for variant in &args.variants {
            for seed in args.seed..args.seed + args.seeds {
                let dir = args
                    .out
                    .join(format!("n{size}"))
                    .join(format!("{variant}-s{seed}"));
                let summary = train_once(&exe, &args, device, size, variant, seed, &dir)?;
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

/// One `kiln train` of full fine-tuning on a subset, or its summary when it already ran.
fn train_once(
    exe: &Path,
    args: &StudyArgs,
    device: DeviceChoice,
    size: usize,
    variant: &str,
    seed: u64,
    dir: &Path,
) -> Result<RunSummary> {
    let summary_path = dir.join("summary.json");
    if summary_path.is_file() {
        return Ok(read_json(&summary_path)?);
    }
    let mut command = Command::new(exe);
    command
        .arg("--device")
        .arg(device.to_string())
        .arg("train")
        .arg("--model")
        .arg(&args.model)
        .args(args.task.to_cli_args())
        .args(["--method", "full"])
        .args(["--train-examples", &size.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--epochs", &args.epochs.to_string()])
        .args(["--batch-size", &args.batch_size.to_string()])
        .args(["--max-len", &args.max_len.to_string()])
        .arg("--out")
        .arg(dir);
    if let Some(lr) = args.lr {
        command.args(["--lr", &lr.to_string()]);
    }
    match variant {
        "child-f" => command.args(["--child-tuning", "f"]),
        "child-d" => command.args(["--child-tuning", "d"]),
        _ => &mut command,
    };
    if variant != "vanilla" {
        command.args(["--reserve", &args.reserve.to_string()]);
    }
    if dir.join("run.json").is_file() {
        command.arg("--resume");
    }
    let status = command
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    if !status.success() {
        bail!("the run in {} failed ({status})", dir.display());
    }
    Ok(read_json(&summary_path)?)
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
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let std = if values.len() > 1 {
                (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
            } else {
                0.0
            };
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
