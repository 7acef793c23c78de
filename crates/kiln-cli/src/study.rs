//! `kiln study`: arguments, then [`kiln_train::study::study`] (the small-data study of
//! Child-Tuning) with each run in a `kiln` process of its own ([`crate::runs`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use kiln_models::DeviceChoice;
use kiln_train::study::{StudySettings, study as run_study};

use crate::runs::{ProcessLauncher, SharedRunArgs};

#[derive(Args)]
pub struct StudyArgs {
    #[command(flatten)]
    shared: SharedRunArgs,
    /// Training-subset sizes.
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
    sizes: Vec<usize>,
    /// Seeds per size and variant: --seed, --seed + 1, ...
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Any of vanilla, child-f, child-d.
    #[arg(long, value_delimiter = ',', default_value = "vanilla,child-f,child-d")]
    variants: Vec<String>,
    /// Child-Tuning's reserve share.
    #[arg(long, default_value_t = 0.3)]
    reserve: f64,
    /// Peak learning rate [default: full fine-tuning's, 5e-5].
    #[arg(long)]
    lr: Option<f64>,
    /// Study directory: one run directory per size, variant and seed, plus the tables.
    #[arg(long, default_value = "runs/study")]
    out: PathBuf,
}

pub fn study(args: StudyArgs, device: DeviceChoice) -> Result<()> {
    let mut base = args.shared.base(device)?;
    if let Some(lr) = args.lr {
        base.train.lr = lr;
    }
    let settings = StudySettings {
        base,
        sizes: args.sizes,
        seeds: args.seeds,
        variants: args.variants,
        reserve: args.reserve,
        out: args.out.clone(),
    };
    let study = run_study(&settings, &ProcessLauncher::new(device)?)?;
    println!("{}", study.table);
    println!("study written to {}", args.out.display());
    Ok(())
}
