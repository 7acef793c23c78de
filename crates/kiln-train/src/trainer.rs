//! The training loop: AdamW (no decay on biases and layer norms, as HF's Trainer) with warm-up
//! then decay (optionally decayed layer by layer), global-norm clipping, then Child-Tuning's
//! gradient mask if asked for, evaluation after every epoch, early stopping and best-checkpoint
//! keeping on the validation metric, metrics as JSON lines, and resume from the last completed
//! epoch.
//!
//! Run directory:
//! - `metrics.jsonl`: one `{"record": "step", ...}` line per logged step and one
//!   `{"record": "epoch", ...}` line per epoch;
//! - `checkpoints/epoch-N/{trained.safetensors, optimizer.bpk}` and `state.json`, which names the
//!   last complete epoch and is written last (atomically): it is what a resume trusts;
//! - `best/trained.safetensors` and `best.json`: the epoch with the best validation metric.
//!
//! Reproducibility: the device is re-seeded and the training order reshuffled from `seed` and the
//! epoch number at the start of every epoch, so the same seed gives the same losses, and a resumed
//! run continues exactly as the uninterrupted one would have.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ParamGroup};
use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::optim::lr_scheduler::module_lr_scheduler::{ModuleLearningRate, ModuleLrScheduler};
use burn::optim::{GradientsParams, ModuleOptimizer};
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
use crate::task_model::TaskModel;
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
    /// Write a step record every this many steps.
    pub log_every: usize,
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
            return refuse("--patience 0: wait at least one epoch".into());
        }
        if self.log_every == 0 {
            return refuse("log_every must be at least 1".into());
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
            child_tuning: None,
            layer_decay: None,
        }
    }
}

/// Train and validation examples of one task.
pub struct TaskData<'a, L: TaskModel> {
    /// What batches are made with.
    pub task: &'a L::Task,
    /// Training examples.
    pub train: Vec<&'a L::Example>,
    /// Validation examples.
    pub validation: Vec<&'a L::Example>,
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Mean training loss over its steps.
    pub train_loss: f64,
    /// Validation metrics after it.
    pub validation: Metrics,
    /// Wall time of training and validation.
    pub seconds: f64,
    /// Training tokens per second.
    pub train_tokens_per_second: f64,
}

/// What `state.json` holds: enough to resume after the last complete epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs done.
    pub completed_epochs: usize,
    /// Optimizer steps done.
    pub global_step: usize,
    /// The epoch with the best validation metric so far.
    pub best_epoch: Option<usize>,
    /// That metric.
    pub best_metric: Option<f64>,
    /// Epochs since it last improved (for early stopping).
    pub epochs_without_improvement: usize,
    /// Every epoch's record.
    pub history: Vec<EpochRecord>,
}

/// How a fit ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// The state after the last epoch.
    pub state: TrainState,
    /// The validation metric best-epoch keeping follows.
    pub metric_name: String,
    /// Peak resident memory of the process.
    pub peak_rss_mib: Option<f64>,
    /// The epoch a resumed fit continued after.
    pub resumed_from_epoch: Option<usize>,
}

impl TrainSummary {
    /// Mean wall time of the epochs run (training and validation).
    pub fn seconds_per_epoch(&self) -> f64 {
        let history = &self.state.history;
        history.iter().map(|r| r.seconds).sum::<f64>() / history.len().max(1) as f64
    }

    /// The best epoch's validation metrics.
    pub fn best_validation(&self) -> Option<&Metrics> {
        let best = self.state.best_epoch?;
        self.state
            .history
            .iter()
            .find(|r| r.epoch == best)
            .map(|r| &r.validation)
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

    /// Trains `model` and returns it as it was at the best epoch, with the run's summary. With
    /// `resume`, a run directory holding a `state.json` continues after its last complete epoch.
    pub fn fit<L: TaskModel>(
        &self,
        model: L,
        data: &TaskData<L>,
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
            let dir = self.epoch_dir(state.completed_epochs);
            model = self.load_trained(model, &dir.join(TRAINED_FILE))?;
            optim = optim
                .load(dir.join("optimizer.bpk"))
                .map_err(|e| TrainError::checkpoint(dir.join("optimizer.bpk"), e.to_string()))?;
            resumed_from_epoch = Some(state.completed_epochs);
            eprintln!(
                "resuming {} after epoch {}",
                self.run_dir.display(),
                state.completed_epochs
            );
        }

        let steps_per_epoch = data.train.len().div_ceil(config.batch_size);
        let total_steps = steps_per_epoch * config.epochs;
        let warmup = (config.warmup_ratio * total_steps as f64).ceil() as usize;
        self.trim_log(&state)?;
        let mut log = self.open_log()?;
        let eval_device = self.device.clone().inner();

        let last_epoch = config.epochs.min(self.epoch_limit.unwrap_or(usize::MAX));
        for epoch in state.completed_epochs + 1..=last_epoch {
            if let Some(patience) = config.patience
                && state.epochs_without_improvement >= patience
            {
                eprintln!("early stop: no better validation metric for {patience} epochs");
                break;
            }
            let started = Instant::now();
            self.device.seed(epoch_seed(config.seed, epoch));
            let mut order: Vec<usize> = (0..data.train.len()).collect();
            SplitMix64::new(epoch_seed(config.seed, epoch)).shuffle(&mut order);

            let bar = self.progress_bar(epoch, steps_per_epoch as u64);
            let (mut loss_sum, mut tokens) = (0.0, 0usize);
            for (i, chunk) in order.chunks(config.batch_size).enumerate() {
                let examples: Vec<&L::Example> = chunk.iter().map(|&j| data.train[j]).collect();
                // Per-step state of the methods that have one (AdapterDrop, side-tuning's alpha),
                // drawn from the step number so a resumed run draws the same.
                model.begin_train_step(
                    state.global_step as f64 / total_steps.max(1) as f64,
                    SplitMix64::new(epoch_seed(config.seed, state.global_step)).next_u64(),
                );
                let (loss, batch_tokens) = model.batch_loss(data.task, &examples, &self.device)?;
                tokens += batch_tokens;
                let loss_value = f64::from(loss.clone().into_scalar::<f32>());
                if !loss_value.is_finite() {
                    return Err(TrainError::Invalid(format!(
                        "the loss became {loss_value} at epoch {epoch} step {}: the usual culprit \
                         is the learning rate (--lr {}; try a tenth), else a method's scale \
                         (--alpha, --scale) or --weight-decay {} is too large",
                        i + 1,
                        config.lr,
                        config.weight_decay
                    )));
                }
                let mut grads = GradientsParams::from_grads(loss.backward(), &model);
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
                loss_sum += loss_value * examples.len() as f64;
                let tokens_per_second = tokens as f64 / started.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "loss {loss_value:.4} | {tokens_per_second:.0} tok/s"
                ));
                bar.inc(1);
                if state.global_step % config.log_every.max(1) == 0 {
                    let record = serde_json::json!({
                        "record": "step", "epoch": epoch, "step": state.global_step,
                        "loss": loss_value, "lr": lr, "tokens_per_second": tokens_per_second,
                    });
                    writeln!(log, "{record}").map_err(|e| TrainError::io(&self.log_path(), e))?;
                }
            }
            bar.finish_and_clear();
            let train_seconds = started.elapsed().as_secs_f64();

            let validation = model.valid().evaluate(
                data.task,
                &data.validation,
                &eval_device,
                config.eval_batch_size,
            )?;
            let record = EpochRecord {
                epoch,
                train_loss: loss_sum / data.train.len() as f64,
                validation,
                seconds: started.elapsed().as_secs_f64(),
                train_tokens_per_second: tokens as f64 / train_seconds,
            };
            let (metric_name, metric) = record.validation.primary();
            eprintln!(
                "epoch {epoch}/{}: train loss {:.4}, validation {metric_name} {metric:.4} (loss {:.4}), {:.1} s",
                config.epochs, record.train_loss, record.validation.loss, record.seconds
            );
            let line = serde_json::json!({ "record": "epoch", "data": &record });
            writeln!(log, "{line}").map_err(|e| TrainError::io(&self.log_path(), e))?;

            if state.best_metric.is_none_or(|best| metric > best) {
                state.best_metric = Some(metric);
                state.best_epoch = Some(epoch);
                state.epochs_without_improvement = 0;
                let best = self.run_dir.join(BEST_DIR);
                save_params(&model, &self.saved, &best.join(TRAINED_FILE))?;
                write_json(&self.run_dir.join("best.json"), &record)?;
            } else {
                state.epochs_without_improvement += 1;
            }
            state.completed_epochs = epoch;
            state.history.push(record);
            self.save_epoch(&model, &optim, &state)?;
        }

        // The caller gets the best model, not the last one.
        if state
            .best_epoch
            .is_some_and(|best| best != state.completed_epochs)
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

    fn epoch_dir(&self, epoch: usize) -> PathBuf {
        self.run_dir
            .join("checkpoints")
            .join(format!("epoch-{epoch}"))
    }

    /// Weights and optimizer of `state.completed_epochs`, then `state.json` pointing at them; the
    /// previous epoch's directory goes once the new one is named.
    fn save_epoch<M: Module>(
        &self,
        model: &M,
        optim: &ModuleOptimizer,
        state: &TrainState,
    ) -> Result<()> {
        let dir = self.epoch_dir(state.completed_epochs);
        save_params(model, &self.saved, &dir.join(TRAINED_FILE))?;
        let optimizer_path = dir.join("optimizer.bpk");
        optim
            .save(&optimizer_path)
            .map_err(|e| TrainError::checkpoint(optimizer_path.clone(), e.to_string()))?;
        write_json(&self.run_dir.join(STATE_FILE), state)?;
        for epoch in 1..state.completed_epochs {
            let old = self.epoch_dir(epoch);
            if old.is_dir() {
                std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
            }
        }
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.run_dir.join("metrics.jsonl")
    }

    /// Keeps the records of `metrics.jsonl` up to `state` (its last complete epoch and step), so
    /// a resumed run repeats none; a fresh run starts an empty log.
    fn trim_log(&self, state: &TrainState) -> Result<()> {
        let path = self.log_path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|line| {
                let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
                    return false;
                };
                match record["record"].as_str() {
                    Some("step") => record["step"]
                        .as_u64()
                        .is_some_and(|s| s as usize <= state.global_step),
                    Some("epoch") => record["data"]["epoch"]
                        .as_u64()
                        .is_some_and(|e| e as usize <= state.completed_epochs),
                    _ => false,
                }
            })
            .map(|line| format!("{line}\n"))
            .collect();
        if kept.len() != text.len() {
            write_atomically(&path, kept.as_bytes())?;
        }
        Ok(())
    }

    fn open_log(&self) -> Result<std::fs::File> {
        let path = self.log_path();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))
    }

    fn progress_bar(&self, epoch: usize, steps: u64) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(steps);
        if let Ok(style) =
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(epoch.to_string());
        bar
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
