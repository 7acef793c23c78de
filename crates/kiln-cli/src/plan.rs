//! `kiln plan`: predicts one training step's memory (weights, gradients, optimizer state,
//! activations) and FLOPs for a model, method and batch shape before anything trains (see
//! `kiln_train::plan`). Needs only the model directory's `config.json` and tokenizer.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::Device;
use clap::Args;

use kiln_models::{HeadConfig, Pretrained, Readout, SequenceClassifier};
use kiln_train::plan::{StepShape, plan};
use kiln_tuning::MethodConfig;

use crate::train::MethodArgs;

#[derive(Args)]
pub struct PlanArgs {
    /// HF model directory (BERT or GPT-2); its weights are not read.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    method: MethodArgs,
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
    let options = args.method.options()?;
    let method = MethodConfig::from_options(&args.method.method, &options)?;
    // The architecture at random initialisation has the same shapes as the weights would.
    let pretrained = Pretrained::random(&args.model, device)
        .with_context(|| format!("reading the model in {}", args.model.display()))?;
    let readout = match pretrained.backbone {
        kiln_models::Backbone::Gpt2(..) => Readout::Last,
        _ => Readout::Mean,
    };
    let head = HeadConfig {
        layers: method.method().head_layers(),
        outputs: args.outputs,
        dropout: 0.1,
    };
    let model = SequenceClassifier::new(pretrained.backbone, readout, head, device)?;
    let (model, report) = method.apply(model)?;
    let shape = StepShape {
        batch: args.batch_size,
        seq: args.max_len,
        virtual_tokens: method.method().virtual_tokens(),
    };
    let prediction = plan(&model, &report, shape)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&prediction)?);
    } else {
        println!(
            "{} on {}, method {}",
            model.backbone_name(),
            args.model.display(),
            method.label()
        );
        println!("{}", prediction.describe());
    }
    Ok(())
}
