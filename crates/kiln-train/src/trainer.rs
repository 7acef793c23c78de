//! The training loop: AdamW (no decay on biases and layer norms, as HF's Trainer) with warm-up
//! then decay (optionally decayed layer by layer), gradients added up over `gradient_accumulation`
//! micro-batches, global-norm clipping, then Child-Tuning's gradient mask if asked for,
//! evaluation after every epoch or every `eval_every` steps, early stopping and best-checkpoint
//! keeping on the validation metric, a `max_steps` budget, metrics as JSON lines and CSV, and
//! resume from the last checkpoint.
//!
//! Run directory:
//! - `metrics.jsonl` and `metrics.csv`: one record per logged step (`log_every`), per evaluation
//!   (`eval_every`) and per epoch, every record with the same fields (see [`LogRecord`]);
//! - `checkpoints/epoch-N/` or `checkpoints/step-S/` (`trained.safetensors`, `optimizer.bpk`) and
//!   `state.json`, which names the last checkpoint and is written last (atomically): it is what
//!   a resume trusts;
//! - `best/trained.safetensors` and `best.json`: the evaluation with the best validation metric.
//!
//! Reproducibility: the device is re-seeded and the training order reshuffled from `seed` and the
//! epoch number at the start of every epoch (and with `save_every` the device at every step), so
//! the same seed gives the same losses, and a resumed run continues exactly as the uninterrupted
//! one would have.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ParamGroup};
use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::optim::lr_scheduler::module_lr_scheduler::{ModuleLearningRate, ModuleLrScheduler};
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_kernels::FusedAdamWConfig;
use serde::{Deserialize, Serialize};

use kiln_data::SplitMix64;
use kiln_models::OptimizerGroup;
use kiln_tuning::set_trainable;

use crate::checkpoint::{has_entries, load_params, save_params, write_atomically};
use crate::child_tuning::{
    ChildTuning, PathTensors, mask_gradients_fixed, mask_gradients_randomly,
};
use crate::error::{Result, TrainError};
use crate::memory::peak_rss_mib;
use crate::metrics::Metrics;
use crate::schedule::{Decay, learning_rate};
use crate::task_model::{Task, TaskModel};
use crate::transforms::clip_global_norm;

/// The trainer's settings (a run's `run.json` records them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the training examples.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Examples per training batch.
    pub batch_size: usize,
    /// Examples per evaluation batch.
    pub eval_batch_size: usize,
    /// Share of all steps spent warming the learning rate up from 0.
    pub warmup_ratio: f64,
    /// How the learning rate falls after warm-up.
    pub decay: Decay,
    /// AdamW's decoupled weight decay (not on biases and norms).
    pub weight_decay: f64,
    /// Clip the joint gradient norm to this; `None` leaves gradients alone.
    pub max_grad_norm: Option<f64>,
    /// Stop after this many epochs without a better validation metric.
    pub patience: Option<usize>,
    /// Seeds the initialisation, the data order and dropout (and the split, in a run).
    pub seed: u64,
    /// Write a step record every this many optimizer steps.
    pub log_every: usize,
    /// Micro-batches of `batch_size` whose gradients add up to one optimizer step: the step of
    /// a `batch_size · N` batch in N smaller passes.
    #[serde(default = "one")]
    pub gradient_accumulation: usize,
    /// Stop after this many optimizer steps, whatever `epochs` says (HF's `max_steps`); the
    /// schedule spans them.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Evaluate (and keep the best checkpoint, count patience) every this many optimizer steps
    /// and at the end, instead of after every epoch.
    #[serde(default)]
    pub eval_every: Option<usize>,
    /// Also checkpoint every this many optimizer steps, so a run resumes mid-epoch. Dropout is
    /// then re-seeded at every step (from the seed and the step), which a mid-epoch resume needs
    /// to continue exactly: such a run's dropout differs from one without `save_every`.
    #[serde(default)]
    pub save_every: Option<usize>,
    /// Child-Tuning's gradient mask (see [`crate::child_tuning`]).
    #[serde(default)]
    pub child_tuning: Option<ChildTuning>,
    /// Layer-wise learning-rate decay factor (see [`crate::schedule::layer_decayed`]).
    #[serde(default)]
    pub layer_decay: Option<f64>,
}

impl TrainConfig {
    /// An error naming the first setting out of range: rates finite and above 0, ratios in
    /// range, counts at least 1, a clipping norm above 0.
    pub fn check(&self) -> Result<()> {
        let positive = |value: f64| value.is_finite() && value > 0.0;
        let refuse = |message: String| Err(TrainError::Invalid(message));
        if self.epochs == 0 {
            return refuse("--epochs 0: a run trains for at least one epoch".into());
        }
        if !positive(self.lr) {
            return refuse(format!(
                "--lr {}: the learning rate must be above 0",
                self.lr
            ));
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return refuse("--batch-size must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return refuse(format!(
                "--warmup-ratio {}: the share of warm-up steps must be in [0, 1)",
                self.warmup_ratio
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return refuse(format!(
                "--weight-decay {}: must be 0 or more",
                self.weight_decay
            ));
        }
        if let Some(norm) = self.max_grad_norm
            && !positive(norm)
        {
            return refuse(format!(
                "--max-grad-norm {norm}: the clipping norm must be above 0 (0 turns clipping off)"
            ));
        }
        if self.patience == Some(0) {
            return refuse("--patience 0: wait at least one evaluation".into());
        }
        for (flag, value) in [
            ("--log-every", Some(self.log_every)),
            ("--gradient-accumulation", Some(self.gradient_accumulation)),
            ("--max-steps", self.max_steps),
            ("--eval-every", self.eval_every),
            ("--save-every", self.save_every),
        ] {
            if value == Some(0) {
                return refuse(format!("{flag} 0: must be at least 1"));
            }
        }
        if let Some(decay) = self.layer_decay
            && !(decay > 0.0 && decay <= 1.0)
        {
            return refuse(format!(
                "--layer-decay {decay}: the factor must be in (0, 1]"
            ));
        }
        if let Some(child_tuning) = &self.child_tuning {
            child_tuning.check()?;
        }
        Ok(())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            lr: 5e-5,
            batch_size: 16,
            eval_batch_size: 64,
            warmup_ratio: 0.1,
            decay: Decay::Linear,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            patience: None,
            seed: 42,
            log_every: 10,
            gradient_accumulation: 1,
            max_steps: None,
            eval_every: None,
            save_every: None,
            child_tuning: None,
            layer_decay: None,
        }
    }
}

fn one() -> usize {
    1
}

/// Train and validation examples of one task.
pub struct TaskData<'a, T: Task> {
    /// What batches are made with.
    pub task: &'a T,
    /// Training examples.
    pub train: Vec<&'a T::Example>,
    /// Validation examples.
    pub validation: Vec<&'a T::Example>,
}

/// What one evaluation saw: after an epoch, or every `eval_every` steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch it fell in, from 1.
    pub epoch: usize,
    /// Optimizer steps done when it ran.
    #[serde(default)]
    pub step: usize,
    /// Mean training loss over the examples since the previous evaluation.
    pub train_loss: f64,
    /// Validation metrics.
    pub validation: Metrics,
    /// Wall time of training and validation since the previous evaluation.
    pub seconds: f64,
    /// Training tokens per second since the previous evaluation.
    pub train_tokens_per_second: f64,
}

/// What `state.json` holds: enough to resume after the last checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs done.
    pub completed_epochs: usize,
    /// Optimizer steps done.
    pub global_step: usize,
    /// Optimizer steps done in the epoch after `completed_epochs` (a mid-epoch checkpoint).
    #[serde(default)]
    pub steps_in_epoch: usize,
    /// The checkpoint directory (under `checkpoints/`) this state goes with; absent in runs
    /// written before step checkpoints, whose directory is `epoch-{completed_epochs}`.
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// The epoch of the evaluation with the best validation metric so far.
    pub best_epoch: Option<usize>,
    /// The step of that evaluation.
    #[serde(default)]
    pub best_step: Option<usize>,
    /// That metric.
    pub best_metric: Option<f64>,
    /// Evaluations since it last improved (for early stopping); with an evaluation per epoch,
    /// epochs.
    pub epochs_without_improvement: usize,
    /// Every evaluation's record.
    pub history: Vec<EpochRecord>,
    /// Wall time of all training and evaluation so far, in seconds.
    #[serde(default)]
    pub seconds: f64,
    /// Optimizer steps in one epoch.
    #[serde(default)]
    pub steps_per_epoch: usize,
}

impl TrainState {
    /// The checkpoint directory's name.
    fn checkpoint_name(&self) -> String {
        self.checkpoint
            .clone()
            .unwrap_or_else(|| format!("epoch-{}", self.completed_epochs))
    }
}

/// How a fit ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// The state after the last step.
    pub state: TrainState,
    /// The validation metric best-checkpoint keeping follows.
    pub metric_name: String,
    /// Peak resident memory of the process.
    pub peak_rss_mib: Option<f64>,
    /// The epoch a resumed fit continued after.
    pub resumed_from_epoch: Option<usize>,
}

impl TrainSummary {
    /// Mean wall time of an epoch (training and validation): the run's time over the epochs its
    /// steps make up.
    pub fn seconds_per_epoch(&self) -> f64 {
        let state = &self.state;
        if state.seconds > 0.0 && state.steps_per_epoch > 0 && state.global_step > 0 {
            return state.seconds * state.steps_per_epoch as f64 / state.global_step as f64;
        }
        let history = &state.history;
        history.iter().map(|r| r.seconds).sum::<f64>() / history.len().max(1) as f64
    }

    /// The best evaluation's validation metrics.
    pub fn best_validation(&self) -> Option<&Metrics> {
        let (epoch, step) = (self.state.best_epoch?, self.state.best_step);
        self.state
            .history
            .iter()
            .find(|r| r.epoch == epoch && step.is_none_or(|s| r.step == s))
            .map(|r| &r.validation)
    }
}

/// One line of `metrics.jsonl` (and one row of `metrics.csv`): every record has every field,
/// `null` where it does not apply. `record` is `step` (a logged optimizer step: its loss, rate,
/// throughput), `evaluation` (every `eval_every` steps) or `epoch` (an epoch's end: its mean
/// loss, and its validation when evaluations follow epochs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// `step`, `evaluation` or `epoch`.
    pub record: String,
    /// The epoch, from 1.
    pub epoch: usize,
    /// Optimizer steps done.
    pub step: usize,
    /// The step's loss, or the mean loss since the previous record of the kind.
    pub train_loss: Option<f64>,
    /// The step's learning rate.
    pub learning_rate: Option<f64>,
    /// Training tokens per second.
    pub tokens_per_second: Option<f64>,
    /// Validation metrics.
    pub validation: Option<Metrics>,
    /// Wall time since the previous record of the kind.
    pub seconds: Option<f64>,
}

/// The columns of `metrics.csv`: the record's fields, the validation metrics flattened.
const CSV_COLUMNS: [&str; 13] = [
    "record",
    "epoch",
    "step",
    "train_loss",
    "learning_rate",
    "tokens_per_second",
    "seconds",
    "validation_loss",
    "validation_accuracy",
    "validation_macro_f1",
    "validation_mcc",
    "validation_pearson",
    "validation_spearman",
];

impl LogRecord {
    /// The record as a CSV row in [`CSV_COLUMNS`]' order.
    fn csv_row(&self) -> Vec<String> {
        let number = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        let metric =
            |get: fn(&Metrics) -> Option<f64>| number(self.validation.as_ref().and_then(get));
        vec![
            self.record.clone(),
            self.epoch.to_string(),
            self.step.to_string(),
            number(self.train_loss),
            number(self.learning_rate),
            number(self.tokens_per_second),
            number(self.seconds),
            metric(|m| Some(m.loss)),
            metric(|m| m.accuracy),
            metric(|m| m.macro_f1),
            metric(|m| m.mcc),
            metric(|m| m.pearson),
            metric(|m| m.spearman),
        ]
    }
}

/// The training loop: AdamW with warm-up and decay, clipping and Child-Tuning between backward and step, evaluation every epoch, best-epoch keeping, early stopping, atomic checkpoints, resume, JSON-lines logs.
pub struct Trainer {
    /// The trainer's settings.
    pub config: TrainConfig,
    /// An autodiff device: where the model trains.
    pub device: Device,
    /// Run directory: checkpoints, `state.json`, `metrics.jsonl`, `best/`.
    pub run_dir: PathBuf,
    /// Patterns of the parameters that train; set again after a checkpoint is loaded.
    pub trainable: Vec<String>,
    /// Patterns of the parameters a checkpoint holds (the trained ones, or `*`).
    pub saved: Vec<String>,
    /// Draw a progress bar (it hides itself when stderr is not a terminal).
    pub progress: bool,
    /// Stop, resumably, once this many epochs are complete (time-boxed sessions).
    pub epoch_limit: Option<usize>,
    /// Child-Tuning D's fixed child network, by parameter path.
    pub child_mask: Option<PathTensors>,
}

/// The last complete epoch and the history, in a run directory.
pub const STATE_FILE: &str = "state.json";
/// The best epoch's checkpoint directory.
pub const BEST_DIR: &str = "best";
/// The trained parameters in a checkpoint directory.
pub const TRAINED_FILE: &str = "trained.safetensors";

impl Trainer {
    /// A trainer that saves what trains, shows progress and applies no gradient mask.
    pub fn new(
        config: TrainConfig,
        device: Device,
        run_dir: PathBuf,
        trainable: Vec<String>,
    ) -> Self {
        Self {
            config,
            device,
            run_dir,
            saved: trainable.clone(),
            trainable,
            progress: true,
            epoch_limit: None,
            child_mask: None,
        }
    }

    /// Trains `model` and returns it as it was at the best evaluation, with the run's summary.
    /// With `resume`, a run directory holding a `state.json` continues after its last
    /// checkpoint (an epoch's end, or a `save_every` step).
    pub fn fit<T: Task, L: TaskModel<T>>(
        &self,
        model: L,
        data: &TaskData<T>,
        resume: bool,
    ) -> Result<(L, TrainSummary)> {
        let config = &self.config;
        config.check()?;
        if data.train.is_empty() || data.validation.is_empty() {
            return Err(TrainError::Invalid(
                "training needs at least one train and one validation example".into(),
            ));
        }
        if let Some(decay) = config.layer_decay
            && model.layer_rates(config.lr, decay).is_none()
        {
            return Err(TrainError::Invalid(
                "--layer-decay: this model has no per-layer rates".into(),
            ));
        }
        let groups = model.optimizer_groups();
        if config.layer_decay.is_some() && !groups.is_empty() {
            return Err(TrainError::Invalid(
                "--layer-decay: this model trains parameter groups of its own rates (M2-BERT's \
                 filters); the two do not combine"
                    .into(),
            ));
        }
        if matches!(config.child_tuning, Some(ChildTuning::D { .. })) && self.child_mask.is_none() {
            return Err(TrainError::Invalid(
                "Child-Tuning D needs its child network (estimate the Fisher information first)"
                    .into(),
            ));
        }
        std::fs::create_dir_all(&self.run_dir).map_err(|e| TrainError::io(&self.run_dir, e))?;
        let mut model = model;
        let mut optim = self.optimizer(&groups);
        let mut state = TrainState::default();
        let mut resumed_from_epoch = None;
        let state_path = self.run_dir.join(STATE_FILE);
        let checkpoints = self.run_dir.join("checkpoints");
        if resume && !state_path.is_file() && has_entries(&checkpoints) {
            // Starting again would overwrite checkpoints a repaired state.json could resume.
            return Err(TrainError::Invalid(format!(
                "{} is missing but {} holds checkpoints: the run cannot say which epoch they \
                 are; restore state.json, or start a new run in another folder",
                state_path.display(),
                checkpoints.display()
            )));
        }
        if resume && state_path.is_file() {
            state = read_json(&state_path)?;
            let dir = checkpoints.join(state.checkpoint_name());
            model = self.load_trained(model, &dir.join(TRAINED_FILE))?;
            optim = optim
                .load(dir.join("optimizer.bpk"))
                .map_err(|e| TrainError::checkpoint(dir.join("optimizer.bpk"), e.to_string()))?;
            resumed_from_epoch = Some(state.completed_epochs);
            eprintln!(
                "resuming {} after {} (step {})",
                self.run_dir.display(),
                match state.steps_in_epoch {
                    0 => format!("epoch {}", state.completed_epochs),
                    steps => format!("{steps} steps of epoch {}", state.completed_epochs + 1),
                },
                state.global_step
            );
        }

        let accumulation = config.gradient_accumulation;
        let steps_per_epoch = data
            .train
            .len()
            .div_ceil(config.batch_size)
            .div_ceil(accumulation);
        let total_steps = config.max_steps.unwrap_or(steps_per_epoch * config.epochs);
        let epochs = total_steps.div_ceil(steps_per_epoch);
        state.steps_per_epoch = steps_per_epoch;
        let warmup = (config.warmup_ratio * total_steps as f64).ceil() as usize;
        self.trim_log(&state)?;
        let mut log = self.open_log()?;
        let eval_device = self.device.clone().inner();
        let bar = self.progress_bar(total_steps as u64, state.global_step as u64);
        let mut smoothed_loss: Option<f64> = None;
        // What the next evaluation reports: loss, examples, tokens and time since the last one.
        let mut since_evaluation = Since::now();

        let last_epoch = epochs.min(self.epoch_limit.unwrap_or(usize::MAX));
        'epochs: for epoch in state.completed_epochs + 1..=last_epoch {
            if self.patience_exhausted(&state) {
                break;
            }
            let mut since_epoch = Since::now();
            self.device.seed(epoch_seed(config.seed, epoch));
            let mut order: Vec<usize> = (0..data.train.len()).collect();
            SplitMix64::new(epoch_seed(config.seed, epoch)).shuffle(&mut order);
            let batches: Vec<&[usize]> = order.chunks(config.batch_size).collect();
            let steps: Vec<&[&[usize]]> = batches.chunks(accumulation).collect();
            for step_batches in steps.iter().skip(state.steps_in_epoch) {
                if state.global_step >= total_steps {
                    break;
                }
                if config.save_every.is_some() {
                    // Dropout from the step alone, so a mid-epoch checkpoint resumes exactly.
                    self.device
                        .seed(epoch_seed(config.seed, state.global_step + (1 << 40)));
                }
                // Per-step state of the methods that have one (AdapterDrop, side-tuning's alpha),
                // drawn from the step number so a resumed run draws the same.
                model.begin_train_step(
                    state.global_step as f64 / total_steps.max(1) as f64,
                    SplitMix64::new(epoch_seed(config.seed, state.global_step)).next_u64(),
                );
                let examples_in_step: usize = step_batches.iter().map(|b| b.len()).sum();
                let mut accumulated = GradientsAccumulator::<L>::new();
                let mut step_loss = 0.0;
                let mut step_tokens = 0;
                for batch in step_batches.iter() {
                    let examples: Vec<&T::Example> = batch.iter().map(|&j| data.train[j]).collect();
                    let (loss, batch_tokens) =
                        model.batch_loss(data.task, &examples, &self.device)?;
                    let loss_value = f64::from(loss.clone().into_scalar::<f32>());
                    if !loss_value.is_finite() {
                        return Err(TrainError::Invalid(format!(
                            "the loss became {loss_value} at epoch {epoch} step {}: the usual \
                             culprit is the learning rate (--lr {}; try a tenth), else a \
                             method's scale (--alpha, --scale) or --weight-decay {} is too large",
                            state.global_step + 1,
                            config.lr,
                            config.weight_decay
                        )));
                    }
                    // Each micro-batch's mean loss weighted by its share of the step's examples:
                    // the gradient of the whole step's mean loss.
                    let share = examples.len() as f64 / examples_in_step as f64;
                    let loss = if accumulation == 1 {
                        loss
                    } else {
                        loss * share
                    };
                    let micro = GradientsParams::from_grads(loss.backward(), &model);
                    accumulated.accumulate(&model, micro);
                    step_loss += loss_value * share;
                    step_tokens += batch_tokens;
                    since_evaluation.add(loss_value, examples.len(), batch_tokens);
                    since_epoch.add(loss_value, examples.len(), batch_tokens);
                }
                let mut grads = accumulated.grads();
                if let Some(max_norm) = config.max_grad_norm {
                    clip_global_norm(&model, &mut grads, max_norm);
                }
                // After clipping, as the authors' optimizer masks what HF's Trainer clipped.
                match (config.child_tuning, &self.child_mask) {
                    (Some(ChildTuning::F { reserve }), _) => {
                        mask_gradients_randomly(&model, &mut grads, reserve);
                    }
                    (Some(ChildTuning::D { .. }), Some(masks)) => {
                        mask_gradients_fixed(&model, &mut grads, masks);
                    }
                    _ => {}
                }
                let lr = learning_rate(
                    config.lr,
                    config.decay,
                    state.global_step,
                    warmup,
                    total_steps,
                );
                let rates = match config.layer_decay {
                    Some(decay) => model.layer_rates(lr, decay),
                    None => group_rates(&groups, lr, lr / config.lr),
                };
                model.observe_gradients(&grads);
                model = match rates {
                    Some(rates) => optim.step(rates, model, grads),
                    None => optim.step(lr, model, grads),
                };
                model.end_train_step(state.global_step, total_steps);
                state.global_step += 1;
                state.steps_in_epoch += 1;
                let smoothed = smoothed_loss.map_or(step_loss, |s| 0.9 * s + 0.1 * step_loss);
                smoothed_loss = Some(smoothed);
                let tokens_per_second = since_epoch.tokens_per_second();
                bar.set_message(format!(
                    "epoch {epoch}/{epochs} | loss {smoothed:.4} | {tokens_per_second:.0} tok/s"
                ));
                bar.inc(1);
                if state.global_step % config.log_every == 0 {
                    self.write_log(
                        &mut log,
                        &LogRecord {
                            record: "step".into(),
                            epoch,
                            step: state.global_step,
                            train_loss: Some(step_loss),
                            learning_rate: Some(lr),
                            tokens_per_second: Some(
                                step_tokens as f64 / since_epoch.step_seconds(),
                            ),
                            validation: None,
                            seconds: None,
                        },
                    )?;
                }
                since_epoch.end_step();
                since_evaluation.end_step();
                let last_step = state.global_step == total_steps;
                if let Some(every) = config.eval_every
                    && (state.global_step % every == 0 || last_step)
                {
                    let evaluated = self.evaluation(
                        &model,
                        data,
                        &eval_device,
                        (epoch, &state),
                        &mut since_evaluation,
                        &bar,
                    )?;
                    self.write_log(&mut log, &evaluated.log_record())?;
                    self.keep_if_best(&model, &mut state, evaluated)?;
                    if self.patience_exhausted(&state) {
                        self.checkpoint(&model, &optim, &mut state)?;
                        break 'epochs;
                    }
                }
                if config
                    .save_every
                    .is_some_and(|every| state.global_step % every == 0)
                    && !last_step
                {
                    self.checkpoint(&model, &optim, &mut state)?;
                }
            }
            // The epoch's end (or where max_steps cut it).
            let epoch_done = state.steps_in_epoch == steps.len();
            let mut record = LogRecord {
                record: "epoch".into(),
                epoch,
                step: state.global_step,
                train_loss: Some(since_epoch.mean_loss()),
                learning_rate: None,
                tokens_per_second: Some(since_epoch.tokens_per_second()),
                validation: None,
                seconds: Some(since_epoch.seconds()),
            };
            if config.eval_every.is_none() {
                let evaluated = self.evaluation(
                    &model,
                    data,
                    &eval_device,
                    (epoch, &state),
                    &mut since_evaluation,
                    &bar,
                )?;
                record.validation = Some(evaluated.validation.clone());
                record.seconds = Some(evaluated.seconds);
                let (metric_name, metric) = evaluated.validation.primary();
                bar.suspend(|| {
                    eprintln!(
                        "epoch {epoch}/{epochs}: train loss {:.4}, validation {metric_name} {metric:.4} (loss {:.4}), {:.1} s",
                        evaluated.train_loss, evaluated.validation.loss, evaluated.seconds
                    )
                });
                self.keep_if_best(&model, &mut state, evaluated)?;
            }
            self.write_log(&mut log, &record)?;
            if epoch_done {
                state.completed_epochs = epoch;
                state.steps_in_epoch = 0;
            }
            self.checkpoint(&model, &optim, &mut state)?;
            if state.global_step >= total_steps {
                break;
            }
        }
        bar.finish_and_clear();
        if self.patience_exhausted(&state) {
            eprintln!(
                "early stop: no better validation metric for {} evaluations",
                state.epochs_without_improvement
            );
        }

        // The caller gets the best model, not the last one.
        if state
            .best_step
            .is_some_and(|best| best != state.global_step)
            || (state.best_step.is_none()
                && state
                    .best_epoch
                    .is_some_and(|best| best != state.completed_epochs))
        {
            model = self.load_trained(model, &self.run_dir.join(BEST_DIR).join(TRAINED_FILE))?;
        }
        let metric_name = state
            .history
            .last()
            .map(|r| r.validation.primary().0.to_string())
            .unwrap_or_default();
        Ok((
            model,
            TrainSummary {
                state,
                metric_name,
                peak_rss_mib: peak_rss_mib(),
                resumed_from_epoch,
            },
        ))
    }

    /// Whether early stopping's patience has run out.
    fn patience_exhausted(&self, state: &TrainState) -> bool {
        self.config
            .patience
            .is_some_and(|patience| state.epochs_without_improvement >= patience)
    }

    /// Validates `model` and makes the record of what happened since the previous evaluation.
    fn evaluation<T: Task, L: TaskModel<T>>(
        &self,
        model: &L,
        data: &TaskData<T>,
        device: &Device,
        (epoch, state): (usize, &TrainState),
        since: &mut Since,
        bar: &ProgressBar,
    ) -> Result<EpochRecord> {
        bar.set_message(format!(
            "epoch {epoch} | validating {} examples",
            data.validation.len()
        ));
        let validation = model.valid().evaluate(
            data.task,
            &data.validation,
            device,
            self.config.eval_batch_size,
        )?;
        let record = EpochRecord {
            epoch,
            step: state.global_step,
            train_loss: since.mean_loss(),
            validation,
            seconds: since.seconds(),
            train_tokens_per_second: since.tokens_per_second(),
        };
        *since = Since::now();
        Ok(record)
    }

    /// Adds `record` to the history and keeps `model` as the best one when its metric is.
    fn keep_if_best<M: Module>(
        &self,
        model: &M,
        state: &mut TrainState,
        record: EpochRecord,
    ) -> Result<()> {
        let (_, metric) = record.validation.primary();
        if state.best_metric.is_none_or(|best| metric > best) {
            state.best_metric = Some(metric);
            state.best_epoch = Some(record.epoch);
            state.best_step = Some(record.step);
            state.epochs_without_improvement = 0;
            let best = self.run_dir.join(BEST_DIR);
            save_params(model, &self.saved, &best.join(TRAINED_FILE))?;
            write_json(&self.run_dir.join("best.json"), &record)?;
        } else {
            state.epochs_without_improvement += 1;
        }
        state.seconds += record.seconds;
        state.history.push(record);
        Ok(())
    }

    fn optimizer(&self, groups: &[OptimizerGroup]) -> ModuleOptimizer {
        groups
            .iter()
            .fold(adamw(self.config.weight_decay), |optim, group| {
                let settings = adamw_settings(group.weight_decay);
                optim.with_group(param_group(&group.pattern), settings.init(), None)
            })
    }

    fn load_trained<M: Module>(&self, model: M, path: &Path) -> Result<M> {
        let (model, _) = load_params(model, path)?;
        Ok(set_trainable(model, &self.trainable).0)
    }

    /// Weights and optimizer now, as `checkpoints/epoch-N` at an epoch's end or
    /// `checkpoints/step-S` within one, then `state.json` naming it; older checkpoints go once
    /// the new one is named.
    fn checkpoint<M: Module>(
        &self,
        model: &M,
        optim: &ModuleOptimizer,
        state: &mut TrainState,
    ) -> Result<()> {
        let name = if state.steps_in_epoch == 0 {
            format!("epoch-{}", state.completed_epochs)
        } else {
            format!("step-{}", state.global_step)
        };
        let checkpoints = self.run_dir.join("checkpoints");
        let dir = checkpoints.join(&name);
        save_params(model, &self.saved, &dir.join(TRAINED_FILE))?;
        let optimizer_path = dir.join("optimizer.bpk");
        optim
            .save(&optimizer_path)
            .map_err(|e| TrainError::checkpoint(optimizer_path.clone(), e.to_string()))?;
        state.checkpoint = Some(name.clone());
        write_json(&self.run_dir.join(STATE_FILE), state)?;
        let entries =
            std::fs::read_dir(&checkpoints).map_err(|e| TrainError::io(&checkpoints, e))?;
        for entry in entries.flatten() {
            let old = entry.path();
            if old.is_dir() && entry.file_name().to_string_lossy() != name {
                std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
            }
        }
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.run_dir.join("metrics.jsonl")
    }

    fn csv_path(&self) -> PathBuf {
        self.run_dir.join("metrics.csv")
    }

    /// Keeps the records of `metrics.jsonl` up to `state` (its last checkpoint's step), so a
    /// resumed run repeats none, and writes `metrics.csv` again from them; a fresh run starts
    /// empty logs.
    fn trim_log(&self, state: &TrainState) -> Result<()> {
        let path = self.log_path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let kept: Vec<LogRecord> = text
            .lines()
            .filter_map(|line| serde_json::from_str::<LogRecord>(line).ok())
            .filter(|record| record.step <= state.global_step)
            .collect();
        let lines: String = kept
            .iter()
            .filter_map(|record| serde_json::to_string(record).ok())
            .map(|line| format!("{line}\n"))
            .collect();
        if lines != text {
            write_atomically(&path, lines.as_bytes())?;
        }
        let mut csv = csv::Writer::from_writer(Vec::new());
        let csv_error = |e: csv::Error| TrainError::Invalid(format!("writing metrics.csv: {e}"));
        csv.write_record(CSV_COLUMNS).map_err(csv_error)?;
        for record in &kept {
            csv.write_record(record.csv_row()).map_err(csv_error)?;
        }
        let bytes = csv
            .into_inner()
            .map_err(|e| TrainError::Invalid(format!("writing metrics.csv: {e}")))?;
        write_atomically(&self.csv_path(), &bytes)
    }

    fn open_log(&self) -> Result<Logs> {
        let open = |path: PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| TrainError::io(&path, e))
        };
        Ok(Logs {
            json: open(self.log_path())?,
            csv: open(self.csv_path())?,
        })
    }

    /// Appends `record` to `metrics.jsonl` and `metrics.csv`.
    fn write_log(&self, logs: &mut Logs, record: &LogRecord) -> Result<()> {
        let line = serde_json::to_string(record)
            .map_err(|e| TrainError::Invalid(format!("a metrics record: {e}")))?;
        writeln!(logs.json, "{line}").map_err(|e| TrainError::io(&self.log_path(), e))?;
        let mut csv = csv::Writer::from_writer(Vec::new());
        csv.write_record(record.csv_row())
            .map_err(|e| TrainError::Invalid(format!("writing metrics.csv: {e}")))?;
        let row = csv
            .into_inner()
            .map_err(|e| TrainError::Invalid(format!("writing metrics.csv: {e}")))?;
        logs.csv
            .write_all(&row)
            .map_err(|e| TrainError::io(&self.csv_path(), e))
    }

    /// One bar for the whole run: steps done of `total`, the run's ETA, and in its message the
    /// epoch, a smoothed loss and the throughput (or what is being validated).
    fn progress_bar(&self, total: u64, done: u64) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("[{bar:30}] {pos}/{len} steps | {msg} | ETA {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_position(done);
        bar.reset_eta();
        bar
    }
}

/// The two logs a run appends to.
struct Logs {
    json: std::fs::File,
    csv: std::fs::File,
}

/// Loss, examples, tokens and time since a point of the run (the previous evaluation, an
/// epoch's start).
struct Since {
    started: Instant,
    step_started: Instant,
    train_seconds: f64,
    loss_sum: f64,
    examples: usize,
    tokens: usize,
}

impl Since {
    fn now() -> Self {
        Self {
            started: Instant::now(),
            step_started: Instant::now(),
            train_seconds: 0.0,
            loss_sum: 0.0,
            examples: 0,
            tokens: 0,
        }
    }

    /// A micro-batch of `examples` with mean loss `loss` and `tokens` tokens.
    fn add(&mut self, loss: f64, examples: usize, tokens: usize) {
        self.loss_sum += loss * examples as f64;
        self.examples += examples;
        self.tokens += tokens;
    }

    /// The optimizer step is done: its time counts as training time.
    fn end_step(&mut self) {
        self.train_seconds += self.step_started.elapsed().as_secs_f64();
        self.step_started = Instant::now();
    }

    /// Seconds in the current step so far.
    fn step_seconds(&self) -> f64 {
        self.step_started.elapsed().as_secs_f64()
    }

    fn mean_loss(&self) -> f64 {
        self.loss_sum / self.examples.max(1) as f64
    }

    /// Training tokens per second of training time.
    fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.train_seconds.max(1e-9)
    }

    /// Wall time since the start, training and evaluation.
    fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

impl EpochRecord {
    /// The evaluation as a `metrics.jsonl` record.
    fn log_record(&self) -> LogRecord {
        LogRecord {
            record: "evaluation".into(),
            epoch: self.epoch,
            step: self.step,
            train_loss: Some(self.train_loss),
            learning_rate: None,
            tokens_per_second: Some(self.train_tokens_per_second),
            validation: Some(self.validation.clone()),
            seconds: Some(self.seconds),
        }
    }
}

/// AdamW as the trainer uses it (and HF's Trainer): `weight_decay` on weights, none on biases
/// and layer norms. kiln-kernels' fused update on the CPU, Burn's `AdamW` elsewhere; the state
/// is Burn's `AdamWState` either way, so checkpoints move between them.
pub fn adamw(weight_decay: f64) -> ModuleOptimizer {
    let adamw = adamw_settings(weight_decay);
    let no_decay =
        ParamGroup::from_regex(r"(bias|beta|gamma)$").expect("a fixed, valid regular expression");
    ModuleOptimizer::from(adamw.init()).with_group(
        no_decay,
        adamw.with_weight_decay(0.0).init(),
        None,
    )
}

/// The trainer's AdamW settings (HF's epsilon) with `weight_decay`.
fn adamw_settings(weight_decay: f64) -> FusedAdamWConfig {
    FusedAdamWConfig::default()
        .with_epsilon(1e-8)
        .with_weight_decay(weight_decay as f32)
}

/// The groups' rates at this step: each group's peak rate scaled by `factor`, the schedule's
/// share of the base peak now; `lr` elsewhere. `None` without groups.
fn group_rates(groups: &[OptimizerGroup], lr: f64, factor: f64) -> Option<ModuleLearningRate> {
    if groups.is_empty() {
        return None;
    }
    let mut scheduler = groups.iter().fold(
        ModuleLrScheduler::new(ConstantLr::from(lr)),
        |scheduler, group| {
            scheduler.with_group(
                param_group(&group.pattern),
                ConstantLr::from(group.lr * factor),
            )
        },
    );
    Some(scheduler.step())
}

fn param_group(pattern: &str) -> ParamGroup {
    ParamGroup::from_regex(pattern)
        .unwrap_or_else(|e| panic!("a backbone's parameter group `{pattern}` is invalid: {e:?}"))
}

fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(epoch as u64)
}

/// `path` parsed as JSON into `T`, with the path in the error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))
}

/// `value` as pretty JSON at `path`, written atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
    write_atomically(path, text.as_bytes())
}
