//! peft's IA3 format.
//!
//! - Tensors: `base_model.model.<module>.ia3_l`, `[d_out, 1]` for a projection whose output is
//!   scaled and `[1, d_in]` for one of the `feedforward_modules`, whose input is; kiln's
//!   `ia3.scale` is the same numbers as a vector. `<module>` is the HF module path, as for LoRA.
//! - `target_modules` lists every scaled module's HF path and `feedforward_modules` those scaled
//!   on the input, so peft's suffix matching picks exactly these (peft's own default for BERT,
//!   `output.dense`, also takes the attention output, on its input; kiln reads such adapters).
//!
//! Importing reads the vectors into any kiln model of the same backbone, and the classifier
//! when there is one (as for LoRA).

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};

use kiln_models::weights::kiln_name_for;
use kiln_models::{ScalingVector, SequenceClassifier, WeightFile};
use kiln_tuning::{ParamReport, set_trainable};

use super::lora::backbone_names;
use super::{
    PEFT_WEIGHTS_FILE, PeftExport, is_bert_sequence_classifier, read_floats, read_peft_config,
    write_peft_config, write_peft_weights, yes,
};
use super::{
    classifier_tensors, hf_module_of, is_classifier_tensor, load_classifier, read_classifier,
    task_type,
};
use crate::error::{Result, TrainError};

/// The fields of peft's `IA3Config` kiln writes and reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftIa3Config {
    /// `IA3`.
    pub peft_type: String,
    /// peft's task type (`SEQ_CLS`, `FEATURE_EXTRACTION`).
    pub task_type: Option<String>,
    /// A list of module names (a regular expression is refused).
    pub target_modules: serde_json::Value,
    /// The targets scaled on their input.
    pub feedforward_modules: serde_json::Value,
    /// The base weights are stored `[in, out]` (GPT-2's Conv1D).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Modules saved whole beside the vectors (the classifier).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Vectors start at ones.
    #[serde(default = "yes")]
    pub init_ia3_weights: bool,
    /// Saved for inference only.
    #[serde(default = "yes")]
    pub inference_mode: bool,
}

/// Writes `model`'s IA3 vectors (and, for a BERT sequence classifier, its head) as a peft
/// adapter directory.
pub fn export_ia3(model: &SequenceClassifier, out: &Path, base_model: &str) -> Result<PeftExport> {
    let (table, task_prefix) = backbone_names(model)?;
    let backbone = model.backbone_name();
    let with_classifier = is_bert_sequence_classifier(model);
    let prefix = if with_classifier { task_prefix } else { "" };
    let mut model = model.clone();
    let mut tensors = Vec::new();
    let (mut targets, mut feedforward) = (BTreeSet::new(), BTreeSet::new());
    for (path, projection) in model.projections_mut() {
        let Some(vector) = projection.ia3.as_ref() else {
            continue;
        };
        if vector.merged {
            return Err(TrainError::Invalid(format!(
                "{path}: the IA3 vector is merged into the weight; unmerge before exporting"
            )));
        }
        let module = hf_module_of(table, backbone, &path)?;
        let values = read_floats(vector.scale.val())?;
        let shape = if vector.on_input {
            feedforward.insert(module.clone());
            vec![1, values.len()]
        } else {
            vec![values.len(), 1]
        };
        targets.insert(module.clone());
        tensors.push((
            format!("base_model.model.{prefix}{module}.ia3_l"),
            shape,
            values,
        ));
    }
    if tensors.is_empty() {
        return Err(TrainError::Invalid(
            "the model has no IA3 vector to export".into(),
        ));
    }
    if with_classifier {
        tensors.extend(classifier_tensors(&model)?);
    }
    write_peft_weights(out, &tensors)?;
    let task_type = task_type(with_classifier);
    let target_modules: Vec<String> = targets.into_iter().collect();
    write_peft_config(
        out,
        &PeftIa3Config {
            peft_type: "IA3".into(),
            task_type: Some(task_type.into()),
            target_modules: serde_json::json!(target_modules),
            feedforward_modules: serde_json::json!(feedforward.into_iter().collect::<Vec<_>>()),
            fan_in_fan_out: model.gpt2.is_some(),
            modules_to_save: with_classifier.then(|| vec!["classifier".into()]),
            base_model_name_or_path: Some(base_model.into()),
            init_ia3_weights: true,
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

/// Puts the vectors of the peft IA3 directory `dir` in `model`'s IA3 slots (replacing any there;
/// projections the adapter leaves alone get none), loads its classifier when it has one, and
/// makes the vectors and the head trainable.
pub fn import_ia3(
    model: SequenceClassifier,
    dir: &Path,
) -> Result<(SequenceClassifier, ParamReport)> {
    let (config, config_path) = read_peft_config::<PeftIa3Config>(dir)?;
    if config.peft_type != "IA3" {
        return Err(TrainError::Invalid(format!(
            "{}: `peft_type` is {}, not IA3",
            config_path.display(),
            config.peft_type
        )));
    }
    let (table, task_prefix) = backbone_names(&model)?;
    let backbone = model.backbone_name().to_string();
    let weights_path = dir.join(PEFT_WEIGHTS_FILE);
    let file = WeightFile::open(&weights_path)?;
    let bad = |message: String| TrainError::checkpoint(&weights_path, message);
    let mut vectors = Vec::new();
    let classifier = read_classifier(&file, &weights_path)?;
    for name in file.names() {
        let rest = name
            .strip_prefix("base_model.model.")
            .ok_or_else(|| bad(format!("`{name}` is not a peft IA3 tensor")))?;
        if is_classifier_tensor(rest) {
            continue;
        }
        let module = rest
            .strip_suffix(".ia3_l")
            .ok_or_else(|| bad(format!("`{name}`: not an IA3 vector")))?;
        let local = module.strip_prefix(task_prefix).unwrap_or(module);
        let (kiln, _) = kiln_name_for(table, &format!("{local}.weight")).ok_or_else(|| {
            bad(format!(
                "`{name}`: no {backbone} projection is called `{local}`"
            ))
        })?;
        let projection = kiln.strip_suffix(".weight").unwrap_or(&kiln);
        let raw = file.get(name).expect("listed by the file");
        let on_input = match raw.shape.as_slice() {
            &[1, _] => true,
            &[_, 1] => false,
            other => {
                return Err(bad(format!(
                    "`{name}` is {other:?}, neither `[d_out, 1]` nor `[1, d_in]`"
                )));
            }
        };
        vectors.push((
            format!("{backbone}.{projection}"),
            on_input,
            raw.values.clone(),
        ));
    }
    if vectors.is_empty() {
        return Err(bad("it holds no IA3 vectors".into()));
    }
    let mut model = model;
    let device = model.head.output.weight.lazy_device();
    for (path, projection) in model.projections_mut() {
        projection.ia3 = None;
        let Some(i) = vectors.iter().position(|(p, _, _)| *p == path) else {
            continue;
        };
        let (_, on_input, values) = vectors.swap_remove(i);
        let width = if on_input {
            projection.d_in()
        } else {
            projection.d_out()
        };
        if values.len() != width {
            return Err(bad(format!(
                "the vector for `{path}` has {} entries, the projection's {} has {width}",
                values.len(),
                if on_input { "input" } else { "output" }
            )));
        }
        projection.ia3 = Some(ScalingVector {
            scale: Param::from_tensor(Tensor::from_data(TensorData::new(values, [width]), &device)),
            on_input,
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
        &["*.ia3.*".to_string(), "head.*".to_string()],
    ))
}
