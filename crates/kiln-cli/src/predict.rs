//! `kiln predict`: a run's labels (and class probabilities, or a regression's score) for new
//! texts, given on the command line or in a file; arguments, then the library's calls.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use kiln_data::{InputRow, InputSpec, TaskSpec, read_inputs};
use kiln_train::multitask::ParallelTasks;
use kiln_train::predict::{
    Prediction, PredictionFormat, format_predictions, format_task_predictions, input_of,
    write_predictions,
};
use kiln_train::run::load_run;

#[derive(Args)]
pub struct PredictArgs {
    /// Run directory written by `kiln train`. Give it again for more tasks: runs of
    /// bottleneck-adapter methods on one base model answer in one forward pass (a Parallel
    /// composition), the layers below their adapters computed once.
    #[arg(long, required = true)]
    run: Vec<PathBuf>,
    /// With several runs: the lowest K layers run without adapters, computed once for every
    /// task (AdapterDrop at inference) [default: the fewest the runs drop].
    #[arg(long, value_name = "K")]
    drop_layers: Option<usize>,
    /// A text to label (repeat the flag for several).
    #[arg(long, required_unless_present = "input", conflicts_with = "input")]
    text: Vec<String>,
    /// The second text of a pair task, one per --text.
    #[arg(long)]
    pair: Vec<String>,
    /// Texts to label: CSV/TSV/JSONL (its id column, when it has one, is carried through) or a
    /// .txt file with one text per line.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Table column with the text [default: the run's, else text].
    #[arg(long)]
    text_column: Option<String>,
    /// Table column with the second text of a pair [default: the run's].
    #[arg(long)]
    pair_column: Option<String>,
    /// Table column with an id to carry into the output [default: `id`, when present].
    #[arg(long)]
    id_column: Option<String>,
    /// Encoding of an input that is not UTF-8 [default: the run's].
    #[arg(long)]
    encoding: Option<String>,
    /// Skip and count bad rows of --input instead of stopping at the first.
    #[arg(long)]
    skip_bad_rows: bool,
    /// Write the predictions to a .csv or .jsonl file instead of printing them.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print the predictions as JSON lines.
    #[arg(long)]
    json: bool,
    /// Texts per forward pass [default: the run's evaluation batch size].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Go on when the base model's files changed since the run trained.
    #[arg(long)]
    allow_changed_inputs: bool,
    /// Replace an existing --output file.
    #[arg(long)]
    force: bool,
}

pub fn predict(args: PredictArgs, device: &burn::tensor::Device) -> Result<()> {
    if args.run.len() > 1 {
        return predict_tasks(args, device);
    }
    if let Some(output) = &args.output
        && output.exists()
        && !args.force
    {
        bail!(
            "--output {}: the file exists; pass --force to replace it",
            output.display()
        );
    }
    if args.drop_layers.is_some() {
        bail!("--drop-layers is for several runs answered together; give --run more than once");
    }
    let run = load_run(&args.run[0], device, args.allow_changed_inputs)?;
    let rows = read_rows(&args, &run.config.task)?;
    let batch_size = args.batch_size.unwrap_or(run.config.train.eval_batch_size);
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let predictions = run.predictor(device, batch_size).predict_rows(&rows)?;
    if let Some(output) = &args.output {
        write_predictions(output, &rows, &predictions, &run.kind)?;
        println!("{} predictions written to {}", rows.len(), output.display());
    } else if args.json {
        print!(
            "{}",
            format_predictions(&rows, &predictions, &run.kind, PredictionFormat::Jsonl)?
        );
    } else {
        print_predictions(None, &rows, &predictions);
    }
    Ok(())
}

/// Several runs' tasks over the same texts in one pass each batch; `--output out.csv` writes
/// `out-<task>.csv` per task.
fn predict_tasks(args: PredictArgs, device: &burn::tensor::Device) -> Result<()> {
    let mut tasks = ParallelTasks::load(&args.run, device, args.allow_changed_inputs)?;
    if let Some(layers) = args.drop_layers {
        tasks.set_adapter_drop(layers)?;
    }
    if let Some(output) = &args.output {
        for name in &tasks.names {
            let path = task_output(output, name);
            if path.exists() && !args.force {
                bail!(
                    "--output: {} exists; pass --force to replace it",
                    path.display()
                );
            }
        }
    }
    let rows = read_rows(&args, &tasks.specs[0])?;
    let batch_size = args.batch_size.unwrap_or(tasks.batch_size);
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let inputs: Vec<_> = rows.iter().map(input_of).collect();
    let predictions = tasks.predict(&inputs, device, batch_size)?;
    for ((name, predictions), kind) in tasks.names.iter().zip(&predictions).zip(&tasks.kinds) {
        if let Some(output) = &args.output {
            let path = task_output(output, name);
            write_predictions(&path, &rows, predictions, kind)?;
            println!(
                "{name}: {} predictions written to {}",
                rows.len(),
                path.display()
            );
        } else if args.json {
            let format = PredictionFormat::Jsonl;
            print!(
                "{}",
                format_task_predictions(name, &rows, predictions, kind, format)?
            );
        } else {
            print_predictions(Some(name), &rows, predictions);
        }
    }
    Ok(())
}

/// `out.csv` → `out-<task>.csv`.
fn task_output(output: &std::path::Path, task: &str) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let extension = output
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    output.with_file_name(format!("{stem}-{task}{extension}"))
}

/// One line per text: its id, label and probability (or score), and the text.
fn print_predictions(task: Option<&str>, rows: &[InputRow], predictions: &[Prediction]) {
    for (row, prediction) in rows.iter().zip(predictions) {
        let task = task.map_or_else(String::new, |t| format!("{t}\t"));
        let id = row
            .id
            .as_ref()
            .map_or_else(String::new, |id| format!("{id}\t"));
        match prediction {
            Prediction::Class {
                label,
                probabilities,
            } => {
                let p = probabilities.iter().copied().fold(0.0f32, f32::max);
                println!("{task}{id}{label}\t{p:.4}\t{}", row.text);
            }
            Prediction::Value(score) => println!("{task}{id}{score:.6}\t{}", row.text),
            Prediction::Labels { labels, .. } => {
                let labels = if labels.is_empty() {
                    "(none)".to_string()
                } else {
                    labels.join("|")
                };
                println!("{task}{id}{labels}\t{}", row.text);
            }
        }
    }
}

/// The texts to label: `--input`'s rows (the run's columns and encoding unless given), or the
/// `--text` (and `--pair`) flags.
fn read_rows(args: &PredictArgs, task: &TaskSpec) -> Result<Vec<InputRow>> {
    let rows = match &args.input {
        Some(path) => {
            let spec = InputSpec {
                text_column: args
                    .text_column
                    .clone()
                    .or(task.text_column.clone())
                    .unwrap_or_else(|| "text".into()),
                pair_column: args.pair_column.clone().or(task.pair_column.clone()),
                id_column: args.id_column.clone(),
            };
            let mut options = kiln_data::ReadOptions::default();
            if args.skip_bad_rows {
                options.on_bad_row = kiln_data::OnBadRow::Skip;
            }
            if let Some(label) = args.encoding.as_ref().or(task.encoding.as_ref()) {
                options = options.with_encoding_label(label)?;
            }
            let (rows, skipped) = read_inputs(path, &spec, options)?;
            for row in &skipped {
                eprintln!("skipped {}: {}", row.location, row.reason);
            }
            rows
        }
        None => {
            if !args.pair.is_empty() && args.pair.len() != args.text.len() {
                bail!(
                    "--pair: {} given for {} --text; a pair task needs one per text",
                    args.pair.len(),
                    args.text.len()
                );
            }
            args.text
                .iter()
                .enumerate()
                .map(|(i, text)| InputRow {
                    id: None,
                    text: text.clone(),
                    pair: args.pair.get(i).cloned(),
                })
                .collect()
        }
    };
    Ok(rows)
}
