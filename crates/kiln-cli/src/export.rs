//! `kiln export` and `kiln merge`: a trained run in the formats the Python ecosystem reads.
//! `export` writes a LoRA, prompt-tuning or (GPT-2) prefix-tuning / P-tuning v2 run as a HF peft
//! adapter directory (`PeftModel.from_pretrained`; `kiln train --peft-adapter` reads one back);
//! `merge` folds a run's LoRA deltas into the base weights and writes a HF checkpoint that
//! transformers loads on its own (see `kiln_train::peft` and `kiln_train::merge`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::Args;

use kiln_train::merge::save_merged;
use kiln_train::peft::export_peft;
use kiln_train::trainer::read_json;
use kiln_tuning::MethodConfig;

use crate::train::{RunConfig, load_run_model};

#[derive(Args)]
pub struct ExportArgs {
    /// Run directory written by `kiln train`.
    #[arg(long)]
    run: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// `base_model_name_or_path` in the adapter config [default: the run's model directory].
    #[arg(long)]
    base_model: Option<String>,
}

pub fn export(args: ExportArgs, device: &Device) -> Result<()> {
    let run: RunConfig = read_json(&args.run.join("run.json"))?;
    if !matches!(
        run.method,
        MethodConfig::Lora(_)
            | MethodConfig::Prompt(_)
            | MethodConfig::Prefix(_)
            | MethodConfig::PTuningV2(_)
    ) {
        bail!(
            "{}: the run's method is `{}`; kiln export writes peft's LoRA, prompt-tuning and \
             prefix-tuning formats",
            args.run.display(),
            run.method.name()
        );
    }
    let (mut model, _) = load_run_model(&args.run, &run, device)?;
    if let MethodConfig::Prefix(prefix) = &run.method {
        // peft's adapter holds the prefixes themselves, as kiln keeps them after training.
        model.fold_prefix_encoder(&prefix.name)?;
    }
    let base = args
        .base_model
        .clone()
        .unwrap_or_else(|| run.model.display().to_string());
    let written = export_peft(&model, &args.out, &base)?;
    println!(
        "peft {} adapter ({}, {} tensors{}) written to {}",
        run.method.name(),
        written.task_type,
        written.tensors,
        if written.with_classifier {
            ", classifier included"
        } else {
            "; the head is not part of it: peft's classes have none like it"
        },
        args.out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct MergeArgs {
    /// Run directory written by `kiln train`.
    #[arg(long)]
    run: PathBuf,
    /// Output directory: config.json, model.safetensors and the tokenizer files.
    #[arg(long)]
    out: PathBuf,
}

pub fn merge(args: MergeArgs, device: &Device) -> Result<()> {
    let run: RunConfig = read_json(&args.run.join("run.json"))?;
    let (model, _) = load_run_model(&args.run, &run, device)?;
    let written = save_merged(&model, &run.model, &args.out)?;
    println!(
        "{} checkpoint ({} tensors, {} LoRA deltas merged) written to {}",
        written.architecture,
        written.tensors,
        written.merged_deltas,
        args.out.display()
    );
    Ok(())
}
