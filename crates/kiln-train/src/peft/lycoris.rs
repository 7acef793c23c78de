//! peft's LoHa and LoKr formats (BERT: peft builds them for `nn.Linear`, not GPT-2's Conv1D).
//!
//! - LoHa: `base_model.model.<module>.hada_w1_a` `[d_out, r]`, `hada_w1_b` `[r, d_in]`,
//!   `hada_w2_a`, `hada_w2_b`: kiln's `loha.v1`, `loha.u1`, `loha.v2`, `loha.u2` transposed.
//! - LoKr: `lokr_w1` `[l, m]`, and `lokr_w2` `[k, n]` or `lokr_w2_a` `[k, r]` and `lokr_w2_b`
//!   `[r, n]`: kiln's `lokr.w1`, `lokr.w2`, `lokr.w2_out`, `lokr.w2_in` transposed.
//!
//! Both scale by `alpha / r`. Rank and module dropout (peft's training-time options, 0 by
//! default), `decompose_both` and per-module patterns are refused on import: kiln trains
//! without them.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use burn::module::Param;
use burn::tensor::Tensor;

use kiln_models::weights::{Layout, kiln_name_for};
use kiln_models::{HadamardDelta, KroneckerDelta, SequenceClassifier, WeightFile};
use kiln_tuning::{ParamReport, set_trainable};

use super::lora::{backbone_names, hf_module};
use super::{
    PEFT_WEIGHTS_FILE, PeftExport, is_bert_sequence_classifier, read_peft_config, transposed,
    write_peft_config, yes,
};
use super::{hf_module_of, is_classifier_tensor, load_classifier, read_classifier, task_type};
use crate::checkpoint::save_params_laid_out;
use crate::error::{Result, TrainError};

/// kiln's parameter name in a slot ↔ peft's tensor suffix; every one is transposed.
const LOHA_NAMES: [(&str, &str); 4] = [
    ("u1", "hada_w1_b"),
    ("v1", "hada_w1_a"),
    ("u2", "hada_w2_b"),
    ("v2", "hada_w2_a"),
];
const LOKR_NAMES: [(&str, &str); 4] = [
    ("w1", "lokr_w1"),
    ("w2", "lokr_w2"),
    ("w2_in", "lokr_w2_b"),
    ("w2_out", "lokr_w2_a"),
];

/// The fields of peft's `LoHaConfig` / `LoKrConfig` kiln writes and reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftLycorisConfig {
    /// `LOHA` or `LOKR`.
    pub peft_type: String,
    /// peft's task type (`SEQ_CLS`, `FEATURE_EXTRACTION`).
    pub task_type: Option<String>,
    /// The rank.
    pub r: usize,
    /// The update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Module names.
    pub target_modules: serde_json::Value,
    /// Drops rows of the update in training (refused unless 0).
    #[serde(default)]
    pub rank_dropout: f64,
    /// Drops the whole update in training (refused unless 0).
    #[serde(default)]
    pub module_dropout: f64,
    /// LoKr: `W1` factored too (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decompose_both: Option<bool>,
    /// LoKr's factorisation of each width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decompose_factor: Option<i64>,
    /// Per-module ranks (refused unless empty).
    #[serde(default)]
    pub rank_pattern: serde_json::Map<String, serde_json::Value>,
    /// Per-module alphas (refused unless empty).
    #[serde(default)]
    pub alpha_pattern: serde_json::Map<String, serde_json::Value>,
    /// Modules saved whole beside the update (the classifier).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Saved for inference only.
    #[serde(default = "yes")]
    pub inference_mode: bool,
}

/// What a projection's LoHa or LoKr update tells peft's config: its type, rank, scale, LoKr's
/// decompose factor, and whether it is merged.
type Slot = (&'static str, usize, f64, Option<i64>, bool);

fn slot(projection: &kiln_models::TunableLinear) -> Option<Slot> {
    if let Some(loha) = &projection.loha {
        return Some(("LOHA", loha.rank(), loha.scale, None, loha.merged));
    }
    projection.lokr.as_ref().map(|lokr| {
        let factor = Some(lokr.decompose_factor);
        ("LOKR", lokr.rank, lokr.scale, factor, lokr.merged)
    })
}

/// Whether any projection of `model` holds a LoHa or LoKr update.
pub(crate) fn has_lycoris(model: &SequenceClassifier) -> bool {
    model
        .clone()
        .projections_mut()
        .iter()
        .any(|(_, p)| slot(p).is_some())
}

/// Writes `model`'s LoHa or LoKr updates (and, for a BERT sequence classifier, its head) as a
/// peft adapter directory.
pub fn export_lycoris(
    model: &SequenceClassifier,
    out: &Path,
    base_model: &str,
) -> Result<PeftExport> {
    if model.gpt2.is_some() {
        return Err(TrainError::Invalid(
            "peft builds LoHa and LoKr for nn.Linear only, not GPT-2's Conv1D: this run stays \
             in kiln's format (or `kiln merge` it)"
                .into(),
        ));
    }
    let (table, task_prefix) = backbone_names(model)?;
    let backbone = model.backbone_name();
    let with_classifier = is_bert_sequence_classifier(model);
    let prefix = if with_classifier { task_prefix } else { "" };
    let mut clone = model.clone();
    let mut settings = BTreeSet::new();
    let mut target_modules = BTreeSet::new();
    for (path, projection) in clone.projections_mut() {
        let Some((kind, rank, scale, factor, merged)) = slot(projection) else {
            continue;
        };
        if merged {
            return Err(TrainError::Invalid(format!(
                "{path}: the update is merged into the weight; unmerge before exporting"
            )));
        }
        // f64 has no order: the scale goes in as its bits.
        settings.insert((kind, rank, scale.to_bits(), factor));
        let module = hf_module_of(table, backbone, &path)?;
        target_modules.insert(module);
    }
    let Some(&(kind, rank, scale, decompose_factor)) = settings.first() else {
        return Err(TrainError::Invalid(
            "the model has no LoHa or LoKr update to export".into(),
        ));
    };
    if settings.len() > 1 {
        return Err(TrainError::Invalid(
            "peft's config holds one type, rank and alpha; this model's updates differ".into(),
        ));
    }
    let scale = f64::from_bits(scale);
    let names: &[(&str, &str)] = if kind == "LOHA" {
        &LOHA_NAMES
    } else {
        &LOKR_NAMES
    };
    let slot_name = if kind == "LOHA" { ".loha." } else { ".lokr." };
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let tensors = save_params_laid_out(model, &out.join(PEFT_WEIGHTS_FILE), |path| {
        if let Some(rest) = path
            .strip_prefix(backbone)
            .and_then(|p| p.strip_prefix('.'))
        {
            let (projection, param) = rest.split_once(slot_name)?;
            let (_, peft) = names.iter().find(|(kiln, _)| *kiln == param)?;
            let module = hf_module(table, projection)?;
            return Some((
                format!("base_model.model.{prefix}{module}.{peft}"),
                Layout::Transposed,
            ));
        }
        if !with_classifier {
            return None;
        }
        match path {
            "head.output.weight" => Some((
                "base_model.model.classifier.weight".into(),
                Layout::Transposed,
            )),
            "head.output.bias" => Some(("base_model.model.classifier.bias".into(), Layout::Same)),
            _ => None,
        }
    })?;
    let task_type = task_type(with_classifier);
    let target_modules: Vec<String> = target_modules.into_iter().collect();
    write_peft_config(
        out,
        &PeftLycorisConfig {
            peft_type: kind.into(),
            task_type: Some(task_type.into()),
            r: rank,
            alpha: scale * rank as f64,
            target_modules: serde_json::json!(target_modules),
            rank_dropout: 0.0,
            module_dropout: 0.0,
            decompose_both: (kind == "LOKR").then_some(false),
            decompose_factor,
            rank_pattern: Default::default(),
            alpha_pattern: Default::default(),
            modules_to_save: with_classifier.then(|| vec!["classifier".into()]),
            base_model_name_or_path: Some(base_model.into()),
            inference_mode: true,
        },
    )?;
    Ok(PeftExport {
        task_type,
        target_modules,
        tensors,
        with_classifier,
    })
}

/// Puts the updates of the peft LoHa or LoKr directory `dir` in `model`'s slots (replacing any;
/// projections it leaves alone get none), loads its classifier when it has one, and makes the
/// updates and the head trainable.
pub fn import_lycoris(
    model: SequenceClassifier,
    dir: &Path,
) -> Result<(SequenceClassifier, ParamReport)> {
    let (config, config_path) = read_peft_config::<PeftLycorisConfig>(dir)?;
    let refuse = |field: &str, why: &str| {
        Err(TrainError::Invalid(format!(
            "{}: `{field}` {why}",
            config_path.display()
        )))
    };
    let loha = match config.peft_type.as_str() {
        "LOHA" => true,
        "LOKR" => false,
        other => return refuse("peft_type", &format!("is {other}, not LOHA or LOKR")),
    };
    if config.rank_dropout != 0.0 || config.module_dropout != 0.0 {
        return refuse(
            "rank_dropout",
            "/ `module_dropout` are not 0: kiln trains LoHa and LoKr without them",
        );
    }
    if config.decompose_both == Some(true) {
        return refuse("decompose_both", "is true: kiln's LoKr keeps W1 whole");
    }
    if !config.rank_pattern.is_empty() || !config.alpha_pattern.is_empty() {
        return refuse(
            "rank_pattern",
            "/ `alpha_pattern` give per-module ranks; kiln's updates share one",
        );
    }
    if config.r == 0 {
        return refuse("r", "is 0");
    }
    let scale = config.alpha / config.r as f64;
    let (table, task_prefix) = backbone_names(&model)?;
    let backbone = model.backbone_name().to_string();
    let weights_path = dir.join(PEFT_WEIGHTS_FILE);
    let file = WeightFile::open(&weights_path)?;
    let bad = |message: String| TrainError::checkpoint(&weights_path, message);
    let device = model.head.output.weight.lazy_device();
    let names: &[(&str, &str)] = if loha { &LOHA_NAMES } else { &LOKR_NAMES };
    // Each module's tensors, by kiln's parameter name, in kiln's layout.
    let mut modules: Vec<(String, Vec<(&str, Tensor<2>)>)> = Vec::new();
    let classifier = read_classifier(&file, &weights_path)?;
    for name in file.names() {
        let rest = name
            .strip_prefix("base_model.model.")
            .ok_or_else(|| bad(format!("`{name}` is not a peft tensor")))?;
        if is_classifier_tensor(rest) {
            continue;
        }
        let Some((module, kiln_param)) = names.iter().find_map(|(kiln, peft)| {
            rest.strip_suffix(&format!(".{peft}"))
                .map(|module| (module, *kiln))
        }) else {
            return Err(bad(format!("`{name}`: not a {} tensor", config.peft_type)));
        };
        let raw = file.get(name).expect("listed");
        let &[rows, cols] = raw.shape.as_slice() else {
            return Err(bad(format!("`{name}` is {:?}, not a matrix", raw.shape)));
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
        let tensor = transposed(&raw.values, [rows, cols], &device);
        match modules.iter_mut().find(|(p, _)| *p == path) {
            Some((_, tensors)) => tensors.push((kiln_param, tensor)),
            None => modules.push((path, vec![(kiln_param, tensor)])),
        }
    }
    if modules.is_empty() {
        return Err(bad(format!("it holds no {} tensors", config.peft_type)));
    }
    let mut model = model;
    for (path, projection) in model.projections_mut() {
        projection.loha = None;
        projection.lokr = None;
        let Some(i) = modules.iter().position(|(p, _)| *p == path) else {
            continue;
        };
        let (_, mut tensors) = modules.swap_remove(i);
        let mut take = |name: &str| {
            tensors
                .iter()
                .position(|(n, _)| *n == name)
                .map(|i| Param::from_tensor(tensors.swap_remove(i).1))
        };
        let missing = |what: &str| bad(format!("`{path}`: its `{what}` is missing"));
        let (d_in, d_out) = (projection.d_in(), projection.d_out());
        let misfit = |what: &str| {
            bad(format!(
                "its {what} for `{path}` do not build the projection's {d_in} x {d_out} update"
            ))
        };
        let dims = |p: &Param<Tensor<2>>| p.lazy_shape().dims::<2>();
        if loha {
            let delta = HadamardDelta {
                u1: take("u1").ok_or_else(|| missing("hada_w1_b"))?,
                v1: take("v1").ok_or_else(|| missing("hada_w1_a"))?,
                u2: take("u2").ok_or_else(|| missing("hada_w2_b"))?,
                v2: take("v2").ok_or_else(|| missing("hada_w2_a"))?,
                scale,
                merged: false,
            };
            let r = config.r;
            let fits = [(&delta.u1, [d_in, r]), (&delta.v1, [r, d_out])]
                .into_iter()
                .chain([(&delta.u2, [d_in, r]), (&delta.v2, [r, d_out])])
                .all(|(p, want)| dims(p) == want);
            if !fits {
                return Err(misfit("hada_w matrices"));
            }
            projection.loha = Some(delta);
        } else {
            let w1 = take("w1").ok_or_else(|| missing("lokr_w1"))?;
            let (w2, w2_in, w2_out) = (take("w2"), take("w2_in"), take("w2_out"));
            let [m, l] = dims(&w1);
            let [n, k] = match (&w2, &w2_in, &w2_out) {
                (Some(w2), _, _) => dims(w2),
                (None, Some(a), Some(b)) if dims(a)[1] == dims(b)[0] => [dims(a)[0], dims(b)[1]],
                (None, Some(_), Some(_)) => return Err(misfit("lokr_w2_a and lokr_w2_b")),
                _ => return Err(missing("lokr_w2")),
            };
            if m * n != d_in || l * k != d_out {
                return Err(misfit("lokr_w1 and lokr_w2"));
            }
            projection.lokr = Some(KroneckerDelta {
                w1,
                w2,
                w2_in,
                w2_out,
                rank: config.r,
                decompose_factor: config.decompose_factor.unwrap_or(-1),
                scale,
                merged: false,
            });
        }
    }
    if let Some((path, _)) = modules.first() {
        return Err(bad(format!(
            "it changes `{path}`, which this model does not have"
        )));
    }
    load_classifier(&mut model, classifier, &weights_path)?;
    let pattern = if loha { "*.loha.*" } else { "*.lokr.*" };
    Ok(set_trainable(
        model,
        &[pattern.to_string(), "head.*".to_string()],
    ))
}
