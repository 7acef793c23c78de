//! Text classification and regression as the trainer sees them: [`TextTask`] (tokenizer and
//! task kind), the frozen-feature cache, [`SequenceClassifier`]'s [`TaskModel`] implementation,
//! the task loss (cross-entropy or mean squared error) and evaluation with the task's metrics.

use std::cell::RefCell;
use std::collections::HashMap;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Int, Tensor, TensorData};

use kiln_data::{Target, TaskKind, TextExample, make_batch};
use kiln_models::{FrozenCut, OptimizerGroup, SequenceClassifier, TextTokenizer, TokenStates};

use crate::error::{Result, TrainError};
use crate::metrics::Metrics;
use crate::schedule::layer_decayed;
use crate::task_model::{Task, TaskModel};

/// A text task as batches need it.
#[derive(Clone)]
pub struct TextTask {
    /// Encodes the texts of a batch.
    pub tokenizer: TextTokenizer,
    /// Classification (with the class names) or regression.
    pub kind: TaskKind,
    /// The frozen bottom's outputs, for methods that train only above it.
    pub features: Option<FeatureCache>,
    /// Multi-label: the probability above which a label is predicted in evaluations.
    pub threshold: f64,
}

impl TextTask {
    /// The task for `kind` with `tokenizer`, without a feature cache, at threshold 0.5.
    pub fn new(tokenizer: TextTokenizer, kind: TaskKind) -> Self {
        Self {
            tokenizer,
            kind,
            features: None,
            threshold: 0.5,
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
    /// An empty cache of the frozen bottom below `cut`.
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

    /// Whether nothing is cached yet.
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

impl Task for TextTask {
    type Example = TextExample;
}

impl TaskModel<TextTask> for SequenceClassifier {
    fn batch_loss(
        &self,
        task: &TextTask,
        examples: &[&TextExample],
        device: &Device,
    ) -> Result<(Tensor<1>, usize)> {
        let (outputs, tokens) = task.outputs(self, examples, device)?;
        let targets: Vec<Target> = examples.iter().map(|e| e.target.clone()).collect();
        let loss = task_loss(outputs, &targets, &task.kind, device);
        // AdapterFusion keeps its value matrices near the identity (AdapterHub's default),
        // AdaLoRA its factors near orthogonal (peft's).
        let regularizers = [self.fusion_regularization(), self.adalora_regularization()];
        let loss = regularizers.into_iter().flatten().fold(loss, |l, r| l + r);
        Ok((loss, tokens))
    }

    fn observe_gradients(&mut self, grads: &GradientsParams) {
        self.keep_adalora_gradients(grads);
    }

    fn end_train_step(&mut self, step: usize, total_steps: usize) {
        self.allocate_ranks(step, total_steps);
    }

    fn evaluate(
        &self,
        task: &TextTask,
        examples: &[&TextExample],
        device: &Device,
        batch_size: usize,
    ) -> Result<Metrics> {
        let scoring = (&task.kind, task.threshold);
        evaluate_outputs(examples, scoring, device, batch_size, |chunk| {
            Ok(task.outputs(self, chunk, device)?.0)
        })
    }

    fn begin_train_step(&mut self, progress: f64, draw: u64) {
        SequenceClassifier::begin_train_step(self, progress, draw);
    }

    fn layer_rates(&self, lr: f64, decay: f64) -> Option<ModuleLearningRate> {
        Some(layer_decayed(self, lr, decay))
    }

    fn optimizer_groups(&self) -> Vec<OptimizerGroup> {
        self.backbone().optimizer_groups()
    }
}

/// Cross-entropy for classification, mean squared error for regression, binary cross-entropy
/// on every label's logit for multi-label (the mean over examples and labels, as torch's
/// `BCEWithLogitsLoss`).
pub(crate) fn task_loss(
    outputs: Tensor<2>,
    targets: &[Target],
    kind: &TaskKind,
    device: &Device,
) -> Tensor<1> {
    match kind {
        TaskKind::Classification { .. } => {
            let classes: Vec<i64> = targets.iter().map(|t| t.class_index() as i64).collect();
            let classes = Tensor::<1, Int>::from_data(TensorData::from(classes.as_slice()), device);
            CrossEntropyLossConfig::new()
                .init(device)
                .forward(outputs, classes)
        }
        TaskKind::Regression => {
            let scores: Vec<f32> = targets.iter().map(Target::score).collect();
            let n = scores.len();
            let scores = Tensor::<1>::from_data(TensorData::from(scores.as_slice()), device);
            (outputs.reshape([n]) - scores).powi_scalar(2).mean()
        }
        TaskKind::MultiLabel { labels } => {
            let [rows, width] = [targets.len(), labels.len()];
            let y: Vec<f32> = targets
                .iter()
                .flat_map(|t| (0..width).map(move |l| f32::from(u8::from(t.has_label(l)))))
                .collect();
            let y = Tensor::<2>::from_data(TensorData::new(y, [rows, width]), device);
            // max(x, 0) − x·y + log(1 + exp(−|x|)): the stable form of −y·log σ(x) − (1−y)·log(1−σ(x)).
            let x = outputs;
            (x.clone().clamp_min(0.0) - x.clone() * y + (x.abs().neg().exp() + 1.0).log()).mean()
        }
    }
}

/// Loss and metrics of `model` (a validation snapshot, see `Module::valid`) on `examples`
/// (multi-label at threshold 0.5).
pub fn evaluate(
    model: &SequenceClassifier,
    tokenizer: &TextTokenizer,
    examples: &[&TextExample],
    kind: &TaskKind,
    device: &Device,
    batch_size: usize,
) -> Result<Metrics> {
    evaluate_at(model, tokenizer, examples, (kind, 0.5), device, batch_size)
}

/// [`evaluate`] with a multi-label task's decision threshold: `(kind, threshold)`.
pub fn evaluate_at(
    model: &SequenceClassifier,
    tokenizer: &TextTokenizer,
    examples: &[&TextExample],
    scoring: (&TaskKind, f64),
    device: &Device,
    batch_size: usize,
) -> Result<Metrics> {
    evaluate_outputs(examples, scoring, device, batch_size, |chunk| {
        let batch = make_batch(tokenizer, chunk)?;
        Ok(model.forward(batch.encoded.bert_input(device)))
    })
}

/// A multi-label model's label probabilities on some examples, beside their labels.
pub struct LabelScores {
    /// Every label's probability, `[example][label]` (the sigmoid of its output).
    pub probabilities: Vec<Vec<f32>>,
    /// Whether each label applies, `[example][label]`.
    pub actual: Vec<Vec<bool>>,
}

/// A multi-label model's [`LabelScores`] on `examples`: what a decision threshold is tuned on.
pub fn label_probabilities(
    model: &SequenceClassifier,
    tokenizer: &TextTokenizer,
    examples: &[&TextExample],
    device: &Device,
    batch_size: usize,
) -> Result<LabelScores> {
    let mut probabilities = Vec::with_capacity(examples.len());
    let mut actual = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let batch = make_batch(tokenizer, chunk)?;
        let outputs = sigmoid(model.forward(batch.encoded.bert_input(device)));
        let width = outputs.dims()[1];
        let values = read_floats(outputs)?;
        probabilities.extend(values.chunks(width.max(1)).map(<[f32]>::to_vec));
        actual.extend(
            chunk
                .iter()
                .map(|e| (0..width).map(|l| e.target.has_label(l)).collect()),
        );
    }
    Ok(LabelScores {
        probabilities,
        actual,
    })
}

fn read_floats(outputs: Tensor<2>) -> Result<Vec<f32>> {
    outputs
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::Invalid(format!("cannot read model outputs: {e:?}")))
}

/// Loss and metrics of the outputs `forward` gives for `examples`, `batch_size` at a time;
/// `scoring` is the task and a multi-label task's decision threshold.
pub(crate) fn evaluate_outputs(
    examples: &[&TextExample],
    (kind, threshold): (&TaskKind, f64),
    device: &Device,
    batch_size: usize,
    mut forward: impl FnMut(&[&TextExample]) -> Result<Tensor<2>>,
) -> Result<Metrics> {
    let mut loss_sum = 0.0;
    let mut outputs_all: Vec<Vec<f32>> = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let outputs = forward(chunk)?;
        let targets: Vec<Target> = chunk.iter().map(|e| e.target.clone()).collect();
        let [rows, width] = outputs.dims();
        let loss = task_loss(outputs.clone(), &targets, kind, device);
        loss_sum += f64::from(loss.into_scalar::<f32>()) * rows as f64;
        let values = read_floats(outputs)?;
        outputs_all.extend(values.chunks(width).map(<[f32]>::to_vec));
    }
    let loss = loss_sum / examples.len().max(1) as f64;
    Ok(match kind {
        TaskKind::Classification { labels } => {
            let predicted: Vec<usize> = outputs_all.iter().map(|row| argmax(row)).collect();
            let actual: Vec<usize> = examples.iter().map(|e| e.target.class_index()).collect();
            Metrics::classification(loss, &predicted, &actual, labels.len())
        }
        TaskKind::Regression => {
            let predicted: Vec<f64> = outputs_all.iter().map(|row| f64::from(row[0])).collect();
            let actual: Vec<f64> = examples
                .iter()
                .map(|e| f64::from(e.target.score()))
                .collect();
            Metrics::regression(loss, &predicted, &actual)
        }
        TaskKind::MultiLabel { labels } => {
            let probabilities: Vec<Vec<f32>> = outputs_all
                .iter()
                .map(|row| row.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect())
                .collect();
            let actual: Vec<Vec<bool>> = examples
                .iter()
                .map(|e| (0..labels.len()).map(|l| e.target.has_label(l)).collect())
                .collect();
            Metrics::multi_label(loss, &probabilities, &actual, threshold)
        }
    })
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}
