//! Runs: what a Rust user (and every `kiln` command) calls to fine-tune, reload, evaluate.
//!
//! A run directory holds `run.json` ([`RunConfig`]: everything needed to rebuild the model and
//! the data split), the trainer's files (`metrics.jsonl`, `state.json`, checkpoints, `best/`),
//! `adapter/` for a method that trains an adapter, `fisher.safetensors` for Child-Tuning D, and
//! `summary.json` ([`RunSummary`]) with the test metrics once training ends.
//!
//! ```no_run
//! use kiln_data::TaskSpec;
//! use kiln_train::run::{RunSettings, train};
//! use kiln_tuning::MethodConfig;
//!
//! # fn main() -> kiln_train::Result<()> {
//! let method = MethodConfig::parse("lora", &[("rank", "8")])?;
//! let task = TaskSpec::new("data/reviews.csv");
//! let settings = RunSettings::new("models/all-MiniLM-L6-v2", task, method);
//! let run = train(&settings, "runs/lora".as_ref(), false)?;
//! println!("{:?}", run.summary.test);
//! for prediction in run.predict(&["a new text to label"])? {
//!     println!("{prediction:?}");
//! }
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use kiln_data::{LoadedTask, TaskKind, TaskSpec, TextExample};
use kiln_models::{
    DeviceChoice, FrozenCut, HeadConfig, PaddingSide, Pretrained, Readout, SequenceClassifier,
    TextInput, TextTokenizer,
};
use kiln_tuning::{MethodConfig, ParamReport};

use crate::adapterhub::{
    AdapterHubExport, export_adapterhub, export_adapterhub_fusion, import_adapterhub,
    is_adapterhub_dir,
};
use crate::adapters::{load_adapter, save_adapter};
use crate::checkpoint::load_params;
use crate::child_tuning::{
    ChildTuning, FisherSettings, PathTensors, encoder_layer_prefixes, estimate_fisher,
};
use crate::error::{Context, Result, TrainError};
use crate::fingerprint::{self, Fingerprints};
use crate::head_files::{HeadFile, Written, write_beside};
use crate::merge::{HeadLabels, MergedCheckpoint, save_merged};
use crate::metrics::{Metrics, tune_threshold};
use crate::peft::{PeftExport, export_peft, import_peft};
use crate::plan::{Plan, StepShape, plan};
use crate::predict::{Prediction, Predictor};
use crate::text_task::{TextTask, evaluate_at, label_probabilities};
use crate::trainer::{
    BEST_DIR, EpochRecord, TRAINED_FILE, TaskData, TrainConfig, Trainer, read_json, write_json,
};

/// `run.json` in a run directory.
pub const RUN_FILE: &str = "run.json";
/// `summary.json` in a run directory.
pub const SUMMARY_FILE: &str = "summary.json";
/// Where a run saves an adapter method's adapter on its own (see [`crate::adapters`]).
pub const ADAPTER_DIR: &str = "adapter";
/// Where Child-Tuning D's Fisher estimate is saved in a run directory.
pub const FISHER_FILE: &str = "fisher.safetensors";
/// The most memory the frozen-feature cache may take (its rows are kept on the host).
const FEATURE_CACHE_LIMIT: usize = 4 << 30;

/// What a run learns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// A class, a set of labels or a score per text (classification, multi-label, regression),
    /// through the task head: [`train`].
    #[default]
    Sequence,
    /// The next token of plain text, through a GPT-2's tied embedding:
    /// [`crate::causal_lm::train`].
    CausalLm,
}

impl std::str::FromStr for Objective {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sequence" => Ok(Self::Sequence),
            "causal-lm" => Ok(Self::CausalLm),
            other => Err(TrainError::Invalid(format!(
                "--objective {other}: expected sequence (classification, multi-label, \
                 regression) or causal-lm (next-token language modelling on GPT-2)"
            ))),
        }
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sequence => "sequence",
            Self::CausalLm => "causal-lm",
        })
    }
}

/// Everything needed to rebuild a run's model and data: `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The HF model directory.
    pub model: PathBuf,
    /// Where the task's data is and how to read it.
    pub task: TaskSpec,
    /// The method with its settings.
    pub method: MethodConfig,
    /// The trainer's settings.
    pub train: TrainConfig,
    /// How texts became one vector.
    pub readout: Readout,
    /// The task head's shape.
    pub head: HeadConfig,
    /// Tokens per text, special tokens included.
    pub max_len: usize,
    /// The `max_len` asked for, when it was more than the model's positions allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len_requested: Option<usize>,
    /// Checkpoints hold every parameter, not only the trained ones.
    pub save_full: bool,
    /// The backbone started from random initialisation (checkpoints are then full).
    #[serde(default)]
    pub random_init: bool,
    /// Train on a seeded random subset of this many training examples.
    #[serde(default)]
    pub train_examples: Option<usize>,
    /// The frozen bottom's outputs were computed once per example and cached.
    #[serde(default)]
    pub feature_cache: bool,
    /// The peft adapter the method's parameters started from.
    #[serde(default)]
    pub peft_adapter: Option<PathBuf>,
    /// The class names in the order of the head's outputs; `None` for regression (and in runs
    /// written before kiln recorded them, whose task is then read again).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// The labels are a multi-label task's (sigmoid outputs), not classes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub multi_label: bool,
    /// The multi-label decision threshold asked for (`None`: tuned on validation after
    /// training, recorded in `summary.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// What the run learns (runs written before kiln recorded it are `sequence` runs).
    #[serde(default, skip_serializing_if = "is_sequence")]
    pub objective: Objective,
    /// SHA-256 of the model's and the task's files when the run started (`None` in runs written
    /// before kiln recorded them).
    #[serde(default)]
    pub fingerprints: Option<Fingerprints>,
}

impl RunConfig {
    /// What the run's head predicts: its classes by name, or a number.
    pub fn task_kind(&self) -> Result<TaskKind> {
        if self.objective == Objective::CausalLm {
            return Err(TrainError::Invalid(
                "this run is a causal language model, which predicts no classes or scores: \
                 `kiln generate --run` continues text with it"
                    .into(),
            ));
        }
        match &self.labels {
            Some(labels) if self.multi_label => Ok(TaskKind::MultiLabel {
                labels: labels.clone(),
            }),
            Some(labels) => Ok(TaskKind::Classification {
                labels: labels.clone(),
            }),
            None if self.head.outputs == 1 => Ok(TaskKind::Regression),
            None => Ok(self
                .task
                .load(self.train.seed)
                .context(|| format!("reading task {}", self.task.path.display()))?
                .kind),
        }
    }
}

/// `summary.json`: how the run ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run's label (`lora-r8`).
    pub method: String,
    /// Parameters that trained.
    pub trainable_params: usize,
    /// All parameters.
    pub total_params: usize,
    /// Share of the parameters that trained, in percent.
    pub trainable_percent: f64,
    /// The epoch with the best validation metric.
    pub best_epoch: Option<usize>,
    /// That epoch's validation metrics.
    pub validation: Option<Metrics>,
    /// The test metrics of the best epoch's model, when the split has a test part.
    pub test: Option<Metrics>,
    /// Mean wall time of an epoch (training and validation).
    pub seconds_per_epoch: f64,
    /// Peak resident memory of the process.
    pub peak_rss_mib: Option<f64>,
    /// The backend it ran on.
    pub device: String,
    /// A multi-label run's decision threshold: the one asked for, or the one tuned on the
    /// validation split (the test metrics use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// A language model's validation metrics before training (loss and perplexity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_before: Option<Metrics>,
}

fn is_sequence(objective: &Objective) -> bool {
    *objective == Objective::Sequence
}

/// Where Child-Tuning D's Fisher information comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FisherSource {
    /// A Fisher estimate saved by an earlier run (`RUN/fisher.safetensors`); else the run's own
    /// from an earlier start, else a fresh estimate.
    pub saved: Option<PathBuf>,
    /// Training batches a fresh estimate reads; `None`: all.
    pub batches: Option<usize>,
}

/// What to train: the settings [`train`] turns into a [`RunConfig`] once the model is loaded
/// (the readout and the head depend on it). As JSON it is what `kiln compare` hands each run's
/// process (the device is the process's own choice).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// HF model directory (BERT, GPT-2 or M2-BERT).
    pub model: PathBuf,
    /// Where the task's data is and how to read it.
    pub task: TaskSpec,
    /// The method with its settings.
    pub method: MethodConfig,
    /// The trainer's settings; [`RunSettings::new`] sets the learning rate to the method's.
    pub train: TrainConfig,
    /// How texts become one vector; `None`: the backbone's default.
    pub readout: Option<Readout>,
    /// Tokens per text, special tokens included; longer texts are truncated.
    pub max_len: usize,
    /// Save the whole model in checkpoints, not only what the method trains.
    pub save_full: bool,
    /// Start from the architecture at random initialisation instead of the weights.
    pub random_init: bool,
    /// Train on a seeded random subset of this many training examples.
    pub train_examples: Option<usize>,
    /// Compute a frozen bottom once per example where the method allows it.
    pub feature_cache: bool,
    /// Start the method's parameters from a HF peft adapter directory.
    pub peft_adapter: Option<PathBuf>,
    /// Where Child-Tuning D's Fisher information comes from.
    pub fisher: FisherSource,
    /// A multi-label task's decision threshold; `None` tunes it on the validation split after
    /// training (evaluations during training use 0.5).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// What the run learns: `sequence` runs train with [`train`], `causal-lm` runs with
    /// [`crate::causal_lm::train`] (the task is then a plain-text corpus).
    #[serde(default)]
    pub objective: Objective,
    /// The backend to train on.
    #[serde(skip)]
    pub device: DeviceChoice,
    /// Show progress bars and what the run does.
    pub progress: bool,
}

impl RunSettings {
    /// `method` on the model in `model` and `task`, with kiln's defaults: 3 epochs, batch 16,
    /// 128 tokens, the method's learning rate, seed 42.
    pub fn new(model: impl Into<PathBuf>, task: TaskSpec, method: MethodConfig) -> Self {
        let train = TrainConfig {
            lr: method.method().default_lr(),
            ..TrainConfig::default()
        };
        Self {
            model: model.into(),
            task,
            method,
            train,
            readout: None,
            max_len: 128,
            save_full: false,
            random_init: false,
            train_examples: None,
            feature_cache: true,
            peft_adapter: None,
            fisher: FisherSource::default(),
            threshold: None,
            objective: Objective::Sequence,
            device: DeviceChoice::default(),
            progress: true,
        }
    }
}

/// A trained run: its settings and summary, and the model as it was at the best epoch, ready
/// for inference.
pub struct TrainedRun {
    /// What `run.json` records.
    pub config: RunConfig,
    /// What `summary.json` records.
    pub summary: RunSummary,
    /// The model as it was at the best epoch, without autodiff.
    pub model: SequenceClassifier,
    /// Its tokenizer, set to the run's length.
    pub tokenizer: TextTokenizer,
    /// What the model predicts: the task's classes, or a number.
    pub kind: TaskKind,
    /// The device the model is on.
    pub device: Device,
}

impl TrainedRun {
    /// The model's prediction for each text (a pair task's texts go in as `text` alone).
    pub fn predict(&self, texts: &[&str]) -> Result<Vec<Prediction>> {
        let inputs: Vec<TextInput> = texts.iter().map(|&t| t.into()).collect();
        self.predictor().predict(&inputs)
    }

    /// The model with what it needs for inference.
    pub fn predictor(&self) -> Predictor<'_> {
        Predictor {
            model: &self.model,
            tokenizer: &self.tokenizer,
            kind: &self.kind,
            device: &self.device,
            batch_size: self.config.train.eval_batch_size,
            threshold: self.summary.threshold.unwrap_or(0.5),
        }
    }
}

macro_rules! say {
    ($on:expr, $($arg:tt)*) => {
        if $on {
            println!($($arg)*);
        }
    };
}

/// Trains `settings` into run directory `out` and scores the best epoch on the test split.
/// `out` must not hold another run; with `resume`, a run there with the same settings continues
/// after its last complete epoch.
pub fn train(settings: &RunSettings, out: &Path, resume: bool) -> Result<TrainedRun> {
    if settings.objective != Objective::Sequence {
        return Err(TrainError::Invalid(format!(
            "--objective {}: crate::causal_lm::train trains it",
            settings.objective
        )));
    }
    let settings = &absolute(settings);
    let say = settings.progress;
    let device = &settings.device.device()?;
    settings.train.check()?;
    if settings.max_len < 2 {
        return Err(TrainError::Invalid(format!(
            "--max-len {}: a text needs at least 2 tokens (its special tokens)",
            settings.max_len
        )));
    }
    let seed = settings.train.seed;
    let mut task = settings
        .task
        .load(seed)
        .context(|| format!("reading task {}", settings.task.path.display()))?;
    if let Some(n) = settings.train_examples {
        let available = task.split.train.len();
        if n == 0 || n > available {
            return Err(TrainError::Invalid(format!(
                "--train-examples {n}: the split has {available} training examples"
            )));
        }
        task.split.subsample_train(n, seed);
    }
    if say {
        report_task(&task);
    }

    let train_device = device.clone().autodiff();
    train_device.seed(seed);
    let pretrained = load_pretrained(&settings.model, settings.random_init, &train_device)?;
    let fingerprints = Fingerprints::of(&pretrained.dir, &settings.task)?;
    let mut method = settings.method.clone();
    method.method_mut().tokenize(&pretrained.tokenizer)?;
    let head = HeadConfig {
        layers: method.method().head_layers(),
        outputs: task.num_outputs(),
        dropout: 0.1,
    };
    let max_len = fitted_max_len(settings.max_len, &method, pretrained.max_positions(), say)?;
    let mut run = RunConfig {
        model: settings.model.clone(),
        task: settings.task.clone(),
        readout: settings
            .readout
            .unwrap_or_else(|| pretrained.backbone.default_readout()),
        method,
        train: settings.train.clone(),
        head,
        max_len,
        max_len_requested: (max_len != settings.max_len).then_some(settings.max_len),
        save_full: settings.save_full || settings.random_init,
        random_init: settings.random_init,
        train_examples: settings.train_examples,
        feature_cache: false,
        peft_adapter: settings.peft_adapter.clone(),
        labels: match &task.kind {
            TaskKind::Classification { labels } | TaskKind::MultiLabel { labels } => {
                Some(labels.clone())
            }
            TaskKind::Regression => None,
        },
        multi_label: matches!(task.kind, TaskKind::MultiLabel { .. }),
        threshold: settings.threshold,
        objective: Objective::Sequence,
        fingerprints: Some(fingerprints),
    };
    let (model, tokenizer, report) = build(pretrained, &run, say, &train_device)?;
    // The check is for host memory: a GPU's is its own.
    let memory = (settings.device != DeviceChoice::Wgpu)
        .then(kiln_models::config::physical_memory_bytes)
        .flatten();
    refuse_steps_beyond(&model, &report, &run, task.split.train.len(), memory)?;
    let cut = run.method.method().frozen_cut(&model);
    if settings.feature_cache
        && let Some(cut) = cut
    {
        let examples = task.split.train.len() + task.split.validation.len();
        let positions = match cut {
            FrozenCut::Features => 1,
            FrozenCut::BeforeLayer(_) => run.max_len,
        };
        let bytes = examples * positions * model.hidden_size() * 4;
        run.feature_cache = bytes <= FEATURE_CACHE_LIMIT;
        say!(
            say && !run.feature_cache,
            "feature cache off: it would hold up to {:.1} GiB (limit {:.0} GiB)",
            bytes as f64 / f64::from(1 << 30),
            FEATURE_CACHE_LIMIT as f64 / f64::from(1 << 30)
        );
    }
    let _writer = lock_run_dir(out)?;
    prepare_run_dir(out, &run, resume)?;
    say!(
        say,
        "{}: {} of {} parameters train ({:.3}%)",
        run.method.label(),
        report.trainable(),
        report.total(),
        report.trainable_percent()
    );
    let trainable: Vec<String> = report
        .trainable_paths()
        .into_iter()
        .map(str::to_string)
        .collect();
    let child_mask = match run.train.child_tuning {
        Some(ChildTuning::D { reserve }) => {
            let fisher =
                child_network_fisher(settings, out, &model, &tokenizer, &task, &train_device)?;
            let mask = fisher.top_share_mask(reserve)?;
            say!(
                say,
                "Child-Tuning D: the child network keeps {:.0} of {} backbone entries",
                mask.values
                    .values()
                    .map(|m| f64::from(m.clone().sum().into_scalar::<f32>()))
                    .sum::<f64>(),
                mask.num_elements()
            );
            Some(mask)
        }
        _ => None,
    };
    let trainer = Trainer {
        config: run.train.clone(),
        device: train_device.clone(),
        run_dir: out.to_path_buf(),
        saved: if run.save_full {
            vec!["*".into()]
        } else {
            trainable.clone()
        },
        trainable,
        progress: say,
        epoch_limit: None,
        child_mask,
    };
    let mut text_task = TextTask::new(tokenizer.clone(), task.kind.clone());
    text_task.threshold = settings.threshold.unwrap_or(0.5);
    if run.feature_cache
        && let Some(cut) = cut
    {
        text_task = text_task.with_feature_cache(cut);
    }
    let data = TaskData {
        task: &text_task,
        train: task.part(&task.split.train),
        validation: task.part(&task.split.validation),
    };
    let (model, summary) = trainer.fit(model, &data, resume)?;
    let mut model = model;
    run.method.method().after_fit(&mut model)?;
    if let Some(name) = run
        .method
        .method()
        .adapter_name()
        .filter(|_| run.method.method().saves_adapter())
    {
        let dir = out.join(ADAPTER_DIR);
        save_adapter(&model, name, run.method.name(), &dir)?;
        say!(
            say,
            "adapter `{name}` saved on its own in {}",
            dir.display()
        );
    }

    let model = model.valid();
    // A multi-label run decides at the threshold asked for, or at the one with the best
    // validation micro-F1.
    let threshold = match (&task.kind, settings.threshold) {
        (TaskKind::MultiLabel { .. }, Some(fixed)) => Some(fixed),
        (TaskKind::MultiLabel { .. }, None) => {
            let validation = task.part(&task.split.validation);
            let scores = label_probabilities(
                &model,
                &tokenizer,
                &validation,
                device,
                run.train.eval_batch_size,
            )?;
            let tuned = tune_threshold(&scores.probabilities, &scores.actual);
            say!(
                say,
                "decision threshold {tuned:.2}, tuned on the validation split"
            );
            Some(tuned)
        }
        _ => None,
    };
    let test = if task.split.test.is_empty() {
        None
    } else {
        Some(evaluate_at(
            &model,
            &tokenizer,
            &task.part(&task.split.test),
            (&task.kind, threshold.unwrap_or(0.5)),
            device,
            run.train.eval_batch_size,
        )?)
    };
    let run_summary = RunSummary {
        method: run.method.label(),
        trainable_params: report.trainable(),
        total_params: report.total(),
        trainable_percent: report.trainable_percent(),
        best_epoch: summary.state.best_epoch,
        validation: summary.best_validation().cloned(),
        test: test.clone(),
        seconds_per_epoch: summary.seconds_per_epoch(),
        peak_rss_mib: summary.peak_rss_mib,
        device: settings.device.to_string(),
        threshold,
        validation_before: None,
    };
    write_json(&out.join(SUMMARY_FILE), &run_summary)?;
    if let Some(test) = &test {
        let (name, value) = test.primary();
        say!(
            say,
            "test {name}: {value:.4} ({} examples); trainable {:.3}%; {:.1} s/epoch; peak memory {}",
            task.split.test.len(),
            run_summary.trainable_percent,
            run_summary.seconds_per_epoch,
            run_summary
                .peak_rss_mib
                .map_or("unknown".into(), |m| format!("{m:.0} MiB"))
        );
    }
    say!(say, "run written to {}", out.display());
    Ok(TrainedRun {
        config: run,
        summary: run_summary,
        model,
        tokenizer,
        kind: task.kind.clone(),
        device: device.clone(),
    })
}

/// A new, empty run directory under `root` named `<label>-<UTC date>-<time>` (`lora-r8-
/// 20261201-181502`; `-2`, `-3`, ... when that exists), created here so that two runs started in
/// the same second do not share it.
pub fn fresh_run_dir(root: &Path, label: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| TrainError::io(root, e))?;
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let stamp = utc_stamp(seconds);
    for attempt in 1.. {
        let name = if attempt == 1 {
            format!("{label}-{stamp}")
        } else {
            format!("{label}-{stamp}-{attempt}")
        };
        let dir = root.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(TrainError::io(&dir, e)),
        }
    }
    unreachable!("the names to try are unbounded")
}

/// `YYYYMMDD-HHMMSS` of a Unix time, in UTC (Hinnant's days-to-civil algorithm).
fn utc_stamp(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// An error when `kiln plan`'s prediction of one training step needs more than `memory` bytes
/// (nothing is refused without a figure, or where the planner has no prediction): better said
/// before the first batch than as an allocation abort during it.
fn refuse_steps_beyond(
    model: &SequenceClassifier,
    report: &ParamReport,
    run: &RunConfig,
    train_examples: usize,
    memory: Option<u128>,
) -> Result<()> {
    let shape = StepShape {
        // No batch is larger than the training set.
        batch: run.train.batch_size.min(train_examples.max(1)),
        seq: run.max_len,
        virtual_tokens: run.method.method().virtual_tokens(),
    };
    let (Ok(planned), Some(memory)) = (plan(model, report, shape), memory) else {
        return Ok(());
    };
    if planned.peak_bytes <= memory as f64 {
        return Ok(());
    }
    let gib = |bytes: f64| bytes / f64::from(1 << 30);
    Err(TrainError::Invalid(format!(
        "a training step of batch {} x {} tokens would need about {:.2} GiB (kiln plan), more \
         than this machine's {:.2} GiB: lower --batch-size or --max-len",
        shape.batch,
        shape.seq,
        gib(planned.peak_bytes),
        gib(memory as f64)
    )))
}

/// `max_len`, or as many tokens as the model's `positions` leave beside the method's virtual
/// tokens when it asks for more (with a notice).
pub(crate) fn fitted_max_len(
    max_len: usize,
    method: &MethodConfig,
    positions: usize,
    say: bool,
) -> Result<usize> {
    let virtual_tokens = method.method().virtual_tokens();
    if max_len + virtual_tokens <= positions {
        return Ok(max_len);
    }
    let fitted = positions.saturating_sub(virtual_tokens);
    if fitted < 2 {
        return Err(TrainError::Invalid(format!(
            "the model's {positions} positions leave no room for text beside {virtual_tokens} \
             virtual tokens"
        )));
    }
    say!(
        say,
        "--max-len {max_len}{}: the model has {positions} positions; using {fitted}",
        if virtual_tokens > 0 {
            format!(" plus {virtual_tokens} virtual tokens")
        } else {
            String::new()
        }
    );
    Ok(fitted)
}

/// Child-Tuning D's Fisher information: the given estimate, the run's own from an earlier start,
/// or a fresh estimate saved in the run directory.
fn child_network_fisher(
    settings: &RunSettings,
    out: &Path,
    model: &SequenceClassifier,
    tokenizer: &TextTokenizer,
    task: &LoadedTask,
    device: &Device,
) -> Result<PathTensors> {
    let own = out.join(FISHER_FILE);
    let saved = settings
        .fisher
        .saved
        .clone()
        .or_else(|| own.is_file().then(|| own.clone()));
    if let Some(path) = saved {
        say!(
            settings.progress,
            "Child-Tuning D: Fisher information from {}",
            path.display()
        );
        return PathTensors::load(&path, &device.clone().inner())
            .context(|| format!("--fisher {}", path.display()));
    }
    let text_task = TextTask::new(tokenizer.clone(), task.kind.clone());
    let fisher = estimate_fisher(
        model,
        &text_task,
        &task.part(&task.split.train),
        device,
        &FisherSettings {
            ranked: encoder_layer_prefixes(model),
            clip_each: settings.train.max_grad_norm,
            batch_size: settings.train.batch_size,
            batches: settings.fisher.batches,
            progress: settings.progress,
        },
    )?;
    fisher.save(&own)?;
    say!(
        settings.progress,
        "Child-Tuning D: Fisher information saved to {}",
        own.display()
    );
    Ok(fisher)
}

/// The model directory's backbone and tokenizer, with its weights or at random initialisation.
pub fn load_pretrained(dir: &Path, random_init: bool, device: &Device) -> Result<Pretrained> {
    let loaded = if random_init {
        Pretrained::random(dir, device)
    } else {
        Pretrained::load(dir, device)
    };
    loaded.context(|| format!("loading model from {}", dir.display()))
}

/// The model of `run` on `pretrained`'s backbone, with the method applied (after the saved
/// adapters it needs are loaded) and the tokenizer set to the run's length.
pub fn build(
    pretrained: Pretrained,
    run: &RunConfig,
    say: bool,
    device: &Device,
) -> Result<(SequenceClassifier, TextTokenizer, ParamReport)> {
    let positions = pretrained.max_positions();
    let virtual_tokens = run.method.method().virtual_tokens();
    if run.max_len + virtual_tokens > positions {
        return Err(TrainError::Invalid(format!(
            "--max-len {} plus {virtual_tokens} virtual tokens is more than the model's \
             {positions} positions",
            run.max_len
        )));
    }
    let Pretrained {
        backbone,
        mut tokenizer,
        ..
    } = pretrained;
    tokenizer.configure(run.max_len, PaddingSide::Right)?;
    let mut classifier = SequenceClassifier::new(backbone, run.readout, run.head, device)?;
    for dir in run.method.method().saved_adapters() {
        let (loaded, saved) = load_adapter(classifier, dir)
            .context(|| format!("loading the adapter in {}", dir.display()))?;
        say!(
            say,
            "loaded adapter `{}` ({}) from {}",
            saved.name,
            saved.method,
            dir.display()
        );
        classifier = loaded;
    }
    let (model, report) = run.method.apply(classifier)?;
    let Some(adapter) = &run.peft_adapter else {
        return Ok((model, tokenizer, report));
    };
    let adapterhub = is_adapterhub_dir(adapter);
    let (model, report) = if adapterhub {
        import_adapterhub(model, &run.method, adapter)
    } else {
        import_peft(model, adapter)
    }
    .context(|| format!("--peft-adapter {}", adapter.display()))?;
    say!(
        say,
        "started from the {} adapter in {}",
        if adapterhub { "AdapterHub" } else { "peft" },
        adapter.display()
    );
    Ok((model, tokenizer, report))
}

fn report_task(task: &LoadedTask) {
    println!(
        "task: {} examples ({} train, {} validation, {} test), {} outputs",
        task.examples.len(),
        task.split.train.len(),
        task.split.validation.len(),
        task.split.test.len(),
        task.num_outputs()
    );
    if !task.skipped.is_empty() {
        println!("skipped {} bad rows:", task.skipped.len());
        for row in &task.skipped {
            println!("  {}: {}", row.location, row.reason);
        }
    }
    if let TaskKind::Classification { labels } = &task.kind
        && let Some(joined) = labels.iter().find(|l| l.contains('|') || l.contains(','))
    {
        println!(
            "note: class `{joined}` looks like several labels; for a multi-label task pass \
             --multi-label (and --label-separator)"
        );
    }
    if let TaskKind::MultiLabel { labels } = &task.kind {
        println!(
            "multi-label: {} labels ({})",
            labels.len(),
            labels.join(", ")
        );
    }
}

/// A run directory's lock file: held by the one process writing the run.
pub const LOCK_FILE: &str = "lock";

/// The exclusive lock on a run directory (`RUN/lock`, holding the writer's pid), released when
/// dropped or when the process ends, however it ends.
pub struct RunLock {
    _file: std::fs::File,
}

/// Takes `dir`'s lock (creating `dir`), or says which process holds it.
pub fn lock_run_dir(dir: &Path) -> Result<RunLock> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| TrainError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {
            use std::io::Write;
            file.set_len(0).map_err(|e| TrainError::io(&path, e))?;
            write!(file, "{}", std::process::id()).map_err(|e| TrainError::io(&path, e))?;
            Ok(RunLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            Err(TrainError::Invalid(format!(
                "{} is being written by another kiln process (pid {}); wait for it to finish or \
                 choose another --out",
                dir.display(),
                holder.trim()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(TrainError::io(&path, e)),
    }
}

/// A run directory is never overwritten: a new run needs one without a run, a resumed run one
/// with a run of the same settings.
pub(crate) fn prepare_run_dir(dir: &Path, run: &RunConfig, resume: bool) -> Result<()> {
    let path = dir.join(RUN_FILE);
    if !path.is_file() {
        if resume {
            return Err(TrainError::Invalid(format!(
                "--resume: {} holds no run to resume (no run.json); leave out --resume to \
                 start one there",
                dir.display()
            )));
        }
        return write_json(&path, run);
    }
    if !resume {
        return Err(TrainError::Invalid(format!(
            "{} already holds a run; pass --resume to continue it or choose another --out",
            dir.display()
        )));
    }
    let recorded: RunConfig = read_json(&path)?;
    // A resume may give the run a longer budget (more epochs, or more steps); nothing else.
    let mut comparable = recorded.clone();
    let (had, asked) = (&recorded.train, &run.train);
    let longer = match (had.max_steps, asked.max_steps) {
        (None, None) => asked.epochs >= had.epochs,
        (Some(had_steps), Some(asked_steps)) => {
            asked_steps >= had_steps && asked.epochs == had.epochs
        }
        _ => false,
    };
    if longer {
        comparable.train.epochs = asked.epochs;
        comparable.train.max_steps = asked.max_steps;
    }
    if &comparable != run {
        let mut differences = Vec::new();
        json_differences(
            "",
            &serde_json::to_value(&recorded).unwrap_or_default(),
            &serde_json::to_value(run).unwrap_or_default(),
            &mut differences,
        );
        return Err(TrainError::Invalid(format!(
            "{} holds a run with other settings or inputs ({}); resume it with the same \
             options and files (only --epochs or --max-steps may grow)",
            dir.display(),
            differences.join(", ")
        )));
    }
    if &recorded != run {
        eprintln!(
            "resuming with a longer budget: {}",
            match run.train.max_steps {
                Some(steps) => format!("--max-steps {steps}"),
                None => format!("--epochs {}", run.train.epochs),
            }
        );
        write_json(&path, run)?;
    }
    Ok(())
}

/// `settings` with the model directory (when it is one, not a hub name) and the task's paths
/// made absolute, so that a run can be reloaded from any working directory.
pub(crate) fn absolute(settings: &RunSettings) -> RunSettings {
    let absolute = |path: &Path| std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut settings = settings.clone();
    if settings.model.is_dir() {
        settings.model = absolute(&settings.model);
    }
    let task = &mut settings.task;
    task.path = absolute(&task.path);
    for held_out in [&mut task.validation, &mut task.test].into_iter().flatten() {
        *held_out = absolute(held_out);
    }
    if let Some(adapter) = &settings.peft_adapter {
        settings.peft_adapter = Some(absolute(adapter));
    }
    settings
}

/// An error naming every input file of `config` that changed since the run started (the model's;
/// the task's too with `task`), unless `allow` is set.
fn verify_inputs(config: &RunConfig, model_dir: &Path, task: bool, allow: bool) -> Result<()> {
    let Some(recorded) = &config.fingerprints else {
        return Ok(());
    };
    let mut changed = fingerprint::changes(
        "model",
        &recorded.model,
        &fingerprint::model_files(model_dir)?,
    );
    if task {
        changed.extend(fingerprint::changes(
            "task",
            &recorded.task,
            &fingerprint::task_files(&config.task)?,
        ));
    }
    if changed.is_empty() || allow {
        return Ok(());
    }
    Err(TrainError::Invalid(format!(
        "the run's inputs changed since it trained: {}; its results would not be its own \
         (pass --allow-changed-inputs to go on anyway)",
        changed.join(", ")
    )))
}

/// The settings in which the run recorded in `recorded` differs from what `settings` asks for,
/// as `name: recorded -> asked` lines (empty: the run is what `settings` would train). Only what
/// the user chooses is compared: what kiln derives from the model (the default readout, a
/// shortened `max_len`, a method's token ids) counts as asked for when it follows from it.
pub fn settings_differences(recorded: &RunConfig, settings: &RunSettings) -> Result<Vec<String>> {
    let settings = &absolute(settings);
    let model_dir = kiln_models::hub::resolve(&settings.model)?;
    let kind = kiln_models::ModelKind::detect(&model_dir)
        .context(|| format!("reading the model in {}", model_dir.display()))?;
    let mut method = settings.method.clone();
    if method.method().virtual_tokens() > 0 {
        let tokenizer = TextTokenizer::from_dir(&model_dir, kind)?;
        method.method_mut().tokenize(&tokenizer)?;
    }
    let asked = serde_json::json!({
        "model": settings.model,
        "task": settings.task,
        "method": method,
        "train": settings.train,
        "readout": settings.readout.unwrap_or(kind.default_readout()),
        "max_len": settings.max_len,
        "save_full": settings.save_full || settings.random_init,
        "random_init": settings.random_init,
        "train_examples": settings.train_examples,
        "feature_cache": settings.feature_cache && recorded.feature_cache,
        "peft_adapter": settings.peft_adapter,
    });
    let had = serde_json::json!({
        "model": recorded.model,
        "task": recorded.task,
        "method": recorded.method,
        "train": recorded.train,
        "readout": recorded.readout,
        "max_len": recorded.max_len_requested.unwrap_or(recorded.max_len),
        "save_full": recorded.save_full,
        "random_init": recorded.random_init,
        "train_examples": recorded.train_examples,
        "feature_cache": recorded.feature_cache,
        "peft_adapter": recorded.peft_adapter,
    });
    let mut differences = Vec::new();
    json_differences("", &had, &asked, &mut differences);
    if let Some(fingerprints) = &recorded.fingerprints {
        let now = Fingerprints::of(&model_dir, &settings.task)?;
        differences.extend(fingerprint::changes(
            "model",
            &fingerprints.model,
            &now.model,
        ));
        differences.extend(fingerprint::changes("task", &fingerprints.task, &now.task));
    }
    Ok(differences)
}

/// `path: a -> b` for every leaf where `a` and `b` differ.
pub(crate) fn json_differences(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let inner = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let null = Value::Null;
                json_differences(
                    &inner,
                    x.get(key).unwrap_or(&null),
                    y.get(key).unwrap_or(&null),
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{path}: {a} -> {b}")),
        _ => {}
    }
}

/// A finished run read back: its settings, the model with its best weights, its tokenizer.
pub struct LoadedRun {
    /// What `run.json` records.
    pub config: RunConfig,
    /// The model with the best epoch's weights.
    pub model: SequenceClassifier,
    /// Its tokenizer, set to the run's length.
    pub tokenizer: TextTokenizer,
    /// What the model predicts: the run's classes, or a number.
    pub kind: TaskKind,
    /// The base model's directory (a hub name resolved to its cached snapshot).
    pub model_dir: PathBuf,
    /// A multi-label run's decision threshold (its `summary.json`'s, else the one asked for,
    /// else 0.5).
    pub threshold: f64,
}

impl LoadedRun {
    /// The model with what it needs for inference on `device`, `batch_size` texts at a time.
    pub fn predictor<'a>(&'a self, device: &'a Device, batch_size: usize) -> Predictor<'a> {
        Predictor {
            model: &self.model,
            tokenizer: &self.tokenizer,
            kind: &self.kind,
            device,
            batch_size,
            threshold: self.threshold,
        }
    }
}

/// The run in `dir` with its best weights, on `device`, as it trained (call the method's
/// [`after_fit`](kiln_tuning::Method::after_fit) for the model a run evaluates and exports). A
/// base model whose files changed since the run trained is refused unless
/// `allow_changed_inputs`.
pub fn load_run(dir: &Path, device: &Device, allow_changed_inputs: bool) -> Result<LoadedRun> {
    let config = read_json(&dir.join(RUN_FILE))?;
    rebuild_run(dir, config, device, false, allow_changed_inputs)
}

/// The run in `dir` whose `run.json` was read as `config`, with its best weights, after its
/// inputs are checked (the task's too with `task`).
fn rebuild_run(
    dir: &Path,
    config: RunConfig,
    device: &Device,
    task: bool,
    allow_changed_inputs: bool,
) -> Result<LoadedRun> {
    let kind = config.task_kind()?;
    let (model, tokenizer, model_dir) =
        rebuild_model(dir, &config, device, task, allow_changed_inputs)?;
    // The tuned threshold is in the summary (a run still training has none yet).
    let summary = dir.join(SUMMARY_FILE);
    let tuned = summary
        .is_file()
        .then(|| read_json::<RunSummary>(&summary))
        .transpose()?
        .and_then(|s| s.threshold);
    Ok(LoadedRun {
        model_dir,
        kind,
        threshold: tuned.or(config.threshold).unwrap_or(0.5),
        config,
        model,
        tokenizer,
    })
}

/// The model of the run in `dir` (whose `run.json` was read as `config`) with its best
/// weights, its tokenizer and the base model's directory, after its inputs are checked (the
/// task's too with `task`).
pub(crate) fn rebuild_model(
    dir: &Path,
    config: &RunConfig,
    device: &Device,
    task: bool,
    allow_changed_inputs: bool,
) -> Result<(SequenceClassifier, TextTokenizer, PathBuf)> {
    let pretrained = load_pretrained(&config.model, config.random_init, device)?;
    if !config.random_init {
        verify_inputs(config, &pretrained.dir, task, allow_changed_inputs)?;
    }
    let model_dir = pretrained.dir.clone();
    let (model, tokenizer, _) = build(pretrained, config, false, device)?;
    let weights = dir.join(BEST_DIR).join(TRAINED_FILE);
    let (model, _) = load_params(model, &weights)?;
    Ok((model, tokenizer, model_dir))
}

/// Which part of a run's split to score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The validation part.
    Validation,
    /// The test part.
    Test,
}

impl std::str::FromStr for Split {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "validation" => Ok(Self::Validation),
            "test" => Ok(Self::Test),
            other => Err(TrainError::Invalid(format!(
                "--split {other}: expected validation or test"
            ))),
        }
    }
}

/// What [`evaluate_run`] measured.
pub struct RunEvaluation {
    /// Loss and metrics.
    pub metrics: Metrics,
    /// Examples scored.
    pub examples: usize,
    /// Wall time of the evaluation.
    pub seconds: f64,
    /// For the validation split of the model as trained: the epoch and the metrics the run
    /// recorded.
    pub recorded: Option<(usize, Metrics)>,
}

impl RunEvaluation {
    /// An error unless the reloaded model reproduced every metric the run recorded (where it
    /// recorded them for this split), naming each that differs.
    pub fn check_reproduced(&self) -> Result<()> {
        let Some((_, recorded)) = &self.recorded else {
            return Ok(());
        };
        // JSON text may move a float by its last bit; anything more is a real difference.
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-12 * a.abs().max(1.0),
            (a, b) => a == b,
        };
        // A multi-label run's decisions were recorded at the training threshold; at another
        // (the tuned one) only the loss can match.
        let decisions = recorded.threshold == self.metrics.threshold;
        let decided = |a: Option<f64>| a.filter(|_| decisions);
        let fields = [
            ("loss", Some(recorded.loss), Some(self.metrics.loss)),
            ("accuracy", recorded.accuracy, self.metrics.accuracy),
            (
                "macro_f1",
                decided(recorded.macro_f1),
                decided(self.metrics.macro_f1),
            ),
            ("mcc", recorded.mcc, self.metrics.mcc),
            ("pearson", recorded.pearson, self.metrics.pearson),
            ("spearman", recorded.spearman, self.metrics.spearman),
            (
                "micro_f1",
                decided(recorded.micro_f1),
                decided(self.metrics.micro_f1),
            ),
            (
                "subset_accuracy",
                decided(recorded.subset_accuracy),
                decided(self.metrics.subset_accuracy),
            ),
        ];
        let off: Vec<String> = fields
            .iter()
            .filter(|(_, a, b)| !close(*a, *b))
            .map(|(name, a, b)| format!("{name}: recorded {a:?}, now {b:?}"))
            .collect();
        if off.is_empty() {
            return Ok(());
        }
        Err(TrainError::Invalid(format!(
            "the reloaded model does not reproduce the recorded validation metrics ({})",
            off.join("; ")
        )))
    }
}

/// What [`evaluate_run`] scores.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalData {
    /// A part of the run's own split.
    Split(Split),
    /// Labelled examples in a CSV/TSV/JSONL file or a class-folder directory, read with the
    /// spec's column and encoding options where it sets them and the run's otherwise.
    File(Box<TaskSpec>),
}

/// Scores the run in `dir` on a part of its split or on a file of labelled examples (whose
/// labels must all be the run's). With `adapter_drop`, the lowest that many layers run without
/// adapters (AdapterDrop at inference). On the validation split of the model as trained it also
/// reads the metric the run recorded, for [`RunEvaluation::check_reproduced`].
pub fn evaluate_run(
    dir: &Path,
    data: &EvalData,
    adapter_drop: Option<usize>,
    device: &Device,
    allow_changed_inputs: bool,
) -> Result<RunEvaluation> {
    let config: RunConfig = read_json(&dir.join(RUN_FILE))?;
    if config.objective == Objective::CausalLm {
        if adapter_drop.is_some() {
            return Err(TrainError::Invalid(
                "--adapter-drop: for classification runs; this one is a language model".into(),
            ));
        }
        return crate::causal_lm::evaluate_run(dir, config, data, device, allow_changed_inputs);
    }
    let (examples, kind) = match data {
        EvalData::Split(split) => {
            let task = config
                .task
                .load(config.train.seed)
                .context(|| format!("reading task {}", config.task.path.display()))?;
            let indices = match split {
                Split::Validation => &task.split.validation,
                Split::Test => &task.split.test,
            };
            if task.kind != config.task_kind()? {
                return Err(TrainError::Invalid(format!(
                    "{}: the task's classes are not the ones the run trained on ({:?}); score a \
                     file with --task instead",
                    config.task.path.display(),
                    config.labels
                )));
            }
            let examples: Vec<TextExample> = task.part(indices).into_iter().cloned().collect();
            (examples, task.kind)
        }
        EvalData::File(file) => {
            let kind = config.task_kind()?;
            let run = &config.task;
            let spec = TaskSpec {
                path: file.path.clone(),
                validation: None,
                test: None,
                text_column: file.text_column.clone().or(run.text_column.clone()),
                pair_column: file.pair_column.clone().or(run.pair_column.clone()),
                label_column: file.label_column.clone().or(run.label_column.clone()),
                regression: kind == TaskKind::Regression,
                multi_label: matches!(kind, TaskKind::MultiLabel { .. }),
                label_separator: file.label_separator.clone().or(run.label_separator.clone()),
                glue: None,
                encoding: file.encoding.clone().or(run.encoding.clone()),
                skip_bad_rows: file.skip_bad_rows || run.skip_bad_rows,
            };
            let dataset = spec.read_held_out(&spec.path, &kind)?;
            (dataset.examples, kind)
        }
    };
    let eval_batch_size = config.train.eval_batch_size;
    let LoadedRun {
        mut model,
        tokenizer,
        threshold,
        ..
    } = rebuild_run(
        dir,
        config,
        device,
        matches!(data, EvalData::Split(_)),
        allow_changed_inputs,
    )?;
    if let Some(layers) = adapter_drop {
        if model.adapters.is_empty() {
            return Err(TrainError::Invalid(
                "--adapter-drop: the run's model holds no adapters".into(),
            ));
        }
        if layers > model.num_layers() {
            return Err(TrainError::Invalid(format!(
                "--adapter-drop {layers}: the model has {} layers",
                model.num_layers()
            )));
        }
        let training_max = model.adapter_drop_max;
        model.set_adapter_drop(training_max, layers);
    }
    let started = std::time::Instant::now();
    let metrics = evaluate_at(
        &model,
        &tokenizer,
        &examples.iter().collect::<Vec<_>>(),
        (&kind, threshold),
        device,
        eval_batch_size,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let mut recorded = None;
    if *data == EvalData::Split(Split::Validation) && adapter_drop.is_none() {
        let best: EpochRecord = read_json(&dir.join("best.json"))?;
        recorded = Some((best.epoch, best.validation));
    }
    Ok(RunEvaluation {
        metrics,
        examples: examples.len(),
        seconds,
        recorded,
    })
}

/// What [`export_run`] and [`merge_run`] wrote.
pub struct Exported<T> {
    /// The run's settings.
    pub config: RunConfig,
    /// The adapter or checkpoint written.
    pub written: T,
    /// The head went into `kiln_head.safetensors` because the HF format cannot hold it.
    pub head_apart: bool,
}

/// Writes the run in `dir` as a HF peft adapter directory `out` (LoRA, prompt tuning, prefix
/// tuning), with `base_model` as `base_model_name_or_path` (default: the run's model), the head
/// beside it when peft's classes cannot hold it, and a README ([`crate::head_files`]).
pub fn export_run(
    dir: &Path,
    out: &Path,
    base_model: Option<&str>,
    device: &Device,
    allow_changed_inputs: bool,
) -> Result<Exported<PeftExport>> {
    let config: RunConfig = read_json(&dir.join(RUN_FILE))?;
    let Some(peft_type) = config.method.method().peft_type() else {
        return Err(TrainError::Invalid(format!(
            "{}: the run's method is `{}`; kiln export writes peft's LoRA, prompt-tuning and \
             prefix-tuning formats",
            dir.display(),
            config.method.name()
        )));
    };
    let LoadedRun {
        config,
        mut model,
        threshold,
        ..
    } = rebuild_run(dir, config, device, false, allow_changed_inputs)?;
    // peft's adapter holds what the method leaves after training (prefixes folded).
    config.method.method().after_fit(&mut model)?;
    let base = base_model.map_or_else(|| config.model.display().to_string(), str::to_string);
    let written = export_peft(&model, out, &base)?;
    let described = Written::Peft {
        peft_type: peft_type.to_string(),
        task_type: written.task_type,
        base_model: base,
    };
    // Only a prompt's virtual tokens have states in peft's outputs; prefixes have none.
    let prompt_tokens = if peft_type == "PROMPT_TUNING" {
        config.method.method().virtual_tokens()
    } else {
        0
    };
    let head = head_file(&config, &model, prompt_tokens, threshold);
    let head_apart = write_beside(&model, out, &described, &head)?;
    Ok(Exported {
        config,
        written,
        head_apart,
    })
}

/// What [`export_run_adapterhub`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterHubWritten {
    /// One adapter directory (with its head where AdapterHub can hold it).
    Adapter(AdapterHubExport),
    /// A fusion: each fused adapter's directory and the fusion's.
    Fusion(Vec<PathBuf>),
}

/// Writes the run in `dir` (a bottleneck-adapter or MAM run, or an AdapterFusion run) in
/// AdapterHub's format in `out` ([`crate::adapterhub`]): what `model.load_adapter(out,
/// use_safetensors=True)` loads, or for a fusion the adapters and `load_adapter_fusion`'s
/// directory. `base_model` is recorded as `model_name` (default: the run's model).
pub fn export_run_adapterhub(
    dir: &Path,
    out: &Path,
    base_model: Option<&str>,
    device: &Device,
    allow_changed_inputs: bool,
) -> Result<(RunConfig, AdapterHubWritten)> {
    let LoadedRun {
        config, mut model, ..
    } = load_run(dir, device, allow_changed_inputs)?;
    config.method.method().after_fit(&mut model)?;
    let method = serde_json::to_value(&config.method).unwrap_or_default();
    if method["train_norms"] == true {
        return Err(TrainError::Invalid(format!(
            "{}: the run trained the backbone's layer norms with its adapter (--train-norms true, \
             Houlsby's default here); an AdapterHub adapter holds no layer norms, so it would not \
             give this run's outputs. Train with --train-norms false for AdapterHub",
            dir.display()
        )));
    }
    let base = base_model.map_or_else(|| config.model.display().to_string(), str::to_string);
    let written = if config.method.name() == "fusion" {
        AdapterHubWritten::Fusion(export_adapterhub_fusion(&model, out, &base)?)
    } else {
        let name = config.method.method().adapter_name().ok_or_else(|| {
            TrainError::Invalid(format!(
                "{}: the run's method `{}` trains no adapter AdapterHub can hold",
                dir.display(),
                config.method.name()
            ))
        })?;
        AdapterHubWritten::Adapter(export_adapterhub(&model, name, out, &base)?)
    };
    Ok((config, written))
}

/// Folds the LoRA deltas of the run in `dir` into the base weights and writes a HF checkpoint
/// (config with the class names, weights, tokenizer files) to `out`, the head beside it when
/// transformers' classes cannot hold it, and a README ([`crate::head_files`]).
pub fn merge_run(
    dir: &Path,
    out: &Path,
    device: &Device,
    allow_changed_inputs: bool,
) -> Result<Exported<MergedCheckpoint>> {
    let LoadedRun {
        config,
        model,
        model_dir,
        threshold,
        ..
    } = load_run(dir, device, allow_changed_inputs)?;
    let labels = config.labels.as_deref().map(|labels| {
        if config.multi_label {
            HeadLabels::MultiLabel(labels)
        } else {
            HeadLabels::Classes(labels)
        }
    });
    let written = save_merged(&model, &model_dir, out, labels)?;
    let described = Written::Merged {
        architecture: written.architecture,
    };
    let head = head_file(&config, &model, 0, threshold);
    let head_apart = write_beside(&model, out, &described, &head)?;
    Ok(Exported {
        config,
        written,
        head_apart,
    })
}

fn head_file(
    config: &RunConfig,
    model: &SequenceClassifier,
    virtual_tokens: usize,
    threshold: f64,
) -> HeadFile {
    HeadFile {
        readout: model.readout,
        hidden_layers: model.head.hidden.len(),
        labels: config.labels.clone(),
        multi_label: config.multi_label,
        threshold: config.multi_label.then_some(threshold),
        max_len: config.max_len,
        virtual_tokens,
    }
}

/// What [`plan_run`] predicts, with the names it was made for.
pub struct RunPlan {
    /// The prediction.
    pub plan: Plan,
    /// `bert`, `gpt2` or `m2`.
    pub backbone: String,
    /// The method's label (`lora-r8`).
    pub method: String,
}

/// Predicts one training step of `method` on the model in `model_dir` (only its `config.json`
/// and tokenizer are read: the architecture at random initialisation has the weights' shapes)
/// for batches of `batch` x `seq` tokens and `outputs` classes.
pub fn plan_run(
    model_dir: &Path,
    method: &MethodConfig,
    batch: usize,
    seq: usize,
    outputs: usize,
    device: &Device,
) -> Result<RunPlan> {
    let pretrained = Pretrained::random(model_dir, device)
        .context(|| format!("reading the model in {}", model_dir.display()))?;
    let readout = pretrained.backbone.default_readout();
    let head = HeadConfig {
        layers: method.method().head_layers(),
        outputs,
        dropout: 0.1,
    };
    let mut method = method.clone();
    method.method_mut().tokenize(&pretrained.tokenizer)?;
    let model = SequenceClassifier::new(pretrained.backbone, readout, head, device)?;
    let (model, report) = method.apply(model)?;
    let shape = StepShape {
        batch,
        seq,
        virtual_tokens: method.method().virtual_tokens(),
    };
    Ok(RunPlan {
        plan: plan(&model, &report, shape)?,
        backbone: model.backbone_name().to_string(),
        method: method.label(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_are_civil_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        // 2024-02-29 23:59:59 UTC, a leap day.
        assert_eq!(utc_stamp(1_709_251_199), "20240229-235959");
        assert_eq!(utc_stamp(1_796_137_200), "20261201-150000");
    }

    #[test]
    fn reproduction_checks_every_recorded_metric() {
        let recorded = Metrics {
            loss: 0.5,
            accuracy: Some(0.9),
            macro_f1: Some(0.8),
            mcc: Some(0.7),
            pearson: None,
            spearman: None,
            micro_f1: None,
            subset_accuracy: None,
            threshold: None,
            perplexity: None,
        };
        let evaluation = |metrics: Metrics| RunEvaluation {
            metrics,
            examples: 10,
            seconds: 0.0,
            recorded: Some((1, recorded.clone())),
        };
        assert!(evaluation(recorded.clone()).check_reproduced().is_ok());
        let other = Metrics {
            macro_f1: Some(0.81),
            ..recorded.clone()
        };
        let message = evaluation(other)
            .check_reproduced()
            .expect_err("macro F1 differs")
            .to_string();
        assert!(
            message.contains("macro_f1") && !message.contains("accuracy"),
            "{message}"
        );
    }

    #[test]
    fn a_step_beyond_the_memory_is_refused_before_it_runs() {
        let device = kiln_testkit::cpu();
        let pretrained =
            Pretrained::load(&kiln_testkit::fixture("bert-tiny"), &device).expect("fixture");
        let settings = RunSettings::new(
            kiln_testkit::fixture("bert-tiny"),
            TaskSpec::new("unused.csv"),
            MethodConfig::parse("full", &[]).expect("method"),
        );
        let run = RunConfig {
            model: settings.model.clone(),
            task: settings.task.clone(),
            method: settings.method.clone(),
            train: settings.train.clone(),
            readout: Readout::Mean,
            head: HeadConfig {
                layers: 1,
                outputs: 2,
                dropout: 0.1,
            },
            max_len: 32,
            max_len_requested: None,
            save_full: false,
            random_init: false,
            train_examples: None,
            feature_cache: false,
            peft_adapter: None,
            labels: None,
            multi_label: false,
            threshold: None,
            objective: Objective::Sequence,
            fingerprints: None,
        };
        let (model, _, report) = build(pretrained, &run, false, &device).expect("model");
        let message = refuse_steps_beyond(&model, &report, &run, 64, Some(1 << 10))
            .expect_err("1 KiB is too little")
            .to_string();
        assert!(message.contains("batch 16 x 32 tokens"), "{message}");
        assert!(refuse_steps_beyond(&model, &report, &run, 64, Some(1 << 34)).is_ok());
        assert!(refuse_steps_beyond(&model, &report, &run, 64, None).is_ok());
    }

    #[test]
    fn fresh_run_dirs_never_collide() {
        let root = tempfile::tempdir().expect("dir");
        let a = fresh_run_dir(root.path(), "lora-r8").expect("a");
        let b = fresh_run_dir(root.path(), "lora-r8").expect("b");
        assert_ne!(a, b);
        assert!(a.is_dir() && b.is_dir());
        assert!(
            a.file_name()
                .expect("name")
                .to_string_lossy()
                .starts_with("lora-r8-20")
        );
    }
}
