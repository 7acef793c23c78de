//! What the training loop asks of a model: the loss of a batch of its examples, an evaluation,
//! and two optional hooks. The text classifier, the Frozen Pretrained Transformer and the causal
//! language model each implement it, so one loop (schedule, clipping, Child-Tuning, checkpoints,
//! resume, logs) trains them all.

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::tensor::{Device, Tensor};

use kiln_data::{TaskKind, TextExample, make_batch};
use kiln_models::{SequenceClassifier, TextTokenizer};

use crate::error::Result;
use crate::metrics::Metrics;
use crate::schedule::layer_decayed;
use crate::trainer::{evaluate, task_loss};

pub trait Learner: Module + Sized {
    /// What batches are made with besides the examples (for text: tokenizer and task kind).
    type Task;
    type Example;

    /// The training loss of one batch on the autodiff `device`, and how many tokens it held.
    fn batch_loss(
        &self,
        task: &Self::Task,
        examples: &[&Self::Example],
        device: &Device,
    ) -> Result<(Tensor<1>, usize)>;

    /// Loss and metrics of this model (a validation snapshot) on `examples`.
    fn evaluate(
        &self,
        task: &Self::Task,
        examples: &[&Self::Example],
        device: &Device,
        batch_size: usize,
    ) -> Result<Metrics>;

    /// Per-step state of the methods that have one (AdapterDrop's depth, side-tuning's alpha),
    /// from the share of training done and a draw fixed by the step number.
    fn begin_train_step(&mut self, _progress: f64, _draw: u64) {}

    /// Per-parameter learning rates for layer-wise decay; `None` where the model has no layer
    /// structure to decay over.
    fn layer_rates(&self, _lr: f64, _decay: f64) -> Option<ModuleLearningRate> {
        None
    }
}

/// A text task as batches need it.
#[derive(Clone)]
pub struct TextTask {
    pub tokenizer: TextTokenizer,
    pub kind: TaskKind,
}

impl Learner for SequenceClassifier {
    type Task = TextTask;
    type Example = TextExample;

    fn batch_loss(
        &self,
        task: &TextTask,
        examples: &[&TextExample],
        device: &Device,
    ) -> Result<(Tensor<1>, usize)> {
        let batch = make_batch(&task.tokenizer, examples)?;
        let tokens = batch.encoded.batch * batch.encoded.seq;
        let outputs = self.forward(batch.encoded.bert_input(device));
        Ok((
            task_loss(outputs, &batch.targets, &task.kind, device),
            tokens,
        ))
    }

    fn evaluate(
        &self,
        task: &TextTask,
        examples: &[&TextExample],
        device: &Device,
        batch_size: usize,
    ) -> Result<Metrics> {
        evaluate(
            self,
            &task.tokenizer,
            examples,
            &task.kind,
            device,
            batch_size,
        )
    }

    fn begin_train_step(&mut self, progress: f64, draw: u64) {
        SequenceClassifier::begin_train_step(self, progress, draw);
    }

    fn layer_rates(&self, lr: f64, decay: f64) -> Option<ModuleLearningRate> {
        Some(layer_decayed(self, lr, decay))
    }
}
