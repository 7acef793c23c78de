//! `kiln export` and `kiln merge`: a trained run in the formats the Python ecosystem reads.
//! `export` writes a LoRA, prompt-tuning or (GPT-2) prefix-tuning / P-tuning v2 run as a HF peft
//! adapter directory (`PeftModel.from_pretrained`; `kiln train --peft-adapter` reads one back);
//! `merge` folds a run's LoRA deltas into the base weights and writes a HF checkpoint that
//! transformers loads on its own (see `kiln_train::peft` and `kiln_train::merge`).

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

use kiln_train::run::{export_run, merge_run};

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
    let (run, written) = export_run(&args.run, &args.out, args.base_model.as_deref(), device)?;
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
    let written = merge_run(&args.run, &args.out, device)?;
    println!(
        "{} checkpoint ({} tensors, {} LoRA deltas merged) written to {}",
        written.architecture,
        written.tensors,
        written.merged_deltas,
        args.out.display()
    );
    Ok(())
}
