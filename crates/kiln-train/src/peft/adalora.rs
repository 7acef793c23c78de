//! peft's AdaLoRA format.
//!
//! - Tensors: `base_model.model.<module>.lora_A` `[r, d_in]`, `lora_E` `[r, 1]`, `lora_B`
//!   `[d_out, r]` (parameters, no `.weight`): kiln's `adalora.p` transposed, `adalora.lambda`,
//!   `adalora.q` transposed.
//! - Once the budget is final (after `T − tfinal`), peft keeps only the triplets the allocator
//!   kept: the tensors are cut to them and `rank_pattern` (`<model path>.lora_E` → one bool per
//!   starting triplet) says which, while the scale stays `lora_alpha / init_r`. Before that every
//!   triplet is written, the pruned ones with `λ = 0`.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use burn::module::Param;
use burn::nn::DropoutConfig;
use burn::tensor::{Tensor, TensorData};

use kiln_models::adalora::host;
use kiln_models::weights::kiln_name_for;
use kiln_models::{RankAllocation, SequenceClassifier, SvdDelta, WeightFile};
use kiln_tuning::{ParamReport, set_trainable};

use super::lora::backbone_names;
use super::{
    PEFT_WEIGHTS_FILE, PeftExport, is_bert_sequence_classifier, read_peft_config, transposed,
    write_peft_config, write_peft_weights, yes,
};
use super::{
    classifier_tensors, hf_module_of, is_classifier_tensor, load_classifier, read_classifier,
    task_type,
};
use crate::error::{Result, TrainError};

/// The fields of peft's `AdaLoraConfig` kiln writes and reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftAdaLoraConfig {
    /// `ADALORA`.
    pub peft_type: String,
    /// peft's task type.
    pub task_type: Option<String>,
    /// The starting rank.
    pub init_r: usize,
    /// The average rank at the end.
    pub target_r: usize,
    /// peft's `r` (AdaLoRA uses `init_r`; kiln writes the same).
    #[serde(default)]
    pub r: usize,
    /// The update is scaled by `lora_alpha / init_r`.
    pub lora_alpha: f64,
    /// Dropout on the update's input.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module names.
    pub target_modules: serde_json::Value,
    /// Steps before the budget falls.
    #[serde(default)]
    pub tinit: usize,
    /// Steps at the end with the budget fixed.
    #[serde(default)]
    pub tfinal: usize,
    /// Steps between allocations.
    #[serde(default = "one", rename = "deltaT")]
    pub delta_t: usize,
    /// Smoothing of the importance.
    #[serde(default = "beta")]
    pub beta1: f64,
    /// Smoothing of its uncertainty.
    #[serde(default = "beta")]
    pub beta2: f64,
    /// Weight of the orthogonality regulariser.
    #[serde(default = "half")]
    pub orth_reg_weight: f64,
    /// The training's total steps (peft requires it).
    #[serde(default)]
    pub total_step: Option<usize>,
    /// The kept triplets per module, once final.
    #[serde(default)]
    pub rank_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    /// The base weights are stored `[in, out]` (GPT-2's Conv1D).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Modules saved whole (the classifier).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Saved for inference only.
    #[serde(default = "yes")]
    pub inference_mode: bool,
}

fn one() -> usize {
    1
}

fn beta() -> f64 {
    0.85
}

fn half() -> f64 {
    0.5
}

/// Writes `model`'s AdaLoRA updates (and, for a BERT sequence classifier, its head) as a peft
/// adapter directory.
pub fn export_adalora(
    model: &SequenceClassifier,
    out: &Path,
    base_model: &str,
) -> Result<PeftExport> {
    let (table, task_prefix) = backbone_names(model)?;
    let backbone = model.backbone_name();
    let with_classifier = is_bert_sequence_classifier(model);
    let prefix = if with_classifier { task_prefix } else { "" };
    let mut clone = model.clone();
    let mut tensors = Vec::new();
    let mut targets = BTreeSet::new();
    let mut pattern = serde_json::Map::new();
    let mut settings: Option<(usize, f64, f64, RankAllocation, f64)> = None;
    let mut total_steps = 0;
    for (path, projection) in clone.projections_mut() {
        let Some(delta) = projection.adalora.as_ref() else {
            continue;
        };
        if delta.merged {
            return Err(TrainError::Invalid(format!(
                "{path}: the update is merged into the weight; unmerge before exporting"
            )));
        }
        let rank = delta.rank();
        total_steps = total_steps.max(delta.total_steps);
        settings.get_or_insert((
            rank,
            delta.alpha,
            delta.dropout.prob,
            delta.allocation,
            delta.orth_weight,
        ));
        let module = hf_module_of(table, backbone, &path)?;
        let (p, lambda, q) = (
            host(delta.p.val()),
            host(delta.lambda.val()),
            host(delta.q.val()),
        );
        // A triplet is cut only where the pattern drops it and its λ is zero, so that the
        // file computes what the model does (a best epoch may predate the final pattern).
        let keep: Vec<bool> = match &delta.final_keep {
            Some(keep) => (0..rank).map(|i| keep[i] || lambda[i] != 0.0).collect(),
            None => vec![true; rank],
        };
        let kept: Vec<usize> = (0..rank).filter(|&i| keep[i]).collect();
        let [d_in, _] = delta.p.lazy_shape().dims::<2>();
        let d_out = delta.q.lazy_shape().dims::<2>()[1];
        // peft's layout, cut to the kept triplets.
        let a: Vec<f32> = kept
            .iter()
            .flat_map(|&i| (0..d_in).map(move |row| (row, i)))
            .map(|(row, i)| p[row * rank + i])
            .collect();
        let e: Vec<f32> = kept.iter().map(|&i| lambda[i]).collect();
        let b: Vec<f32> = (0..d_out)
            .flat_map(|o| kept.iter().map(move |&i| (o, i)))
            .map(|(o, i)| q[i * d_out + o])
            .collect();
        let n = kept.len();
        let name = format!("base_model.model.{prefix}{module}");
        tensors.push((format!("{name}.lora_A"), vec![n, d_in], a));
        tensors.push((format!("{name}.lora_B"), vec![d_out, n], b));
        tensors.push((format!("{name}.lora_E"), vec![n, 1], e));
        if delta.final_keep.is_some() {
            pattern.insert(format!("{prefix}{module}.lora_E"), serde_json::json!(keep));
        }
        targets.insert(module);
    }
    let Some((init_r, alpha, dropout, allocation, orth_weight)) = settings else {
        return Err(TrainError::Invalid(
            "the model has no AdaLoRA update to export".into(),
        ));
    };
    if with_classifier {
        tensors.extend(classifier_tensors(model)?);
    }
    write_peft_weights(out, &tensors)?;
    let task_type = task_type(with_classifier);
    let target_modules: Vec<String> = targets.into_iter().collect();
    write_peft_config(
        out,
        &PeftAdaLoraConfig {
            peft_type: "ADALORA".into(),
            task_type: Some(task_type.into()),
            init_r,
            target_r: allocation.target_rank,
            r: init_r,
            lora_alpha: alpha,
            lora_dropout: dropout,
            target_modules: serde_json::json!(target_modules),
            tinit: allocation.warmup_steps,
            tfinal: allocation.final_steps,
            delta_t: allocation.interval,
            beta1: allocation.beta1,
            beta2: allocation.beta2,
            orth_reg_weight: orth_weight,
            total_step: Some(total_steps.max(1)),
            rank_pattern: (!pattern.is_empty()).then_some(pattern),
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

/// Puts the AdaLoRA updates of the peft directory `dir` in `model`'s slots (replacing any),
/// loads its classifier when it has one, and makes the updates and the head trainable.
pub fn import_adalora(
    model: SequenceClassifier,
    dir: &Path,
) -> Result<(SequenceClassifier, ParamReport)> {
    let (config, config_path) = read_peft_config::<PeftAdaLoraConfig>(dir)?;
    if config.peft_type != "ADALORA" || config.init_r == 0 {
        return Err(TrainError::Invalid(format!(
            "{}: not an ADALORA adapter with `init_r` at least 1",
            config_path.display()
        )));
    }
    let (table, task_prefix) = backbone_names(&model)?;
    let backbone = model.backbone_name().to_string();
    let weights_path = dir.join(PEFT_WEIGHTS_FILE);
    let file = WeightFile::open(&weights_path)?;
    let bad = |message: String| TrainError::checkpoint(&weights_path, message);
    let device = model.head.output.weight.lazy_device();
    let allocation = RankAllocation {
        target_rank: config.target_r,
        warmup_steps: config.tinit,
        final_steps: config.tfinal,
        interval: config.delta_t,
        beta1: config.beta1,
        beta2: config.beta2,
    };
    let mut modules = Vec::new();
    let classifier = read_classifier(&file, &weights_path)?;
    for name in file.names() {
        let rest = name
            .strip_prefix("base_model.model.")
            .ok_or_else(|| bad(format!("`{name}` is not a peft AdaLoRA tensor")))?;
        if is_classifier_tensor(rest) {
            continue;
        }
        let Some(module) = rest.strip_suffix(".lora_A") else {
            if rest.ends_with(".lora_B") || rest.ends_with(".lora_E") {
                continue;
            }
            return Err(bad(format!("`{name}`: not an AdaLoRA tensor")));
        };
        let get = |part: &str| {
            let key = format!("base_model.model.{module}.{part}");
            file.get(&key)
                .cloned()
                .ok_or_else(|| bad(format!("`{key}` is missing")))
        };
        let (a, b, e) = (get("lora_A")?, get("lora_B")?, get("lora_E")?);
        let (&[n, d_in], &[d_out, n_b], &[n_e, 1]) =
            (a.shape.as_slice(), b.shape.as_slice(), e.shape.as_slice())
        else {
            return Err(bad(format!("`{module}`'s factors are not matrices")));
        };
        if n != n_b || n != n_e {
            return Err(bad(format!(
                "`{module}`: lora_A, lora_B and lora_E disagree on the rank ({n}, {n_b}, {n_e})"
            )));
        }
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
        modules.push((path, a, b, e, [n, d_in, d_out]));
    }
    if modules.is_empty() {
        return Err(bad("it holds no AdaLoRA updates".into()));
    }
    let mut model = model;
    for (path, projection) in model.projections_mut() {
        projection.adalora = None;
        let Some(i) = modules.iter().position(|(p, ..)| *p == path) else {
            continue;
        };
        let (_, a, b, e, [n, d_in, d_out]) = modules.swap_remove(i);
        if (d_in, d_out) != (projection.d_in(), projection.d_out()) {
            return Err(bad(format!(
                "its update for `{path}` is {d_out} x {d_in}, the projection {} x {}",
                projection.d_out(),
                projection.d_in()
            )));
        }
        let mut delta = SvdDelta::new(
            [d_in, d_out],
            n.max(1),
            config.lora_alpha,
            config.lora_dropout,
            allocation,
            config.orth_reg_weight,
            &device,
        );
        delta.p = Param::from_tensor(transposed(&a.values, [n, d_in], &device));
        delta.q = Param::from_tensor(transposed(&b.values, [d_out, n], &device));
        delta.lambda =
            Param::from_tensor(Tensor::from_data(TensorData::new(e.values, [n]), &device));
        // The scale is peft's `lora_alpha / ranknum`, ranknum the starting rank.
        delta.scale = config.lora_alpha / (config.init_r as f64 + 1e-5);
        delta.dropout = DropoutConfig::new(config.lora_dropout).init();
        delta.total_steps = config.total_step.unwrap_or(0);
        projection.adalora = Some(delta);
    }
    if let Some((path, ..)) = modules.first() {
        return Err(bad(format!(
            "it changes `{path}`, which this model does not have"
        )));
    }
    load_classifier(&mut model, classifier, &weights_path)?;
    Ok(set_trainable(
        model,
        &["*.adalora.*".to_string(), "head.*".to_string()],
    ))
}
