//! `kiln pretrain`: a GPT-2 configuration trained from random initialisation as a causal
//! language model ([`crate::causal_lm`]'s objective, blocks and loss) on plain text. The
//! trained model is written as a HF GPT-2 directory (config.json, model.safetensors under HF's
//! names, the tokenizer files) that kiln and transformers load.

use std::path::{Path, PathBuf};

use burn::module::Module;

use kiln_data::TaskSpec;
use kiln_models::config::ModelKind;
use kiln_models::gpt2::GPT2_KEYS;
use kiln_models::{DeviceChoice, Gpt2, Gpt2Config, TextTokenizer};
use serde::{Deserialize, Serialize};

use crate::causal_lm::{LanguageModelData, LanguageModeling};
use crate::checkpoint::{save_params_hf, write_atomically};
use crate::error::{Context, Result, TrainError};
use crate::metrics::Metrics;
use crate::task_model::TaskModel;
use crate::trainer::{TaskData, TrainConfig, Trainer, write_json};

/// Writes `model` as a HF GPT-2 directory: `config.json` (with `model_type`, the tied LM head
/// and the end-of-text id), `model.safetensors` under HF's names, and the tokenizer's
/// `vocab.json` and `merges.txt` copied from `tokenizer_dir` (which may name them
/// `encoder.json` and `vocab.bpe`, as the npm package does).
pub fn save_hf_gpt2(
    model: &Gpt2,
    config: &Gpt2Config,
    tokenizer_dir: &Path,
    out: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let mut json = serde_json::to_value(config).map_err(|e| TrainError::Invalid(e.to_string()))?;
    if let Some(fields) = json.as_object_mut() {
        fields.insert("model_type".into(), "gpt2".into());
        fields.insert(
            "architectures".into(),
            serde_json::json!(["GPT2LMHeadModel"]),
        );
        fields.insert("bos_token_id".into(), config.eos_token_id.into());
        fields.insert("tie_word_embeddings".into(), true.into());
    }
    let text =
        serde_json::to_string_pretty(&json).map_err(|e| TrainError::Invalid(e.to_string()))?;
    write_atomically(&out.join("config.json"), text.as_bytes())?;
    save_params_hf(model, &out.join("model.safetensors"), GPT2_KEYS, "")?;
    for (names, target) in [
        (["vocab.json", "encoder.json"], "vocab.json"),
        (["merges.txt", "vocab.bpe"], "merges.txt"),
    ] {
        let Some(source) = names
            .iter()
            .map(|n| tokenizer_dir.join(n))
            .find(|p| p.is_file())
        else {
            return Err(TrainError::Invalid(format!(
                "{}: no {} to copy into the checkpoint",
                tokenizer_dir.display(),
                names.join(" or ")
            )));
        };
        let bytes = std::fs::read(&source).map_err(|e| TrainError::io(&source, e))?;
        write_atomically(&out.join(target), &bytes)?;
    }
    Ok(())
}

/// A `kiln pretrain` run: corpus, tokenizer, the GPT-2 shape, the trainer's settings, where
/// it goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct PretrainSettings {
    /// Plain text: a directory of `.txt` documents (searched recursively) or a file of lines.
    #[cfg_attr(feature = "clap", arg(long))]
    pub corpus: PathBuf,
    /// Directory with the GPT-2 tokenizer (`vocab.json`/`encoder.json`, `merges.txt`/`vocab.bpe`).
    #[cfg_attr(feature = "clap", arg(long))]
    pub tokenizer: PathBuf,
    /// Transformer blocks.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 4))]
    pub layers: usize,
    /// Width of the token states.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 256))]
    pub width: usize,
    /// Attention heads per block (a divisor of the width).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 4))]
    pub heads: usize,
    /// Tokens per training block; also the model's position table.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 128))]
    pub block_size: usize,
    /// Share of the documents held out for perplexity.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0.1))]
    pub held_out: f64,
    /// Passes over the training blocks.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1))]
    pub epochs: usize,
    /// Peak learning rate.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1e-3))]
    pub lr: f64,
    /// Blocks per batch.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 16))]
    pub batch_size: usize,
    /// Seeds the held-out split, the initialisation, the data order and dropout.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 42))]
    pub seed: u64,
    /// Skip documents that cannot be read instead of stopping.
    #[cfg_attr(feature = "clap", arg(long))]
    pub skip_bad_rows: bool,
    /// Run directory; the HF GPT-2 directory goes to `OUT/model`.
    #[cfg_attr(feature = "clap", arg(long))]
    pub out: PathBuf,
    /// Continue after the last complete epoch in `--out`.
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip)]
    pub resume: bool,
    /// Start a new run in a non-empty `--out`.
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip)]
    pub force: bool,
}

/// `summary.json` of a pretraining run.
#[derive(Debug, Serialize, Deserialize)]
pub struct PretrainSummary {
    /// Training blocks.
    pub train_blocks: usize,
    /// Held-out blocks.
    pub held_out_blocks: usize,
    /// Parameters of the model.
    pub parameters: usize,
    /// Held-out loss before training.
    pub held_out_loss_before: f64,
    /// Held-out perplexity before training.
    pub held_out_perplexity_before: f64,
    /// Held-out loss after training.
    pub held_out_loss: f64,
    /// Held-out perplexity after training.
    pub held_out_perplexity: f64,
    /// Mean wall time of an epoch (training and validation).
    pub seconds_per_epoch: f64,
    /// The backend it ran on.
    pub device: String,
}

/// Where the HF directory goes inside the run directory.
pub const MODEL_DIR: &str = "model";

/// Pretrains the GPT-2 of `args` on its corpus on `choice`'s device and writes the HF GPT-2
/// directory `args.out/model` with `summary.json` beside it.
pub fn pretrain(args: &PretrainSettings, choice: DeviceChoice) -> Result<PretrainSummary> {
    let device = &choice.device()?;
    if !args.resume {
        crate::ensure_fresh_output(&args.out, args.force)?;
    }
    let _writer = crate::run::lock_run_dir(&args.out)?;
    for (flag, value) in [
        ("--layers", args.layers),
        ("--width", args.width),
        ("--heads", args.heads),
        ("--epochs", args.epochs),
        ("--batch-size", args.batch_size),
    ] {
        if value == 0 {
            return Err(TrainError::Invalid(format!("{flag} must be at least 1")));
        }
    }
    if args.block_size < 2 {
        return Err(TrainError::Invalid(format!(
            "--block-size {}: a block needs at least 2 tokens (one to predict from)",
            args.block_size
        )));
    }
    if !(args.held_out > 0.0 && args.held_out < 1.0) {
        return Err(TrainError::Invalid(format!(
            "--held-out {}: the held-out share must be in (0, 1)",
            args.held_out
        )));
    }
    if args.heads == 0 || !args.width.is_multiple_of(args.heads) {
        return Err(TrainError::Invalid(format!(
            "--width {} must be a multiple of --heads {}",
            args.width, args.heads
        )));
    }
    let tokenizer = TextTokenizer::from_dir(&args.tokenizer, ModelKind::Gpt2)
        .context(|| format!("--tokenizer {}", args.tokenizer.display()))?;
    let eos = tokenizer.token_id("<|endoftext|>").ok_or_else(|| {
        TrainError::Invalid(format!(
            "--tokenizer {}: no <|endoftext|> token",
            args.tokenizer.display()
        ))
    })?;
    let config = Gpt2Config::new(
        tokenizer.vocab_size(),
        args.block_size,
        args.width,
        args.layers,
        args.heads,
        eos as usize,
    );
    let corpus = TaskSpec {
        skip_bad_rows: args.skip_bad_rows,
        ..TaskSpec::new(&args.corpus)
    };
    let blocks = LanguageModelData::read(
        &corpus,
        &tokenizer,
        args.block_size,
        args.held_out,
        args.seed,
    )?;
    let (train, held_out) = (blocks.train, blocks.validation);
    println!(
        "corpus: {} documents ({} held out) -> {} training and {} held-out blocks of {} tokens",
        blocks.documents[0] + blocks.documents[1],
        blocks.documents[1],
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
        .evaluate(&LanguageModeling, &held, device, args.batch_size)?;
    println!(
        "GPT-2 {} layers x {} wide: {parameters} parameters; held-out perplexity before training {:.1}",
        args.layers,
        args.width,
        before.perplexity()
    );
    std::fs::create_dir_all(&args.out).map_err(|e| TrainError::io(&args.out, e))?;
    write_json(&args.out.join("run.json"), args)?;
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
        task: &LanguageModeling,
        train: train.iter().collect(),
        validation: held.clone(),
    };
    let (model, summary) = trainer.fit(model, &data, args.resume)?;
    let after: Metrics =
        model
            .valid()
            .evaluate(&LanguageModeling, &held, device, args.batch_size)?;
    let dir = args.out.join(MODEL_DIR);
    save_hf_gpt2(&model, &config, &args.tokenizer, &dir)?;
    let run_summary = PretrainSummary {
        train_blocks: train.len(),
        held_out_blocks: held_out.len(),
        parameters,
        held_out_loss_before: before.loss,
        held_out_perplexity_before: before.perplexity(),
        held_out_loss: after.loss,
        held_out_perplexity: after.perplexity(),
        seconds_per_epoch: summary.seconds_per_epoch(),
        device: choice.to_string(),
    };
    write_json(&args.out.join("summary.json"), &run_summary)?;
    println!(
        "held-out perplexity {:.1} -> {:.1}; HF GPT-2 directory written to {}",
        before.perplexity(),
        after.perplexity(),
        dir.display()
    );
    Ok(run_summary)
}
