//! Child-Tuning (Xu et al. 2021, "Raise a Child in Large Language Model: Towards Effective and
//! Generalizable Fine-tuning", EMNLP; the authors' ChildTuning code in AliceMind): between
//! backward and the optimizer step, only a "child network" of the parameters gets its gradient.
//!
//! - **F** (task-free): every step draws a fresh Bernoulli(`reserve`) mask per gradient element
//!   of every trainable parameter; surviving entries are scaled by `1 / reserve`, so the
//!   expected gradient is unchanged.
//! - **D** (task-driven): before training, the diagonal Fisher information of the task loss (the
//!   mean over one epoch of training batches of the squared gradient, each parameter's gradient
//!   first clipped to norm `max_grad_norm` on its own, as `calculate_fisher` in the authors'
//!   `ChildTuningD` does) is estimated for the parameters of the encoder layers only (the
//!   authors rank `'layer' in name`); the entries at or above its `(1 - reserve)` quantile form
//!   the child network, fixed for the whole run. Other gradients of the encoder layers are
//!   zeroed (no rescaling, as the authors do); embeddings, pooler and head train freely.
//!
//! The Fisher estimate saves to safetensors (keyed by parameter path) and loads back, so one
//! pass serves several runs.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

use kiln_models::SequenceClassifier;
use kiln_models::paths::{ParamVisitor, visit_params};

use crate::checkpoint::{f32_bytes, f32_values, write_f32_tensors};
use crate::error::{Result, TrainError};
use crate::task_model::{Task, TaskModel};

/// Which Child-Tuning variant, with its reserve share `p`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum ChildTuning {
    /// Child-Tuning F: a fresh random mask each step keeping share `reserve`.
    F {
        /// The share `p` kept.
        reserve: f64,
    },
    /// Child-Tuning D: a fixed mask of the share `reserve` with the highest Fisher information.
    D {
        /// The share `p` kept.
        reserve: f64,
    },
}

impl ChildTuning {
    /// The share `p` of the gradients kept.
    pub fn reserve(&self) -> f64 {
        match self {
            Self::F { reserve } | Self::D { reserve } => *reserve,
        }
    }

    /// Refuses a reserve outside (0, 1].
    pub fn check(&self) -> Result<()> {
        let reserve = self.reserve();
        if !(reserve > 0.0 && reserve <= 1.0) {
            return Err(TrainError::Invalid(format!(
                "--reserve {reserve}: Child-Tuning keeps a share in (0, 1] of the gradients"
            )));
        }
        Ok(())
    }
}

/// Child-Tuning F: a fresh Bernoulli(`reserve`) mask on every gradient, survivors `× 1/reserve`.
pub fn mask_gradients_randomly<M: Module>(model: &M, grads: &mut GradientsParams, reserve: f64) {
    model.visit(&mut RandomMask { grads, reserve });
}

struct RandomMask<'a> {
    grads: &'a mut GradientsParams,
    reserve: f64,
}

impl ModuleVisitor for RandomMask<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            let keep = grad.random_like(Distribution::Bernoulli(self.reserve));
            self.grads
                .register::<D>(param.id, grad * keep * (1.0 / self.reserve));
        }
    }
}

/// Per backbone parameter path, a flat tensor of values (Fisher information, or a 0/1 mask).
#[derive(Debug, Clone, Default)]
pub struct PathTensors {
    /// The tensors by parameter path.
    pub values: HashMap<String, Tensor<1>>,
}

impl PathTensors {
    /// Entries over all paths.
    pub fn num_elements(&self) -> usize {
        self.values.values().map(|t| t.dims()[0]).sum()
    }

    /// Writes the tensors as safetensors keyed by path.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut names: Vec<&String> = self.values.keys().collect();
        names.sort();
        let data: Vec<(&str, [usize; 1], Vec<u8>)> = names
            .into_iter()
            .map(|name| {
                let floats: Vec<f32> = self.values[name]
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .map_err(|e| TrainError::Invalid(format!("tensor `{name}`: {e:?}")))?;
                Ok((name.as_str(), [floats.len()], f32_bytes(&floats)))
            })
            .collect::<Result<_>>()?;
        let tensors = data
            .iter()
            .map(|(name, shape, bytes)| (*name, shape.as_slice(), bytes.as_slice()));
        write_f32_tensors(path, tensors, None)
    }

    /// Reads tensors written by [`PathTensors::save`] onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let file = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
        let mut values = HashMap::new();
        for (name, view) in file.tensors() {
            if view.dtype() != Dtype::F32 || view.shape().len() != 1 {
                return Err(TrainError::checkpoint(
                    path,
                    format!("tensor `{name}` is not a flat F32 tensor"),
                ));
            }
            let floats = f32_values(view.data());
            let len = floats.len();
            values.insert(
                name,
                Tensor::from_data(TensorData::new(floats, [len]), device),
            );
        }
        Ok(Self { values })
    }

    /// Child-Tuning D's child network: 1 where the Fisher information is at or above its
    /// `(1 - reserve)` quantile over all entries, 0 elsewhere.
    pub fn top_share_mask(&self, reserve: f64) -> Result<Self> {
        let mut all: Vec<f32> = Vec::with_capacity(self.num_elements());
        for tensor in self.values.values() {
            let floats = tensor
                .clone()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| {
                    TrainError::Invalid(format!("cannot read the Fisher values: {e:?}"))
                })?;
            all.extend(floats);
        }
        if all.is_empty() {
            return Err(TrainError::Invalid(
                "Child-Tuning D found no trainable backbone parameter to mask".into(),
            ));
        }
        all.sort_by(f32::total_cmp);
        // numpy's `percentile` with linear interpolation, as the authors compute the threshold.
        let position = (1.0 - reserve) * (all.len() - 1) as f64;
        let (low, high) = (position.floor() as usize, position.ceil() as usize);
        let fraction = (position - low as f64) as f32;
        let threshold = all[low] + (all[high] - all[low]) * fraction;
        let values = self
            .values
            .iter()
            .map(|(path, fisher)| {
                let mask = fisher.clone().greater_equal_elem(threshold).float();
                (path.clone(), mask)
            })
            .collect();
        Ok(Self { values })
    }
}

/// Child-Tuning D: multiplies each backbone gradient by its fixed mask.
pub fn mask_gradients_fixed<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    masks: &PathTensors,
) {
    visit_params(model, &mut FixedMask { grads, masks });
}

struct FixedMask<'a> {
    grads: &'a mut GradientsParams,
    masks: &'a PathTensors,
}

impl ParamVisitor for FixedMask<'_> {
    fn visit<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
        let Some(mask) = self.masks.values.get(path) else {
            return;
        };
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            let shape = grad.shape();
            self.grads
                .register::<D>(param.id, grad * mask.clone().reshape(shape));
        }
    }
}

/// Path prefixes of `model`'s encoder layers (`bert.layers.3.`): what Child-Tuning D ranks.
pub fn encoder_layer_prefixes(model: &SequenceClassifier) -> Vec<String> {
    (0..model.num_layers())
        .map(|i| format!("{}.", model.layer_path(i)))
        .collect()
}

/// How [`estimate_fisher`] ranks.
#[derive(Debug, Clone)]
pub struct FisherSettings {
    /// Path prefixes of the ranked parameters (the encoder layers: `bert.layers.0.`, ...).
    pub ranked: Vec<String>,
    /// Each parameter's gradient is clipped to this norm on its own before squaring (the
    /// authors clip with `max_grad_norm`); `None` leaves it.
    pub clip_each: Option<f64>,
    /// Batch size of the pass.
    pub batch_size: usize,
    /// Batches used (all, one epoch, when `None`).
    pub batches: Option<usize>,
    /// Show a progress bar.
    pub progress: bool,
}

/// The diagonal Fisher information of `model`'s task loss for every trainable parameter whose
/// path starts with one of `settings.ranked`: the mean over the training batches of the squared
/// (clipped) gradient. Any [`TaskModel`] works: the text classifier, FPT, the causal LM. `model`
/// sits on an autodiff `device`; the result lives on its inner device.
pub fn estimate_fisher<T: Task, M: TaskModel<T>>(
    model: &M,
    task: &T,
    examples: &[&T::Example],
    device: &Device,
    settings: &FisherSettings,
) -> Result<PathTensors> {
    let FisherSettings {
        ranked,
        clip_each,
        batch_size,
        batches,
        progress,
    } = settings;
    let (batch_size, batches, progress) = (*batch_size, *batches, *progress);
    let chunks: Vec<&[&T::Example]> = examples
        .chunks(batch_size.max(1))
        .take(batches.unwrap_or(usize::MAX))
        .collect();
    let bar = if progress {
        let bar = ProgressBar::new(chunks.len() as u64);
        if let Ok(style) = ProgressStyle::with_template("Fisher [{bar:30}] {pos}/{len} ({eta})") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut sums = PathTensors::default();
    for chunk in &chunks {
        let (loss, _) = model.batch_loss(task, chunk, device)?;
        let grads = GradientsParams::from_grads(loss.backward(), model);
        visit_params(
            model,
            &mut SquaredGradients {
                grads: &grads,
                ranked,
                clip_each: *clip_each,
                sums: &mut sums,
            },
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    let count = chunks.len().max(1) as f64;
    for value in sums.values.values_mut() {
        *value = value.clone() / count;
    }
    Ok(sums)
}

struct SquaredGradients<'a> {
    grads: &'a GradientsParams,
    ranked: &'a [String],
    clip_each: Option<f64>,
    sums: &'a mut PathTensors,
}

impl ParamVisitor for SquaredGradients<'_> {
    fn visit<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
        if !self.ranked.iter().any(|prefix| path.starts_with(prefix)) {
            return;
        }
        let Some(mut grad) = self.grads.get::<D>(param.id) else {
            return;
        };
        if let Some(max_norm) = self.clip_each {
            // `torch.nn.utils.clip_grad_norm_` on this one tensor.
            let norm = f64::from(
                grad.clone()
                    .powi_scalar(2)
                    .sum()
                    .sqrt()
                    .into_scalar::<f32>(),
            );
            let factor = max_norm / (norm + 1e-6);
            if factor < 1.0 {
                grad = grad * factor;
            }
        }
        let len = grad.shape().num_elements();
        let square = grad.powi_scalar(2).reshape([len]);
        let entry = self.sums.values.entry(path.to_string());
        entry
            .and_modify(|sum| *sum = sum.clone() + square.clone())
            .or_insert(square);
    }
}
