//! `kiln compare`: arguments, then [`kiln_train::compare::compare`] with each run in a `kiln`
//! process of its own ([`crate::runs`]).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::runs::{ProcessLauncher, SharedRunArgs};
use kiln_models::DeviceChoice;
use kiln_train::compare::{CompareSettings, Contender, compare as run_comparison};
use kiln_train::icl::IclSettings;

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    shared: SharedRunArgs,
    /// Methods to compare, comma-separated, each with its defaults or with options as
    /// `name:option=value[:option=value]` (`lora:rank=4,lora:rank=16,pfeiffer`); `kiln methods`
    /// lists them.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "full,linear-probe,mlp-k,bitfit,lora,pfeiffer,prompt,p-tuning-v2"
    )]
    methods: Vec<String>,
    /// One peak learning rate for every method [default: each method's own].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Seeds per method: --seed, --seed + 1, ...
    #[arg(long, default_value_t = 1)]
    seeds: u64,
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
    /// Comparison directory: one run directory per method and seed, plus the report. A run
    /// there is reused only when its settings are the ones asked for.
    #[arg(long, default_value = "runs/compare")]
    out: PathBuf,
}

pub fn compare(args: CompareArgs, device: DeviceChoice) -> Result<()> {
    let contenders = args
        .methods
        .iter()
        .map(|spec| Contender::parse(spec))
        .collect::<kiln_train::Result<Vec<_>>>()?;
    let mut base = args.shared.base(device)?;
    base.train_examples = args.train_examples;
    let settings = CompareSettings {
        base,
        lr: args.lr,
        contenders,
        seeds: args.seeds,
        icl: IclSettings {
            shots: args.icl_shots,
            calibrate: args.icl_calibrate,
            text_words: args.icl_text_words,
            ..IclSettings::new(&args.shared.model)
        },
        title: args.title,
        out: args.out.clone(),
    };
    let comparison = run_comparison(&settings, &ProcessLauncher::new(device)?)?;
    print!("{}", std::fs::read_to_string(args.out.join("results.md"))?);
    println!(
        "results.json, results.md, plot.svg and report.html written to {}",
        args.out.display()
    );
    if !comparison.failed.is_empty() {
        bail!(
            "{} of {} runs failed (see the table)",
            comparison.failed.len(),
            comparison.failed.len() + comparison.runs.len()
        );
    }
    Ok(())
}
