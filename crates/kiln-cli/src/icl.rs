//! `kiln icl`: in-context learning on a text classification task with a GPT-2 directory, the
//! zero-training baseline (see `kiln_train::icl`). Writes `summary.json` in `kiln train`'s
//! shape (nothing trains), so `kiln compare` shows it beside the fine-tuned methods.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use clap::Args;
use serde::Serialize;

use kiln_data::TaskKind;
use kiln_models::{Backbone, DeviceChoice, Pretrained};
use kiln_train::icl::{DEFAULT_TEMPLATE, IclConfig, evaluate_icl};
use kiln_train::memory::peak_rss_mib;
use kiln_train::trainer::write_json;

use kiln_train::run::RunSummary;

use crate::train::TaskArgs;

#[derive(Args, Serialize)]
pub struct IclArgs {
    /// HF GPT-2 directory.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    #[serde(skip)]
    pub task: TaskArgs,
    /// Demonstrations before each query.
    #[arg(long, default_value_t = 4)]
    pub shots: usize,
    /// Prompt template with `{text}` and `{label}`.
    #[arg(long, default_value = DEFAULT_TEMPLATE)]
    pub template: String,
    /// The word each class is written as, comma-separated, in the task's class order
    /// [default: the class names].
    #[arg(long, value_delimiter = ',')]
    pub label_words: Option<Vec<String>>,
    /// Words kept of each text.
    #[arg(long, default_value_t = 40)]
    pub text_words: usize,
    /// Contextual calibration: divide the label words' probabilities by those after the
    /// content-free query `N/A` (Zhao et al. 2021).
    #[arg(long)]
    pub calibrate: bool,
    /// Seeds the split and the choice of demonstrations.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Which part is queried: test or validation.
    #[arg(long, default_value = "test")]
    pub split: String,
    #[arg(long, default_value = "runs/icl")]
    pub out: PathBuf,
}

pub fn icl(args: IclArgs, choice: DeviceChoice, device: &Device) -> Result<()> {
    let started = Instant::now();
    let task = args
        .task
        .spec()
        .load(args.seed)
        .with_context(|| format!("reading task {}", args.task.task.display()))?;
    let TaskKind::Classification { labels } = &task.kind else {
        bail!("in-context learning here classifies; the task is a regression");
    };
    let pretrained = Pretrained::load(&args.model, device)
        .with_context(|| format!("loading model from {}", args.model.display()))?;
    let Backbone::Gpt2(model, gpt2_config) = &pretrained.backbone else {
        bail!(
            "{}: in-context learning needs a causal language model (GPT-2)",
            args.model.display()
        );
    };
    let prompts = IclConfig {
        shots: args.shots,
        template: args.template.replace("\\n", "\n"),
        label_words: args.label_words.clone().unwrap_or_else(|| labels.clone()),
        text_words: args.text_words,
        seed: args.seed,
        calibrate: args.calibrate,
    };
    prompts.check(labels.len())?;
    let queries = match args.split.as_str() {
        "test" => &task.split.test,
        "validation" => &task.split.validation,
        other => bail!("--split {other}: expected test or validation"),
    };
    let train = task.part(&task.split.train);
    let metrics = evaluate_icl(
        model,
        &pretrained.tokenizer,
        &train,
        &task.part(queries),
        &prompts,
        gpt2_config.n_positions,
        device,
    )?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    write_json(&args.out.join("run.json"), &args)?;
    let summary = RunSummary {
        method: format!(
            "icl-k{}{}",
            args.shots,
            if args.calibrate { "-calibrated" } else { "" }
        ),
        trainable_params: 0,
        total_params: model.num_params(),
        trainable_percent: 0.0,
        best_epoch: None,
        validation: None,
        test: Some(metrics.clone()),
        seconds_per_epoch: started.elapsed().as_secs_f64(),
        peak_rss_mib: peak_rss_mib(),
        device: choice.to_string(),
    };
    write_json(&args.out.join("summary.json"), &summary)?;
    let (name, value) = metrics.primary();
    println!(
        "in-context learning, {} shots{}: {} {name} {value:.4} ({} queries); nothing trains",
        args.shots,
        if args.calibrate { ", calibrated" } else { "" },
        args.split,
        queries.len()
    );
    Ok(())
}
