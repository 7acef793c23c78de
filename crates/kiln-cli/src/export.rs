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
        "{} checkpoint ({} tensors, {} weight-side deltas merged) written to {}",
        written.architecture,
        written.tensors,
        written.merged_deltas,
        args.out.display()
    );
    say_head(exported.head_apart, &args.out);
    Ok(())
}

/// `kiln combine`: peft LoRA adapters combined into one, as peft's `add_weighted_adapter`.
#[derive(Args)]
pub struct CombineArgs {
    /// A peft LoRA adapter directory and its weight, `DIR` (weight 1) or `DIR:WEIGHT`; repeat.
    #[arg(long = "adapter", required = true, value_parser = parse_weighted)]
    adapters: Vec<(PathBuf, f64)>,
    /// How: linear, cat, svd, ties, dare_linear, dare_ties or magnitude_prune (peft's
    /// combination_type).
    #[arg(long, default_value = "svd")]
    combination: kiln_train::lora_arithmetic::Combination,
    /// The share of entries ties, dare_* and magnitude_prune keep, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    density: f64,
    /// svd's rank [default: the largest input rank].
    #[arg(long)]
    svd_rank: Option<usize>,
    /// TIES' sign election: total (the sign of the sum) or frequency (the commoner sign).
    #[arg(long, default_value = "total", value_parser = ["total", "frequency"])]
    majority_sign: String,
    /// Seed of DARE's random drops.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (a peft LoRA adapter).
    #[arg(long)]
    out: PathBuf,
    /// Write into a non-empty --out (files of the same names are replaced).
    #[arg(long)]
    force: bool,
}

/// `DIR` or `DIR:WEIGHT` (the last colon splits, so that paths may hold colons).
fn parse_weighted(text: &str) -> Result<(PathBuf, f64), String> {
    match text.rsplit_once(':') {
        Some((dir, weight)) if weight.parse::<f64>().is_ok() => {
            Ok((PathBuf::from(dir), weight.parse().expect("checked")))
        }
        _ => Ok((PathBuf::from(text), 1.0)),
    }
}

pub fn combine(args: CombineArgs) -> Result<()> {
    use kiln_train::lora_arithmetic::{CombineSettings, MajoritySign, combine_lora_adapters};
    kiln_train::ensure_fresh_output(&args.out, args.force)?;
    let settings = CombineSettings {
        adapters: args.adapters,
        combination: args.combination,
        density: args.density,
        svd_rank: args.svd_rank,
        majority_sign: if args.majority_sign == "frequency" {
            MajoritySign::Frequency
        } else {
            MajoritySign::Total
        },
        seed: args.seed,
    };
    let combined = combine_lora_adapters(&settings, &args.out)?;
    println!(
        "combined LoRA (rank {}, {} modules) written to {}",
        combined.rank,
        combined.modules,
        args.out.display()
    );
    Ok(())
}
