//! `kiln`: fine-tune pretrained transformers with the whole family of transfer methods.

mod compare;
mod encode;
mod export;
mod fpt;
mod generate;
mod icl;
mod method_flags;
mod plan;
mod predict;
mod pretrain;
mod runs;
mod study;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};
use kiln_models::DeviceChoice;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Fine-tune pretrained transformers on Burn"
)]
struct Cli {
    /// Backend to run on: `cpu` (Burn's flex backend with kiln's kernels), `ndarray`, or `wgpu`
    /// (needs the `wgpu` cargo feature).
    #[arg(long, global = true, default_value = "cpu", value_parser = parse_device)]
    device: DeviceChoice,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run texts through a model and print embeddings, token states or next-token predictions.
    Encode(encode::EncodeArgs),
    /// Continue a prompt with a GPT-2: greedy or sampled, with a key/value cache.
    Generate(Box<generate::GenerateArgs>),
    /// Fine-tune a model on a task with one transfer method.
    Train(Box<train::TrainArgs>),
    /// Reload a run's best checkpoint and evaluate it on its split or on a file.
    Eval(train::EvalArgs),
    /// Label new texts with a trained run: class and probabilities, or a score.
    Predict(Box<predict::PredictArgs>),
    /// List every registered method with its options.
    Methods,
    /// In-context learning with a GPT-2: k labelled demonstrations, no training.
    Icl(Box<icl::IclArgs>),
    /// Write a LoRA or prompt-tuning run as a HF peft adapter directory.
    Export(export::ExportArgs),
    /// Fold a run's LoRA deltas into the base weights and write a HF checkpoint.
    Merge(export::MergeArgs),
    /// Combine peft LoRA adapters into one (peft's add_weighted_adapter: linear, cat, svd, ties,
    /// dare).
    Combine(export::CombineArgs),
    /// Several methods on one model and task: table, plot and HTML report.
    Compare(Box<compare::CompareArgs>),
    /// Predict a training step's memory and FLOPs before training.
    Plan(Box<plan::PlanArgs>),
    /// Full fine-tuning vs Child-Tuning F and D on small training subsets, several seeds.
    Study(Box<study::StudyArgs>),
    /// Frozen Pretrained Transformer on a non-language task (bits, ListOps, images).
    Fpt(Box<fpt::FptSettings>),
    /// Causal-LM pretraining of a GPT-2 configuration on plain text; writes a HF directory.
    Pretrain(Box<pretrain::PretrainSettings>),
    /// One run of a comparison or study, in a process of its own (started by them).
    #[command(hide = true)]
    RunRequest(runs::RunRequestArgs),
}

fn parse_device(value: &str) -> Result<DeviceChoice, String> {
    value
        .parse()
        .map_err(|e: kiln_models::ModelError| e.to_string())
}

fn main() -> Result<()> {
    kiln_train::memory::tune_allocator();
    let cli = Cli::parse();
    let device = cli.device.device()?;
    match cli.command {
        Command::Encode(args) => encode::run(args, cli.device),
        Command::Generate(args) => generate::run(*args, &device),
        Command::Train(args) => train::train(*args, cli.device),
        Command::Eval(args) => train::eval(args, &device),
        Command::Predict(args) => predict::predict(*args, &device),
        Command::Study(args) => study::study(*args, cli.device),
        Command::Compare(args) => compare::compare(*args, cli.device),
        Command::Plan(args) => plan::run(*args, &device),
        Command::Export(args) => export::export(args, &device),
        Command::Icl(args) => icl::icl(*args, cli.device),
        Command::Merge(args) => export::merge(args, &device),
        Command::Combine(args) => export::combine(args),
        Command::Fpt(args) => fpt::fpt(*args, cli.device),
        Command::Pretrain(args) => pretrain::pretrain(*args, cli.device),
        Command::RunRequest(args) => runs::run(args, cli.device),
        Command::Methods => {
            method_flags::print_methods();
            Ok(())
        }
    }
}
