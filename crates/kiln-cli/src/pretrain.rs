//! `kiln pretrain`: causal-LM training of a GPT-2 configuration from scratch on plain text with
//! the real GPT-2 tokenizer, written out as a HF GPT-2 directory that `kiln train`, `kiln fpt`
//! and transformers load. No GPT-2 weights can be downloaded here; this makes a
//! language-pretrained one.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use clap::Args;
use serde::{Deserialize, Serialize};

use kiln_data::{OnBadRow, ReadOptions, read_corpus};
use kiln_models::config::ModelKind;
use kiln_models::{DeviceChoice, Gpt2Config, TextTokenizer};
use kiln_train::pretrain::{save_hf_gpt2, token_blocks};
use kiln_train::trainer::write_json;
use kiln_train::{Metrics, TaskData, TaskModel, TrainConfig, Trainer};

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct PretrainArgs {
    /// Plain text: a directory of `.txt` documents (searched recursively) or a file of lines.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Directory with the GPT-2 tokenizer (`vocab.json`/`encoder.json`, `merges.txt`/`vocab.bpe`).
    #[arg(long)]
    pub tokenizer: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 256)]
    pub width: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Tokens per training block; also the model's position table.
    #[arg(long, default_value_t = 128)]
    pub block_size: usize,
    /// Share of the documents held out for perplexity.
    #[arg(long, default_value_t = 0.1)]
    pub held_out: f64,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Skip documents that cannot be read instead of stopping.
    #[arg(long)]
    pub skip_bad_rows: bool,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    #[serde(skip)]
    pub resume: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct PretrainSummary {
    train_blocks: usize,
    held_out_blocks: usize,
    parameters: usize,
    held_out_loss_before: f64,
    held_out_perplexity_before: f64,
    held_out_loss: f64,
    held_out_perplexity: f64,
    seconds_per_epoch: f64,
    device: String,
}

/// Where the HF directory goes inside the run directory.
pub const MODEL_DIR: &str = "model";

pub fn pretrain(args: PretrainArgs, choice: DeviceChoice, device: &Device) -> Result<()> {
    let options = ReadOptions {
        on_bad_row: if args.skip_bad_rows {
            OnBadRow::Skip
        } else {
            OnBadRow::Fail
        },
        encoding: None,
    };
    let corpus = read_corpus(&args.corpus, options)?;
    for skipped in &corpus.skipped {
        eprintln!("skipped {}: {}", skipped.location, skipped.reason);
    }
    let tokenizer = TextTokenizer::from_dir(&args.tokenizer, ModelKind::Gpt2)
        .with_context(|| format!("--tokenizer {}", args.tokenizer.display()))?;
    let eos = tokenizer.token_id("<|endoftext|>").with_context(|| {
        format!(
            "--tokenizer {}: no <|endoftext|> token",
            args.tokenizer.display()
        )
    })?;
    let config = Gpt2Config::new(
        tokenizer.vocab_size(),
        args.block_size,
        args.width,
        args.layers,
        args.heads,
        eos as usize,
    );
    if args.heads == 0 || !args.width.is_multiple_of(args.heads) {
        bail!(
            "--width {} must be a multiple of --heads {}",
            args.width,
            args.heads
        );
    }
    let eos = u32::try_from(config.eos_token_id)?;
    if eos as usize >= config.vocab_size {
        bail!(
            "the tokenizer has {} tokens, no end-of-text id {eos}",
            config.vocab_size
        );
    }
    let (train_docs, held_docs) = corpus.split(args.held_out, args.seed);
    let encode = |docs: &[&str]| -> Result<Vec<Vec<u32>>> {
        docs.iter()
            .map(|d| tokenizer.encode_words(d).map_err(Into::into))
            .collect()
    };
    let train = token_blocks(&encode(&train_docs)?, eos, args.block_size);
    let held_out = token_blocks(&encode(&held_docs)?, eos, args.block_size);
    if train.is_empty() || held_out.is_empty() {
        bail!(
            "{}: too little text for one block of {} tokens on each side of the split",
            args.corpus.display(),
            args.block_size
        );
    }
    println!(
        "corpus: {} documents ({} held out) -> {} training and {} held-out blocks of {} tokens",
        corpus.documents.len(),
        held_docs.len(),
        train.len(),
        held_out.len(),
        args.block_size
    );

    let train_device = device.clone().autodiff();
    train_device.seed(args.seed);
    let model = config.init(&train_device);
    let parameters = model.num_params();
    let held: Vec<&Vec<u32>> = held_out.iter().collect();
    let before = model
        .valid()
        .evaluate(&(), &held, device, args.batch_size)?;
    println!(
        "GPT-2 {} layers x {} wide: {parameters} parameters; held-out perplexity before training {:.1}",
        args.layers,
        args.width,
        before.perplexity()
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    write_json(&args.out.join("run.json"), &args)?;
    let train_config = TrainConfig {
        epochs: args.epochs,
        lr: args.lr,
        batch_size: args.batch_size,
        eval_batch_size: args.batch_size,
        warmup_ratio: 0.05,
        seed: args.seed,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(
        train_config,
        train_device,
        args.out.clone(),
        vec!["*".into()],
    );
    let data = TaskData {
        task: &(),
        train: train.iter().collect(),
        validation: held.clone(),
    };
    let (model, summary) = trainer.fit(model, &data, args.resume)?;
    let after: Metrics = model
        .valid()
        .evaluate(&(), &held, device, args.batch_size)?;
    let dir = args.out.join(MODEL_DIR);
    save_hf_gpt2(&model, &config, &args.tokenizer, &dir)?;
    write_json(
        &args.out.join("summary.json"),
        &PretrainSummary {
            train_blocks: train.len(),
            held_out_blocks: held_out.len(),
            parameters,
            held_out_loss_before: before.loss,
            held_out_perplexity_before: before.perplexity(),
            held_out_loss: after.loss,
            held_out_perplexity: after.perplexity(),
            seconds_per_epoch: summary.seconds_per_epoch(),
            device: choice.to_string(),
        },
    )?;
    println!(
        "held-out perplexity {:.1} -> {:.1}; HF GPT-2 directory written to {}",
        before.perplexity(),
        after.perplexity(),
        dir.display()
    );
    Ok(())
}
