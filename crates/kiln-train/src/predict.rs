//! Inference with a trained run: each text's label and class probabilities (or a regression's
//! value), and the predictions of a whole input file written as CSV or JSONL, the input's id and
//! texts carried through.

use std::path::Path;

use burn::tensor::{Device, Tensor};
use serde::Serialize;

use kiln_data::{InputRow, TaskKind};
use kiln_models::{SequenceClassifier, TextInput, TextTokenizer};

use crate::checkpoint::write_atomically;
use crate::error::{Result, TrainError};

/// What the model says about one text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Prediction {
    /// The most probable class, with the probability of every class in label order.
    Class {
        /// The class name.
        label: String,
        /// Every class's probability, in label order.
        probabilities: Vec<f32>,
    },
    /// A regression's value.
    Value(f32),
    /// A multi-label task's labels above the threshold, with every label's probability in label
    /// order.
    Labels {
        /// The labels predicted.
        labels: Vec<String>,
        /// Every label's probability, in label order.
        probabilities: Vec<f32>,
    },
}

/// A model ready for inference: the network, its tokenizer and what its outputs mean.
pub struct Predictor<'a> {
    /// The model, without autodiff.
    pub model: &'a SequenceClassifier,
    /// Its tokenizer, set to the run's length.
    pub tokenizer: &'a TextTokenizer,
    /// The task's classes (the head's outputs in order), or regression.
    pub kind: &'a TaskKind,
    /// The device the model is on.
    pub device: &'a Device,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// A multi-label task's decision threshold.
    pub threshold: f64,
}

impl Predictor<'_> {
    /// The prediction for each input, `batch_size` at a time.
    pub fn predict(&self, inputs: &[TextInput]) -> Result<Vec<Prediction>> {
        let mut predictions = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(self.batch_size.max(1)) {
            let encoded = self.tokenizer.encode_batch(chunk)?;
            let outputs = self.model.forward(encoded.bert_input(self.device));
            predictions.extend(predictions_of(outputs, self.kind, self.threshold)?);
        }
        Ok(predictions)
    }

    /// Predictions for `rows` (an input file as read by [`kiln_data::read_inputs`]).
    pub fn predict_rows(&self, rows: &[InputRow]) -> Result<Vec<Prediction>> {
        let inputs: Vec<TextInput> = rows.iter().map(input_of).collect();
        self.predict(&inputs)
    }
}

/// What a head's outputs `[batch, outputs]` for a task of `kind` say about each text (a
/// multi-label task's labels those whose probability is above `threshold`).
pub fn predictions_of(
    outputs: Tensor<2>,
    kind: &TaskKind,
    threshold: f64,
) -> Result<Vec<Prediction>> {
    let [_, width] = outputs.dims();
    let scores = match kind {
        TaskKind::Classification { .. } => burn::tensor::activation::softmax(outputs, 1),
        TaskKind::MultiLabel { .. } => burn::tensor::activation::sigmoid(outputs),
        TaskKind::Regression => outputs,
    };
    let values: Vec<f32> = scores
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::Invalid(format!("cannot read model outputs: {e:?}")))?;
    Ok(values
        .chunks(width.max(1))
        .map(|row| match kind {
            TaskKind::Classification { labels } => {
                let best = (0..row.len())
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap_or(0);
                Prediction::Class {
                    label: labels
                        .get(best)
                        .cloned()
                        .unwrap_or_else(|| best.to_string()),
                    probabilities: row.to_vec(),
                }
            }
            TaskKind::MultiLabel { labels } => Prediction::Labels {
                labels: labels
                    .iter()
                    .zip(row)
                    .filter(|(_, p)| f64::from(**p) > threshold)
                    .map(|(l, _)| l.clone())
                    .collect(),
                probabilities: row.to_vec(),
            },
            TaskKind::Regression => Prediction::Value(row[0]),
        })
        .collect())
}

/// The model input of an input row: one text, or a pair.
pub fn input_of(row: &InputRow) -> TextInput {
    match &row.pair {
        Some(pair) => TextInput::Pair(row.text.clone(), pair.clone()),
        None => TextInput::Single(row.text.clone()),
    }
}

/// File formats [`write_predictions`] writes, from the extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionFormat {
    /// Comma-separated, with a header: `task` (of several answered together), `id` (when the
    /// input has ids), `text`, `pair` (pairs), `label` and one `prob_<class>` column per class,
    /// `labels` (joined by `|`) and one `prob_<label>` per label for multi-label, or `score` for
    /// regression.
    Csv,
    /// One JSON object per line: the same fields, the probabilities as an object by class.
    Jsonl,
}

impl PredictionFormat {
    /// `.csv` or `.jsonl`/`.ndjson`.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "csv" => Ok(Self::Csv),
            "jsonl" | "ndjson" => Ok(Self::Jsonl),
            _ => Err(TrainError::Invalid(format!(
                "--output {}: expected a .csv or .jsonl file",
                path.display()
            ))),
        }
    }
}

/// `rows` with their predictions in `format`, as text.
pub fn format_predictions(
    rows: &[InputRow],
    predictions: &[Prediction],
    kind: &TaskKind,
    format: PredictionFormat,
) -> Result<String> {
    format_for(None, rows, predictions, kind, format)
}

/// [`format_predictions`] for one of several tasks answered together: each record starts with
/// its `task`.
pub fn format_task_predictions(
    task: &str,
    rows: &[InputRow],
    predictions: &[Prediction],
    kind: &TaskKind,
    format: PredictionFormat,
) -> Result<String> {
    format_for(Some(task), rows, predictions, kind, format)
}

fn format_for(
    task: Option<&str>,
    rows: &[InputRow],
    predictions: &[Prediction],
    kind: &TaskKind,
    format: PredictionFormat,
) -> Result<String> {
    let has_ids = rows.iter().any(|r| r.id.is_some());
    let has_pairs = rows.iter().any(|r| r.pair.is_some());
    let labels = kind.labels();
    match format {
        PredictionFormat::Jsonl => {
            let mut text = String::new();
            for (row, prediction) in rows.iter().zip(predictions) {
                let mut record = serde_json::Map::new();
                if let Some(task) = task {
                    record.insert("task".into(), task.into());
                }
                if has_ids {
                    record.insert("id".into(), row.id.clone().into());
                }
                record.insert("text".into(), row.text.clone().into());
                if has_pairs {
                    record.insert("pair".into(), row.pair.clone().into());
                }
                match prediction {
                    Prediction::Class {
                        label,
                        probabilities,
                    } => {
                        record.insert("label".into(), label.clone().into());
                        let by_class: serde_json::Map<String, serde_json::Value> = labels
                            .iter()
                            .zip(probabilities)
                            .map(|(l, p)| (l.clone(), f64::from(*p).into()))
                            .collect();
                        record.insert("probabilities".into(), by_class.into());
                    }
                    Prediction::Value(score) => {
                        record.insert("score".into(), f64::from(*score).into());
                    }
                    Prediction::Labels {
                        labels: predicted,
                        probabilities,
                    } => {
                        record.insert("labels".into(), predicted.clone().into());
                        let by_label: serde_json::Map<String, serde_json::Value> = labels
                            .iter()
                            .zip(probabilities)
                            .map(|(l, p)| (l.clone(), f64::from(*p).into()))
                            .collect();
                        record.insert("probabilities".into(), by_label.into());
                    }
                }
                text.push_str(&serde_json::Value::Object(record).to_string());
                text.push('\n');
            }
            Ok(text)
        }
        PredictionFormat::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            let mut header: Vec<String> = Vec::new();
            if task.is_some() {
                header.push("task".into());
            }
            if has_ids {
                header.push("id".into());
            }
            header.push("text".into());
            if has_pairs {
                header.push("pair".into());
            }
            match kind {
                TaskKind::Classification { labels } => {
                    header.push("label".into());
                    header.extend(labels.iter().map(|l| format!("prob_{l}")));
                }
                TaskKind::MultiLabel { labels } => {
                    header.push("labels".into());
                    header.extend(labels.iter().map(|l| format!("prob_{l}")));
                }
                TaskKind::Regression => header.push("score".into()),
            }
            let csv_error = |e: csv::Error| TrainError::Invalid(format!("writing CSV: {e}"));
            writer.write_record(&header).map_err(csv_error)?;
            for (row, prediction) in rows.iter().zip(predictions) {
                let mut record: Vec<String> = Vec::new();
                if let Some(task) = task {
                    record.push(task.to_string());
                }
                if has_ids {
                    record.push(row.id.clone().unwrap_or_default());
                }
                record.push(row.text.clone());
                if has_pairs {
                    record.push(row.pair.clone().unwrap_or_default());
                }
                match prediction {
                    Prediction::Class {
                        label,
                        probabilities,
                    } => {
                        record.push(label.clone());
                        record.extend(probabilities.iter().map(|p| p.to_string()));
                    }
                    Prediction::Value(score) => record.push(score.to_string()),
                    Prediction::Labels {
                        labels,
                        probabilities,
                    } => {
                        // The labels joined as a multi-label cell is written: `fire|kiln`.
                        record.push(labels.join("|"));
                        record.extend(probabilities.iter().map(|p| p.to_string()));
                    }
                }
                writer.write_record(&record).map_err(csv_error)?;
            }
            let bytes = writer
                .into_inner()
                .map_err(|e| TrainError::Invalid(format!("writing CSV: {e}")))?;
            String::from_utf8(bytes).map_err(|e| TrainError::Invalid(e.to_string()))
        }
    }
}

/// Writes `rows` with their predictions to `path` (format from the extension), atomically.
pub fn write_predictions(
    path: &Path,
    rows: &[InputRow],
    predictions: &[Prediction],
    kind: &TaskKind,
) -> Result<()> {
    let text = format_predictions(rows, predictions, kind, PredictionFormat::from_path(path)?)?;
    write_atomically(path, text.as_bytes())
}
