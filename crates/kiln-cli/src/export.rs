//! `kiln export` and `kiln merge`: a trained run in the formats the Python ecosystem reads.
//! `export` writes a LoRA, prompt-tuning or (GPT-2) prefix-tuning / P-tuning v2 run as a HF peft
//! adapter directory (`PeftModel.from_pretrained`; `kiln train --peft-adapter` reads one back),
//! or with `--format adapterhub` a bottleneck-adapter, MAM or fusion run (BERT) as AdapterHub's
//! (`model.load_adapter(dir, use_safetensors=True)`; `--peft-adapter` reads those back too);
//! `merge` folds a run's LoRA deltas into the base weights and writes a HF checkpoint that
//! transformers loads on its own (see `kiln_train::peft` and `kiln_train::merge`).

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

use kiln_train::head_files::{HEAD_WEIGHTS_FILE, README_FILE};
use kiln_train::run::{AdapterHubWritten, export_run, export_run_adapterhub, merge_run};

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
    /// The format: HF peft's adapter directory, or AdapterHub's (the `adapters` library).
    #[arg(long, value_enum, default_value_t = ExportFormat::Peft)]
    format: ExportFormat,
    #[command(flatten)]
    output: OutputArgs,
}

/// The formats `kiln export` writes.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// HF peft (`PeftModel.from_pretrained`).
    Peft,
    /// AdapterHub (`model.load_adapter(dir, use_safetensors=True)`).
    Adapterhub,
}

/// What export and merge share: whether they may replace what is there.
#[derive(Args)]
pub struct OutputArgs {
    /// Go on when the base model's files changed since the run trained.
    #[arg(long)]
    allow_changed_inputs: bool,
    /// Write into a non-empty --out (files of the same names are replaced).
    #[arg(long)]
    force: bool,
}

pub fn export(args: ExportArgs, device: &Device) -> Result<()> {
    kiln_train::ensure_fresh_output(&args.out, args.output.force)?;
    if args.format == ExportFormat::Adapterhub {
        let (config, written) = export_run_adapterhub(
            &args.run,
            &args.out,
            args.base_model.as_deref(),
            device,
            args.output.allow_changed_inputs,
        )?;
        match written {
            AdapterHubWritten::Adapter(adapter) => println!(
                "AdapterHub {} adapter `{}` ({} tensors{}) written to {}; load it with \
                 model.load_adapter(\"{}\", use_safetensors=True)",
                config.method.name(),
                adapter.name,
                adapter.tensors,
                if adapter.with_head {
                    ", head included"
                } else {
                    "; kiln's head reads a pooling AdapterHub has not, so it is not written"
                },
                args.out.display(),
                args.out.display()
            ),
            AdapterHubWritten::Fusion(dirs) => {
                println!("AdapterHub fusion written:");
                for dir in dirs {
                    println!("  {}", dir.display());
                }
            }
        }
        return Ok(());
    }
    let exported = export_run(
        &args.run,
        &args.out,
        args.base_model.as_deref(),
        device,
        args.output.allow_changed_inputs,
    )?;
    let written = &exported.written;
    println!(
        "peft {} adapter ({}, {} tensors{}) written to {}",
        exported.config.method.name(),
        written.task_type,
        written.tensors,
        if written.with_classifier {
            ", classifier included"
        } else {
            ""
        },
        args.out.display()
    );
    say_head(exported.head_apart, &args.out);
    Ok(())
}

/// Says plainly when the head is not in the HF format.
fn say_head(apart: bool, out: &std::path::Path) {
    if apart {
        println!(
            "the task head is not part of the HF format for this readout and head: it is in \
             {} beside it; {} shows how to load it and reproduce kiln's logits",
            out.join(HEAD_WEIGHTS_FILE).display(),
            out.join(README_FILE).display()
        );
    }
}

#[derive(Args)]
pub struct MergeArgs {
    /// Run directory written by `kiln train`.
    #[arg(long)]
    run: PathBuf,
    /// Output directory: config.json, model.safetensors and the tokenizer files.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
}

pub fn merge(args: MergeArgs, device: &Device) -> Result<()> {
    kiln_train::ensure_fresh_output(&args.out, args.output.force)?;
    let exported = merge_run(
        &args.run,
        &args.out,
        device,
        args.output.allow_changed_inputs,
    )?;
    let written = &exported.written;
    println!(
        "{} checkpoint ({} tensors, {} LoRA deltas merged) written to {}",
        written.architecture,
        written.tensors,
        written.merged_deltas,
        args.out.display()
    );
    say_head(exported.head_apart, &args.out);
    Ok(())
}
