//! [`TaskModel`]: what the training loop asks of a model on a [`Task`]: the loss of a batch of
//! the task's examples, an evaluation, and optional hooks. The text classifier on text tasks
//! ([`crate::text_task`]) and on language modelling ([`crate::causal_lm`]), the Frozen
//! Pretrained Transformer and the from-scratch GPT-2 each implement it, so one loop (schedule,
//! clipping, Child-Tuning, checkpoints, resume, logs) trains them all. A model may implement it
//! for several tasks. (Burn's own `Learner` is a different thing: its training loop's state.)

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::tensor::{Device, Tensor};

use kiln_models::OptimizerGroup;

use crate::error::Result;
use crate::metrics::Metrics;

/// What batches are made with besides the examples (for text: tokenizer and task kind), and
/// what one example is.
pub trait Task {
    /// One example.
    type Example;
}

/// A model the [`Trainer`](crate::trainer::Trainer) can train on task `T`.
pub trait TaskModel<T: Task>: Module + Sized {
    /// The training loss of one batch on the autodiff `device`, and how many tokens it held.
    fn batch_loss(
        &self,
        task: &T,
        examples: &[&T::Example],
        device: &Device,
    ) -> Result<(Tensor<1>, usize)>;

    /// Loss and metrics of this model (a validation snapshot) on `examples`.
    fn evaluate(
        &self,
        task: &T,
        examples: &[&T::Example],
        device: &Device,
        batch_size: usize,
    ) -> Result<Metrics>;

    /// Per-step state of the methods that have one (AdapterDrop's depth, side-tuning's alpha),
    /// from the share of training done and a draw fixed by the step number.
    fn begin_train_step(&mut self, _progress: f64, _draw: u64) {}

    /// Sees a step's gradients before the optimizer consumes them (AdaLoRA keeps its factors').
    fn observe_gradients(&mut self, _grads: &GradientsParams) {}

    /// After the optimizer's step `step` (0-based) of `total_steps` (AdaLoRA allocates ranks).
    fn end_train_step(&mut self, _step: usize, _total_steps: usize) {}

    /// Per-parameter learning rates for layer-wise decay; `None` where the model has no layer
    /// structure to decay over.
    fn layer_rates(&self, _lr: f64, _decay: f64) -> Option<ModuleLearningRate> {
        None
    }

    /// Parameters trained with their own peak rate and weight decay (M2-BERT's filters, as its
    /// reference trains them); empty for most models.
    fn optimizer_groups(&self) -> Vec<OptimizerGroup> {
        Vec::new()
    }
}
