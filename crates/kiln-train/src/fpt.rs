//! Training the Frozen Pretrained Transformer on a sequence task: examples become right-padded
//! tensors with their attention mask; the loss is cross-entropy over the classes, or over every
//! bit of a bit string (two logits per bit, as the reference code); accuracy is per example for
//! classes and per bit for bit strings (the paper's bit-task metric).

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};

use kiln_data::{
    InputKind, OutputKind, SequenceExample, SequenceInput, SequenceTarget, SequenceTask,
};
use kiln_models::{Fpt, FptTokens};

use crate::error::{Result, TrainError};
use crate::metrics::Metrics;
use crate::task_model::TaskModel;

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

impl TaskModel for Fpt {
    type Task = SequenceTask;
    type Example = SequenceExample;

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
