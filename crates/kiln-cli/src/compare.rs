//! `kiln compare`: several methods on one model and task, each with its defaults (learning rate,
//! sizes) and the same trainer settings and seeds, each run a `kiln train` of its own
//! ([`crate::runs`]); `icl` (in-context learning, a `kiln icl` run) stands beside them as the
//! zero-training baseline. Writes `results.json` (every run and the per-method rows), `results.md`
//! (test metric, trainable share, time, peak memory), `plot.svg` (metric against trainable
//! share) and `report.html` (both on one self-contained page).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use kiln_models::DeviceChoice;
use kiln_train::report::{ComparisonRow, html_page, markdown, mean_std, svg_plot};
use kiln_train::trainer::write_json;
use kiln_tuning::registry;

use crate::runs::Launcher;
use crate::train::TaskArgs;

#[derive(Args)]
pub struct CompareArgs {
    /// HF model directory (BERT, GPT-2 or M2-BERT).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    task: TaskArgs,
    /// Methods to compare, comma-separated (`kiln methods` lists them); each runs with its
    /// defaults.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "full,linear-probe,mlp-k,bitfit,lora,pfeiffer,prompt,p-tuning-v2"
    )]
    methods: Vec<String>,
    /// Seeds per method: --seed, --seed + 1, ...
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Train every method on the same seeded subset of this many training examples.
    #[arg(long)]
    train_examples: Option<usize>,
    /// Demonstrations per query for `icl` (in-context learning, GPT-2 only).
    #[arg(long, default_value_t = 4)]
    icl_shots: usize,
    /// Contextual calibration for `icl` (see `kiln icl --calibrate`).
    #[arg(long)]
    icl_calibrate: bool,
    /// Words kept of each text in `icl`'s prompts, so that the demonstrations fit the model.
    #[arg(long, default_value_t = 40)]
    icl_text_words: usize,
    /// Title of the report [default: the model and task directories].
    #[arg(long)]
    title: Option<String>,
    /// Comparison directory: one run directory per method and seed, plus the report.
    #[arg(long, default_value = "runs/compare")]
    out: PathBuf,
}

/// In-context learning, the zero-training baseline, run as `kiln icl`.
const ICL: &str = "icl";

#[derive(Serialize)]
struct CompareRun {
    method: String,
    seed: u64,
    metric: String,
    test: f64,
    trainable_percent: f64,
    seconds_per_epoch: f64,
    peak_rss_mib: Option<f64>,
}

pub fn compare(args: CompareArgs, device: DeviceChoice) -> Result<()> {
    if args.methods.is_empty() || args.seeds == 0 {
        bail!("--methods and --seeds must name at least one run");
    }
    let methods = registry();
    for name in &args.methods {
        let Some(method) = methods.iter().find(|m| m.name == name) else {
            let hint = kiln_tuning::nearest_method(name)
                .map_or_else(String::new, |near| format!("; did you mean `{near}`?"));
            bail!("--methods: unknown method `{name}` (`kiln methods` lists them{hint})");
        };
        // In-context learning is the one method with a command of its own that compares here.
        let reason = match (method.needs, method.command) {
            (Some(needs), _) => Some(format!("needs {needs}; run it with `kiln train`")),
            (None, Some(command)) if name != ICL => Some(format!("runs with `{command}`")),
            _ => None,
        };
        if let Some(reason) = reason {
            bail!("--methods: `{name}` needs more than its defaults: it {reason}");
        }
    }
    let launcher = Launcher::new(device, &args.model, &args.task)?;
    let mut runs = Vec::new();
    let mut rows = Vec::new();
    for method in &args.methods {
        let mut tests = Vec::new();
        let mut last = None;
        let (mut seconds, mut peak) = (0.0, None::<f64>);
        for seed in args.seed..args.seed + args.seeds {
            let dir = args.out.join(format!("{method}-s{seed}"));
            let summary = if method == ICL {
                let mut options = [
                    "--shots",
                    &args.icl_shots.to_string(),
                    "--text-words",
                    &args.icl_text_words.to_string(),
                    "--seed",
                    &seed.to_string(),
                ]
                .map(str::to_string)
                .to_vec();
                if args.icl_calibrate {
                    options.push("--calibrate".into());
                }
                launcher.icl(&options, &dir)?
            } else {
                launcher.train(&run_options(&args, method, seed), &dir)?
            };
            let Some(test) = &summary.test else {
                bail!("{}: the run has no test split to report", dir.display());
            };
            let (metric, value) = test.primary();
            eprintln!("{method} seed {seed}: test {metric} {value:.4}");
            tests.push(value);
            seconds += summary.seconds_per_epoch;
            if let Some(p) = summary.peak_rss_mib {
                peak = Some(peak.map_or(p, |q: f64| q.max(p)));
            }
            runs.push(CompareRun {
                method: summary.method.clone(),
                seed,
                metric: metric.to_string(),
                test: value,
                trainable_percent: summary.trainable_percent,
                seconds_per_epoch: summary.seconds_per_epoch,
                peak_rss_mib: summary.peak_rss_mib,
            });
            last = Some(summary);
        }
        let summary = last.expect("at least one seed ran");
        let (mean, std) = mean_std(&tests);
        rows.push(ComparisonRow {
            method: summary.method,
            seeds: tests.len(),
            mean,
            std,
            trainable_params: summary.trainable_params,
            trainable_percent: summary.trainable_percent,
            seconds_per_epoch: seconds / tests.len() as f64,
            peak_rss_mib: peak,
        });
    }
    let metric = runs
        .first()
        .map_or("metric", |r| r.metric.as_str())
        .to_string();
    let title = args
        .title
        .clone()
        .unwrap_or_else(|| format!("{} on {}", name_of(&args.model), name_of(&args.task.task)));
    let table = markdown(&rows, &metric);
    let svg = svg_plot(&rows, &metric, &title)?;
    let page = html_page(&rows, &metric, &title, &svg);
    write_json(
        &args.out.join("results.json"),
        &serde_json::json!({ "title": title, "metric": metric, "rows": rows, "runs": runs }),
    )?;
    for (name, text) in [
        ("results.md", format!("# {title}\n\n{table}")),
        ("plot.svg", svg),
        ("report.html", page),
    ] {
        kiln_train::write_atomically(&args.out.join(name), text.as_bytes())?;
    }
    println!("{table}");
    println!(
        "results.json, results.md, plot.svg and report.html written to {}",
        args.out.display()
    );
    Ok(())
}

/// The `kiln train` options of one method and seed.
fn run_options(args: &CompareArgs, method: &str, seed: u64) -> Vec<String> {
    let mut options: Vec<String> = [
        "--method",
        method,
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
    if let Some(n) = args.train_examples {
        options.extend(["--train-examples".into(), n.to_string()]);
    }
    options
}

fn name_of(path: &std::path::Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}
