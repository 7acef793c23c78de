//! peft's VeRA format.
//!
//! - Per module: `base_model.model.<module>.vera_lambda_b` `[d_out]` and `vera_lambda_d` `[r]`
//!   (kiln's `vera.lambda_b`, `vera.lambda_d`).
//! - Shared: `base_model.vera_A` `[r, d_in_max]` and `base_model.vera_B` `[d_out_max, r]`, the
//!   transposes of kiln's shared pair, whose first rows / columns each projection holds. kiln
//!   draws them from its own generator, so they always go in the file (peft's `save_projection`,
//!   its default); an adapter saved without them is refused, since torch's generator is not
//!   kiln's.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use burn::module::Param;
use burn::nn::DropoutConfig;
use burn::tensor::{Tensor, TensorData};

use kiln_models::weights::kiln_name_for;
use kiln_models::{SequenceClassifier, VeraDelta, WeightFile};
use kiln_tuning::{ParamReport, set_trainable};

use super::lora::backbone_names;
use super::{
    PEFT_WEIGHTS_FILE, PeftExport, is_bert_sequence_classifier, read_floats, read_peft_config,
    transposed, write_peft_config, write_peft_weights, yes,
};
use super::{
    classifier_tensors, hf_module_of, is_classifier_tensor, load_classifier, read_classifier,
    task_type,
};
use crate::error::{Result, TrainError};

/// The fields of peft's `VeraConfig` kiln writes and reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftVeraConfig {
    /// `VERA`.
    pub peft_type: String,
    /// peft's task type (`SEQ_CLS`, `FEATURE_EXTRACTION`).
    pub task_type: Option<String>,
    /// The rank of the shared matrices.
    pub r: usize,
    /// Module names.
    pub target_modules: serde_json::Value,
    /// The seed peft draws the shared matrices from.
    #[serde(default)]
    pub projection_prng_key: u64,
    /// The shared matrices are in the file.
    #[serde(default = "yes")]
    pub save_projection: bool,
    /// Dropout on the delta's input.
    #[serde(default)]
    pub vera_dropout: f64,
    /// `λ_d`'s start.
    #[serde(default = "d_initial")]
    pub d_initial: f64,
    /// The base weights are stored `[in, out]` (GPT-2's Conv1D).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Modules saved whole beside the vectors (the classifier).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Saved for inference only.
    #[serde(default = "yes")]
    pub inference_mode: bool,
}

fn d_initial() -> f64 {
    0.1
}

/// Writes `model`'s VeRA vectors and shared matrices (and, for a BERT sequence classifier, its
/// head) as a peft adapter directory.
pub fn export_vera(model: &SequenceClassifier, out: &Path, base_model: &str) -> Result<PeftExport> {
    let (table, task_prefix) = backbone_names(model)?;
    let backbone = model.backbone_name();
    let with_classifier = is_bert_sequence_classifier(model);
    let prefix = if with_classifier { task_prefix } else { "" };
    let mut clone = model.clone();
    let mut tensors = Vec::new();
    let mut targets = BTreeSet::new();
    // The shared pair: the widest `a` and the widest `b` are the whole matrices.
    let (mut shared_a, mut shared_b): (Option<Tensor<2>>, Option<Tensor<2>>) = (None, None);
    let (mut dropout, mut projection_seed) = (0.0, 0);
    for (path, projection) in clone.projections_mut() {
        let Some(vera) = projection.vera.as_ref() else {
            continue;
        };
        if vera.merged {
            return Err(TrainError::Invalid(format!(
                "{path}: the VeRA update is merged into the weight; unmerge before exporting"
            )));
        }
        let module = hf_module_of(table, backbone, &path)?;
        for (name, vector) in [
            ("vera_lambda_b", vera.lambda_b.val()),
            ("vera_lambda_d", vera.lambda_d.val()),
        ] {
            let values = read_floats(vector)?;
            tensors.push((
                format!("base_model.model.{prefix}{module}.{name}"),
                vec![values.len()],
                values,
            ));
        }
        let (a, b) = (vera.a.val(), vera.b.val());
        if shared_a.as_ref().is_none_or(|s| s.dims()[0] < a.dims()[0]) {
            shared_a = Some(a);
        }
        if shared_b.as_ref().is_none_or(|s| s.dims()[1] < b.dims()[1]) {
            shared_b = Some(b);
        }
        dropout = vera.dropout.prob;
        projection_seed = vera.projection_seed;
        targets.insert(module);
    }
    let (Some(a), Some(b)) = (shared_a, shared_b) else {
        return Err(TrainError::Invalid(
            "the model has no VeRA delta to export".into(),
        ));
    };
    let ([d_in_max, rank], [_, d_out_max]) = (a.dims(), b.dims());
    tensors.push((
        "base_model.vera_A".into(),
        vec![rank, d_in_max],
        read_floats(a.transpose())?,
    ));
    tensors.push((
        "base_model.vera_B".into(),
        vec![d_out_max, rank],
        read_floats(b.transpose())?,
    ));
    if with_classifier {
        tensors.extend(classifier_tensors(model)?);
    }
    write_peft_weights(out, &tensors)?;
    let task_type = task_type(with_classifier);
    let target_modules: Vec<String> = targets.into_iter().collect();
    write_peft_config(
        out,
        &PeftVeraConfig {
            peft_type: "VERA".into(),
            task_type: Some(task_type.into()),
            r: rank,
            target_modules: serde_json::json!(target_modules),
            projection_prng_key: projection_seed,
            save_projection: true,
            vera_dropout: dropout,
            d_initial: d_initial(),
            fan_in_fan_out: model.gpt2.is_some(),
            modules_to_save: with_classifier.then(|| vec!["classifier".into()]),
            base_model_name_or_path: Some(base_model.into()),
            inference_mode: true,
        },
    )?;
    Ok(PeftExport {
        task_type,
        target_modules,
        tensors: tensors.len(),
        with_classifier,
    })
}

/// Puts the VeRA deltas of the peft directory `dir` in `model`'s slots (replacing any), loads
/// its classifier when it has one, and makes the vectors and the head trainable.
pub fn import_vera(
    model: SequenceClassifier,
    dir: &Path,
) -> Result<(SequenceClassifier, ParamReport)> {
    let (config, config_path) = read_peft_config::<PeftVeraConfig>(dir)?;
    if config.peft_type != "VERA" {
        return Err(TrainError::Invalid(format!(
            "{}: `peft_type` is {}, not VERA",
            config_path.display(),
            config.peft_type
        )));
    }
    if !config.save_projection {
        return Err(TrainError::Invalid(format!(
            "{}: `save_projection` is false: the shared matrices are not in the file, and kiln \
             cannot draw torch's from `projection_prng_key`; save the adapter with \
             save_projection=True",
            config_path.display()
        )));
    }
    let (table, task_prefix) = backbone_names(&model)?;
    let backbone = model.backbone_name().to_string();
    let weights_path = dir.join(PEFT_WEIGHTS_FILE);
    let file = WeightFile::open(&weights_path)?;
    let bad = |message: String| TrainError::checkpoint(&weights_path, message);
    let device = model.head.output.weight.lazy_device();
    let shared = |name: &str, rows_are_rank: bool| -> Result<Tensor<2>> {
        let raw = file
            .get(name)
            .ok_or_else(|| bad(format!("`{name}` (VeRA's shared matrix) is missing")))?;
        match raw.shape.as_slice() {
            &[rows, cols] if (if rows_are_rank { rows } else { cols }) == config.r => {
                Ok(transposed(&raw.values, [rows, cols], &device))
            }
            other => Err(bad(format!(
                "`{name}` is {other:?}, not of rank {}",
                config.r
            ))),
        }
    };
    // kiln's orientation: `a` `[d_in_max, r]`, `b` `[r, d_out_max]`.
    let a = shared("base_model.vera_A", true)?;
    let b = shared("base_model.vera_B", false)?;
    // Per projection path: `λ_b` and `λ_d` as the file gives them.
    type Vectors = (String, Option<Vec<f32>>, Option<Vec<f32>>);
    let mut vectors: Vec<Vectors> = Vec::new();
    let classifier = read_classifier(&file, &weights_path)?;
    for name in file.names() {
        if name == "base_model.vera_A" || name == "base_model.vera_B" {
            continue;
        }
        let rest = name
            .strip_prefix("base_model.model.")
            .ok_or_else(|| bad(format!("`{name}` is not a peft VeRA tensor")))?;
        if is_classifier_tensor(rest) {
            continue;
        }
        let (module, is_b) = match (
            rest.strip_suffix(".vera_lambda_b"),
            rest.strip_suffix(".vera_lambda_d"),
        ) {
            (Some(module), _) => (module, true),
            (_, Some(module)) => (module, false),
            _ => return Err(bad(format!("`{name}`: not a VeRA vector"))),
        };
        let local = module.strip_prefix(task_prefix).unwrap_or(module);
        let (kiln, _) = kiln_name_for(table, &format!("{local}.weight")).ok_or_else(|| {
            bad(format!(
                "`{name}`: no {backbone} projection is called `{local}`"
            ))
        })?;
        let path = format!(
            "{backbone}.{}",
            kiln.strip_suffix(".weight").unwrap_or(&kiln)
        );
        let values = file.get(name).expect("listed").values.clone();
        let entry = match vectors.iter_mut().position(|(p, _, _)| *p == path) {
            Some(i) => &mut vectors[i],
            None => {
                vectors.push((path, None, None));
                vectors.last_mut().expect("pushed")
            }
        };
        if is_b {
            entry.1 = Some(values);
        } else {
            entry.2 = Some(values);
        }
    }
    if vectors.is_empty() {
        return Err(bad("it holds no VeRA vectors".into()));
    }
    let [d_in_max, rank] = a.dims();
    let d_out_max = b.dims()[1];
    let mut model = model;
    for (path, projection) in model.projections_mut() {
        projection.vera = None;
        let Some(i) = vectors.iter().position(|(p, _, _)| *p == path) else {
            continue;
        };
        let (_, lambda_b, lambda_d) = vectors.swap_remove(i);
        let (d_in, d_out) = (projection.d_in(), projection.d_out());
        let (Some(lambda_b), Some(lambda_d)) = (lambda_b, lambda_d) else {
            return Err(bad(format!("`{path}` lacks one of its two VeRA vectors")));
        };
        if lambda_b.len() != d_out || lambda_d.len() != rank || d_in > d_in_max || d_out > d_out_max
        {
            return Err(bad(format!(
                "the VeRA vectors for `{path}` ({} and {}) or the shared matrices ({d_in_max} x \
                 {rank}, {rank} x {d_out_max}) do not fit its {d_in} x {d_out} weight",
                lambda_b.len(),
                lambda_d.len()
            )));
        }
        let vector = |values: Vec<f32>| {
            let len = values.len();
            Param::from_tensor(Tensor::from_data(TensorData::new(values, [len]), &device))
        };
        projection.vera = Some(VeraDelta {
            a: Param::from_tensor(a.clone().narrow(0, 0, d_in)),
            b: Param::from_tensor(b.clone().narrow(1, 0, d_out)),
            lambda_d: vector(lambda_d),
            lambda_b: vector(lambda_b),
            dropout: DropoutConfig::new(config.vera_dropout).init(),
            projection_seed: config.projection_prng_key,
            merged: false,
        });
    }
    if let Some((path, _, _)) = vectors.first() {
        return Err(bad(format!(
            "it changes `{path}`, which this model does not have"
        )));
    }
    load_classifier(&mut model, classifier, &weights_path)?;
    Ok(set_trainable(
        model,
        &[
            "*.vera.lambda_d".to_string(),
            "*.vera.lambda_b".to_string(),
            "head.*".to_string(),
        ],
    ))
}
