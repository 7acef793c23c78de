//! What the training loop asks of a model: the loss of a batch of its examples, an evaluation,
//! and two optional hooks. The text classifier, the Frozen Pretrained Transformer and the causal
//! language model each implement it, so one loop (schedule, clipping, Child-Tuning, checkpoints,
//! resume, logs) trains them all.

use std::cell::RefCell;
use std::collections::HashMap;

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::tensor::{Device, Int, Tensor, TensorData};

use kiln_data::{Target, TaskKind, TextExample, make_batch};
use kiln_models::{FrozenCut, SequenceClassifier, TextTokenizer, TokenStates};

use crate::error::{Result, TrainError};
use crate::metrics::Metrics;
use crate::schedule::layer_decayed;
use crate::trainer::{evaluate_outputs, task_loss};

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
    /// The frozen bottom's outputs, for methods that train only above it.
    pub features: Option<FeatureCache>,
}

impl TextTask {
    pub fn new(tokenizer: TextTokenizer, kind: TaskKind) -> Self {
        Self {
            tokenizer,
            kind,
            features: None,
        }
    }

    /// Computes the frozen part below `cut` once per example and reuses it (see
    /// [`FeatureCache`]).
    pub fn with_feature_cache(mut self, cut: FrozenCut) -> Self {
        self.features = Some(FeatureCache::new(cut));
        self
    }

    /// The model's outputs on `examples` (through the cache when there is one) and the tokens
    /// they stand for.
    fn outputs(
        &self,
        model: &SequenceClassifier,
        examples: &[&TextExample],
        device: &Device,
    ) -> Result<(Tensor<2>, usize)> {
        match &self.features {
            Some(cache) => cache.outputs(model, &self.tokenizer, examples, device),
            None => {
                let batch = make_batch(&self.tokenizer, examples)?;
                let tokens = batch.encoded.batch * batch.encoded.seq;
                Ok((model.forward(batch.encoded.bert_input(device)), tokens))
            }
        }
    }
}

/// The frozen bottom's outputs per example (the head's input, or the token states below a
/// layer), computed once without dropout and reused in every later epoch: linear-probe, mlp-k
/// and partial-k then skip their frozen layers after the first epoch. Dropout in the frozen
/// layers is off (it would be another sample every epoch otherwise); trained layers keep theirs.
///
/// Rows are keyed by the example's address, which stays fixed while a fit borrows the task's
/// examples, and hold only the real tokens' states: the layers above a BERT or GPT-2 bottom
/// never let a real token see padding, so rows re-padded into any batch give the same outputs.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    cut: FrozenCut,
    rows: RefCell<HashMap<usize, CachedRow>>,
}

#[derive(Debug, Clone)]
struct CachedRow {
    /// `positions x width` values (one position for the head's input).
    values: Vec<f32>,
    positions: usize,
    /// Real tokens the bottom read (what the row stands for in tokens per second).
    tokens: usize,
}

impl FeatureCache {
    pub fn new(cut: FrozenCut) -> Self {
        Self {
            cut,
            rows: RefCell::new(HashMap::new()),
        }
    }

    /// Examples cached so far.
    pub fn len(&self) -> usize {
        self.rows.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory the cached rows take.
    pub fn bytes(&self) -> usize {
        let rows = self.rows.borrow();
        rows.values().map(|r| 4 * r.values.len()).sum()
    }

    fn key(example: &TextExample) -> usize {
        std::ptr::from_ref(example) as usize
    }

    fn outputs(
        &self,
        model: &SequenceClassifier,
        tokenizer: &TextTokenizer,
        examples: &[&TextExample],
        device: &Device,
    ) -> Result<(Tensor<2>, usize)> {
        let missing: Vec<&TextExample> = {
            let rows = self.rows.borrow();
            examples
                .iter()
                .copied()
                .filter(|e| !rows.contains_key(&Self::key(e)))
                .collect()
        };
        if !missing.is_empty() {
            self.compute(model, tokenizer, &missing, device)?;
        }
        let rows = self.rows.borrow();
        let rows: Vec<&CachedRow> = examples.iter().map(|e| &rows[&Self::key(e)]).collect();
        let width = model.hidden_size();
        let longest = rows.iter().map(|r| r.positions).max().unwrap_or(0);
        let batch = rows.len();
        let tokens = rows.iter().map(|r| r.tokens).sum();
        let mut values = Vec::with_capacity(batch * longest * width);
        let mut mask = Vec::with_capacity(batch * longest);
        for row in &rows {
            values.extend_from_slice(&row.values);
            values.resize(values.len() + (longest - row.positions) * width, 0.0);
            mask.extend((0..longest).map(|t| i64::from(t < row.positions)));
        }
        let outputs = match self.cut {
            FrozenCut::Features => {
                let features = Tensor::from_data(TensorData::new(values, [batch, width]), device);
                model.head.forward(features)
            }
            FrozenCut::BeforeLayer(layer) => {
                let hidden =
                    Tensor::from_data(TensorData::new(values, [batch, longest, width]), device);
                let mask =
                    Tensor::<2, Int>::from_data(TensorData::new(mask, [batch, longest]), device);
                let states = TokenStates {
                    hidden,
                    attention_mask: mask.clone(),
                    token_mask: mask,
                };
                model.head.forward(model.features_above(states, layer))
            }
        };
        Ok((outputs, tokens))
    }

    /// Runs the frozen bottom of `model` (as a validation snapshot: no dropout, no graph) over
    /// `examples` and keeps each one's row.
    fn compute(
        &self,
        model: &SequenceClassifier,
        tokenizer: &TextTokenizer,
        examples: &[&TextExample],
        device: &Device,
    ) -> Result<()> {
        let frozen = model.valid();
        let inner = device.clone().inner();
        let batch = make_batch(tokenizer, examples)?;
        let input = batch.encoded.bert_input(&inner);
        let read = |t: Tensor<3>| -> Result<Vec<f32>> {
            t.into_data()
                .try_to_vec::<f32>()
                .map_err(|e| TrainError::Invalid(format!("cannot read frozen features: {e:?}")))
        };
        let real_tokens: Vec<usize> = batch
            .encoded
            .attention_mask
            .chunks(batch.encoded.seq.max(1))
            .map(|m| m.iter().filter(|&&v| v == 1).count())
            .collect();
        let mut rows = self.rows.borrow_mut();
        match self.cut {
            FrozenCut::Features => {
                let features = frozen.features(input);
                let width = features.dims()[1];
                let values = read(features.unsqueeze_dim(1))?;
                for ((example, row), &tokens) in
                    examples.iter().zip(values.chunks(width)).zip(&real_tokens)
                {
                    rows.insert(
                        Self::key(example),
                        CachedRow {
                            values: row.to_vec(),
                            positions: 1,
                            tokens,
                        },
                    );
                }
            }
            FrozenCut::BeforeLayer(layer) => {
                let states = frozen.frozen_bottom(input, layer);
                let [_, seq, width] = states.hidden.dims();
                let values = read(states.hidden)?;
                let mask = states
                    .token_mask
                    .into_data()
                    .convert::<i64>()
                    .try_to_vec::<i64>()
                    .map_err(|e| TrainError::Invalid(format!("cannot read a mask: {e:?}")))?;
                for (((example, states), mask), &tokens) in examples
                    .iter()
                    .zip(values.chunks(seq * width))
                    .zip(mask.chunks(seq))
                    .zip(&real_tokens)
                {
                    // The real tokens are contiguous (left or right padding).
                    let first = mask.iter().position(|&m| m == 1).unwrap_or(0);
                    let positions = mask.iter().filter(|&&m| m == 1).count();
                    rows.insert(
                        Self::key(example),
                        CachedRow {
                            values: states[first * width..(first + positions) * width].to_vec(),
                            positions,
                            tokens,
                        },
                    );
                }
            }
        }
        Ok(())
    }
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
        let (outputs, tokens) = task.outputs(self, examples, device)?;
        let targets: Vec<Target> = examples.iter().map(|e| e.target).collect();
        Ok((task_loss(outputs, &targets, &task.kind, device), tokens))
    }

    fn evaluate(
        &self,
        task: &TextTask,
        examples: &[&TextExample],
        device: &Device,
        batch_size: usize,
    ) -> Result<Metrics> {
        evaluate_outputs(examples, &task.kind, device, batch_size, |chunk| {
            Ok(task.outputs(self, chunk, device)?.0)
        })
    }

    fn begin_train_step(&mut self, progress: f64, draw: u64) {
        SequenceClassifier::begin_train_step(self, progress, draw);
    }

    fn layer_rates(&self, lr: f64, decay: f64) -> Option<ModuleLearningRate> {
        Some(layer_decayed(self, lr, decay))
    }
}
