//! peft's OFT format (peft 0.21's OFT, with the Cayley-Neumann rotation).
//!
//! - Tensors: `base_model.model.<module>.oft_R.weight` `[blocks, b(b−1)/2]`, each row one block's
//!   skew-symmetric upper triangle in `torch.triu_indices` order: kiln's `oft.weight` as it is.
//! - The config gives `oft_block_size` (kiln writes `r` 0, so peft derives the block count per
//!   layer) and `num_cayley_neumann_terms`. peft's exact Cayley solve (`use_cayley_neumann`
//!   false), `coft`, `block_share` and module dropout are refused on import: kiln computes none
//!   of them.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};

use kiln_models::weights::kiln_name_for;
use kiln_models::{OrthogonalRotation, SequenceClassifier, WeightFile};
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

/// The fields of peft's `OFTConfig` kiln writes and reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftOftConfig {
    /// `OFT`.
    pub peft_type: String,
    /// peft's task type (`SEQ_CLS`, `FEATURE_EXTRACTION`).
    pub task_type: Option<String>,
    /// Blocks per layer (0: from `oft_block_size`).
    #[serde(default)]
    pub r: usize,
    /// The side of each block.
    #[serde(default)]
    pub oft_block_size: usize,
    /// Module names.
    pub target_modules: serde_json::Value,
    /// The Cayley transform as a Neumann series (refused unless true).
    #[serde(default = "yes")]
    pub use_cayley_neumann: bool,
    /// Terms of the series.
    #[serde(default = "five")]
    pub num_cayley_neumann_terms: usize,
    /// Constrained OFT (refused).
    #[serde(default)]
    pub coft: bool,
    /// One block shared by all (refused).
    #[serde(default)]
    pub block_share: bool,
    /// Drops whole blocks in training (refused unless 0).
    #[serde(default)]
    pub module_dropout: f64,
    /// The base weights are stored `[in, out]` (GPT-2's Conv1D).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Modules saved whole beside the rotations (the classifier).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Saved for inference only.
    #[serde(default = "yes")]
    pub inference_mode: bool,
}

fn five() -> usize {
    5
}

/// Writes `model`'s OFT rotations (and, for a BERT sequence classifier, its head) as a peft
/// adapter directory.
pub fn export_oft(model: &SequenceClassifier, out: &Path, base_model: &str) -> Result<PeftExport> {
    let (table, task_prefix) = backbone_names(model)?;
    let backbone = model.backbone_name();
    let with_classifier = is_bert_sequence_classifier(model);
    let prefix = if with_classifier { task_prefix } else { "" };
    let mut clone = model.clone();
    let mut tensors = Vec::new();
    let mut targets = BTreeSet::new();
    let mut settings = BTreeSet::new();
    for (path, projection) in clone.projections_mut() {
        let Some(rotation) = projection.oft.as_ref() else {
            continue;
        };
        if rotation.merged() {
            return Err(TrainError::Invalid(format!(
                "{path}: the rotation is merged into the weight; unmerge before exporting"
            )));
        }
        settings.insert((rotation.block_size, rotation.neumann_terms));
        let module = hf_module_of(table, backbone, &path)?;
        let shape = rotation.weight.lazy_shape().dims::<2>().to_vec();
        tensors.push((
            format!("base_model.model.{prefix}{module}.oft_R.weight"),
            shape,
            read_floats(rotation.weight.val())?,
        ));
        targets.insert(module);
    }
    let Some(&(block_size, terms)) = settings.first() else {
        return Err(TrainError::Invalid(
            "the model has no OFT rotation to export".into(),
        ));
    };
    if settings.len() > 1 {
        return Err(TrainError::Invalid(
            "peft's config holds one block size and series length; this model's differ".into(),
        ));
    }
    if with_classifier {
        tensors.extend(classifier_tensors(model)?);
    }
    write_peft_weights(out, &tensors)?;
    let task_type = task_type(with_classifier);
    let target_modules: Vec<String> = targets.into_iter().collect();
    write_peft_config(
        out,
        &PeftOftConfig {
            peft_type: "OFT".into(),
            task_type: Some(task_type.into()),
            r: 0,
            oft_block_size: block_size,
            target_modules: serde_json::json!(target_modules),
            use_cayley_neumann: true,
            num_cayley_neumann_terms: terms,
            coft: false,
            block_share: false,
            module_dropout: 0.0,
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

/// Puts the rotations of the peft OFT directory `dir` in `model`'s slots (replacing any), loads
/// its classifier when it has one, and makes the rotations and the head trainable.
pub fn import_oft(
    model: SequenceClassifier,
    dir: &Path,
) -> Result<(SequenceClassifier, ParamReport)> {
    let (config, config_path) = read_peft_config::<PeftOftConfig>(dir)?;
    let refuse = |field: &str, why: &str| {
        Err(TrainError::Invalid(format!(
            "{}: `{field}` {why}",
            config_path.display()
        )))
    };
    if config.peft_type != "OFT" {
        return refuse("peft_type", &format!("is {}, not OFT", config.peft_type));
    }
    if !config.use_cayley_neumann {
        return refuse(
            "use_cayley_neumann",
            "is false: kiln computes the Cayley transform as its Neumann series only",
        );
    }
    if config.coft || config.block_share {
        return refuse("coft", "/ `block_share` are set: kiln's OFT has neither");
    }
    if config.module_dropout != 0.0 {
        return refuse("module_dropout", "is not 0: kiln trains OFT without it");
    }
    let (table, task_prefix) = backbone_names(&model)?;
    let backbone = model.backbone_name().to_string();
    let weights_path = dir.join(PEFT_WEIGHTS_FILE);
    let file = WeightFile::open(&weights_path)?;
    let bad = |message: String| TrainError::checkpoint(&weights_path, message);
    let device = model.head.output.weight.lazy_device();
    let mut rotations = Vec::new();
    let classifier = read_classifier(&file, &weights_path)?;
    for name in file.names() {
        let rest = name
            .strip_prefix("base_model.model.")
            .ok_or_else(|| bad(format!("`{name}` is not a peft OFT tensor")))?;
        if is_classifier_tensor(rest) {
            continue;
        }
        let module = rest
            .strip_suffix(".oft_R.weight")
            .ok_or_else(|| bad(format!("`{name}`: not an OFT rotation")))?;
        let local = module.strip_prefix(task_prefix).unwrap_or(module);
        let (kiln, _) = kiln_name_for(table, &format!("{local}.weight")).ok_or_else(|| {
            bad(format!(
                "`{name}`: no {backbone} projection is called `{local}`"
            ))
        })?;
        let raw = file.get(name).expect("listed");
        let &[blocks, entries] = raw.shape.as_slice() else {
            return Err(bad(format!("`{name}` is {:?}, not a matrix", raw.shape)));
        };
        // entries = b(b − 1)/2.
        let block_size = (1 + 8 * entries).isqrt().div_ceil(2);
        if block_size * (block_size - 1) / 2 != entries {
            return Err(bad(format!(
                "`{name}` has {entries} entries per block, not b(b-1)/2 for any b"
            )));
        }
        rotations.push((
            format!(
                "{backbone}.{}",
                kiln.strip_suffix(".weight").unwrap_or(&kiln)
            ),
            blocks,
            block_size,
            raw.values.clone(),
        ));
    }
    if rotations.is_empty() {
        return Err(bad("it holds no OFT rotations".into()));
    }
    let mut model = model;
    for (path, projection) in model.projections_mut() {
        projection.oft = None;
        let Some(i) = rotations.iter().position(|(p, ..)| *p == path) else {
            continue;
        };
        let (_, blocks, block_size, values) = rotations.swap_remove(i);
        if blocks * block_size != projection.d_in() {
            return Err(bad(format!(
                "its {blocks} blocks of {block_size} do not cover the {} inputs of `{path}`",
                projection.d_in()
            )));
        }
        let entries = values.len() / blocks;
        let mut rotation = OrthogonalRotation::new(
            projection.d_in(),
            block_size,
            config.num_cayley_neumann_terms,
            &device,
        );
        rotation.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(values, [blocks, entries]),
            &device,
        ));
        projection.oft = Some(rotation);
    }
    if let Some((path, ..)) = rotations.first() {
        return Err(bad(format!(
            "it changes `{path}`, which this model does not have"
        )));
    }
    load_classifier(&mut model, classifier, &weights_path)?;
    Ok(set_trainable(
        model,
        &["*.oft.*".to_string(), "head.*".to_string()],
    ))
}
