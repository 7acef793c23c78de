//! `kiln plan`: predicts one training step's memory (weights, gradients, optimizer state,
//! activations) and FLOPs for a model, method and batch shape before anything trains (see
//! `kiln_train::plan`). Needs only the model directory's `config.json` and tokenizer.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

use kiln_train::run::plan_run;

use crate::method_flags::MethodFlags;

#[derive(Args)]
pub struct PlanArgs {
    /// HF model directory (BERT or GPT-2); its weights are not read.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    method: MethodFlags,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Tokens per example (the padded length).
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Task outputs (classes).
    #[arg(long, default_value_t = 2)]
    outputs: usize,
    /// Print the prediction as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PlanArgs, device: &Device) -> Result<()> {
    let method = args.method.config()?;
    let planned = plan_run(
        &args.model,
        &method,
        args.batch_size,
        args.max_len,
        args.outputs,
        device,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&planned.plan)?);
    } else {
        println!(
            "{} on {}, method {}",
            planned.backbone,
            args.model.display(),
            planned.method
        );
        println!("{}", planned.plan.describe());
    }
    Ok(())
}
