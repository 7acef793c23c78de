//! Causal language modelling for GPT-2: documents become fixed-length blocks of token ids (each
//! document ends with the end-of-text token, as GPT-2 was trained), the loss is next-token
//! cross-entropy, and evaluation reports it with its perplexity. The trained model is written
//! as a HF GPT-2 directory (config.json, model.safetensors under HF's names, the tokenizer
//! files) that kiln and transformers load.

use std::path::{Path, PathBuf};

use burn::module::Module;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};

use kiln_data::{OnBadRow, ReadOptions, read_corpus};
use kiln_models::config::ModelKind;
use kiln_models::gpt2::GPT2_KEYS;
use kiln_models::{DeviceChoice, Gpt2, Gpt2Config, Gpt2Input, TextTokenizer};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{save_params_hf, write_atomically};
use crate::error::{Context, Result, TrainError};
use crate::metrics::Metrics;
use crate::task_model::TaskModel;
use crate::trainer::{TaskData, TrainConfig, Trainer, write_json};

/// Concatenates the documents (each followed by `eos`) and cuts them into blocks of `block`
/// tokens; the ragged end is dropped.
pub fn token_blocks(documents: &[Vec<u32>], eos: u32, block: usize) -> Vec<Vec<u32>> {
    let stream: Vec<u32> = documents
        .iter()
        .flat_map(|d| d.iter().copied().chain(std::iter::once(eos)))
        .collect();
    stream
        .chunks_exact(block.max(2))
        .map(<[u32]>::to_vec)
        .collect()
}

/// Next-token logits `[blocks * (block - 1), vocab]` and the ids they predict.
fn next_token_logits(
    model: &Gpt2,
    blocks: &[&Vec<u32>],
    device: &Device,
) -> Result<(Tensor<2>, Tensor<1, Int>)> {
    let (batch, len) = (blocks.len(), blocks.first().map_or(0, |b| b.len()));
    if len < 2 || blocks.iter().any(|b| b.len() != len) {
        return Err(TrainError::Invalid(
            "language-model blocks must share one length of at least 2".into(),
        ));
    }
    let ids: Vec<i64> = blocks
        .iter()
        .flat_map(|b| b.iter().map(|&t| i64::from(t)))
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, len]), device);
    let hidden = model.forward(Gpt2Input {
        input_ids: ids.clone(),
        attention_mask: ids.ones_like(),
    });
    let logits = model.lm_logits(hidden.narrow(1, 0, len - 1));
    let vocab = logits.dims()[2];
    let targets = ids.narrow(1, 1, len - 1).reshape([batch * (len - 1)]);
    Ok((logits.reshape([batch * (len - 1), vocab]), targets))
}

fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>, device: &Device) -> Tensor<1> {
    CrossEntropyLossConfig::new()
        .init(device)
        .forward(logits, targets)
}

impl TaskModel for Gpt2 {
    type Task = ();
    type Example = Vec<u32>;

    fn batch_loss(
        &self,
        _task: &(),
        blocks: &[&Vec<u32>],
        device: &Device,
    ) -> Result<(Tensor<1>, usize)> {
        let (logits, targets) = next_token_logits(self, blocks, device)?;
        let tokens = targets.dims()[0];
        Ok((cross_entropy(logits, targets, device), tokens))
    }

    fn evaluate(
        &self,
        _task: &(),
        blocks: &[&Vec<u32>],
        device: &Device,
        batch_size: usize,
    ) -> Result<Metrics> {
        let (mut loss_sum, mut count) = (0.0, 0usize);
        for chunk in blocks.chunks(batch_size.max(1)) {
            let (logits, targets) = next_token_logits(self, chunk, device)?;
            let n = targets.dims()[0];
            let loss = cross_entropy(logits, targets, device);
            loss_sum += f64::from(loss.into_scalar::<f32>()) * n as f64;
            count += n;
        }
        Ok(Metrics::language_model(loss_sum / count.max(1) as f64))
    }
}

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
    let options = ReadOptions {
        on_bad_row: if args.skip_bad_rows {
            OnBadRow::Skip
        } else {
            OnBadRow::Fail
        },
        encoding: None,
    };
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
    let corpus = read_corpus(&args.corpus, options)?;
    if corpus.documents.len() < 2 {
        return Err(TrainError::Invalid(format!(
            "{}: {} document(s); pretraining holds documents out for perplexity, so it needs \
             at least 2",
            args.corpus.display(),
            corpus.documents.len()
        )));
    }
    for skipped in &corpus.skipped {
        eprintln!("skipped {}: {}", skipped.location, skipped.reason);
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
    if args.heads == 0 || !args.width.is_multiple_of(args.heads) {
        return Err(TrainError::Invalid(format!(
            "--width {} must be a multiple of --heads {}",
            args.width, args.heads
        )));
    }
    let eos = u32::try_from(config.eos_token_id)
        .ok()
        .filter(|&eos| (eos as usize) < config.vocab_size)
        .ok_or_else(|| {
            TrainError::Invalid(format!(
                "the tokenizer has {} tokens, no end-of-text id {}",
                config.vocab_size, config.eos_token_id
            ))
        })?;
    let (train_docs, held_docs) = corpus.split(args.held_out, args.seed);
    let encode = |docs: &[&str]| -> Result<Vec<Vec<u32>>> {
        docs.iter()
            .map(|d| tokenizer.encode_words(d).map_err(Into::into))
            .collect()
    };
    let train = token_blocks(&encode(&train_docs)?, eos, args.block_size);
    let held_out = token_blocks(&encode(&held_docs)?, eos, args.block_size);
    if train.is_empty() || held_out.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: too little text for one block of {} tokens on each side of the split",
            args.corpus.display(),
            args.block_size
        )));
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
