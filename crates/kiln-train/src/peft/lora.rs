//! peft's LoRA format.
//!
//! - Tensors: `base_model.model.<module>.lora_A.weight` `[r, d_in]` and `lora_B.weight`
//!   `[d_out, r]`, the transposes of kiln's `lora.a` `[d_in, r]` and `lora.b` `[r, d_out]`, and
//!   DoRA's `lora_magnitude_vector` `[d_out]` (kiln's `lora.magnitude`); `<module>` is the HF
//!   module path (`bert.encoder.layer.0.attention.self.query` under
//!   `BertForSequenceClassification`, `h.0.attn.c_attn` under `GPT2Model`).
//! - rsLoRA and DoRA are `use_rslora` and `use_dora`. A delta that PiSSA or OLoRA started took
//!   part of the base weight with it; it exports as peft's `save_pretrained(...,
//!   path_initial_model_for_weight_conversion=...)` writes it, a rank-`2r` LoRA of the original
//!   base (`[A, A0]`, `[B; -B0]`, alpha doubled, or times sqrt(2) with rsLoRA).
//! - `target_modules` lists the HF module paths without the task prefix: peft matches them as
//!   suffixes, so they name exactly the projections that carry deltas, under either base class.
//!
//! Importing reads the same files into any kiln model of the same backbone: a delta for each
//! `lora_A`/`lora_B` pair (rank, `lora_alpha`, `lora_dropout`, `use_rslora`, `use_dora` from the
//! config), and the classifier when there is one; into the model's LoRA slots (`import_lora`)
//! or served by name beside other adapters (`load_lora_adapter`, plain LoRA only). An adapter
//! saved unconverted from a PiSSA/OLoRA start (`init_lora_weights` names it) is relative to
//! residual base weights the directory does not hold, and is refused.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};

use kiln_models::weights::{KeyTable, Layout, RawTensor, hf_name_for, kiln_name_for};
use kiln_models::{LowRankConfig, LowRankDelta, SequenceClassifier, WeightFile};
use kiln_models::{bert::BERT_KEYS, gpt2::GPT2_KEYS};
use kiln_tuning::{ParamReport, set_trainable};

use super::{
    PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, PeftExport, is_bert_sequence_classifier, read_peft_config,
    set_head, write_peft_config, yes,
};
use crate::checkpoint::save_params_laid_out;
use crate::error::{Result, TrainError};

/// The fields of peft's `LoraConfig` kiln writes and reads (peft fills the rest with defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftLoraConfig {
    /// `LORA`.
    pub peft_type: String,
    /// peft's task type (`SEQ_CLS`, `FEATURE_EXTRACTION`).
    pub task_type: Option<String>,
    /// The rank.
    pub r: usize,
    /// The delta is scaled by `lora_alpha / r` (or `/ sqrt(r)` with rsLoRA).
    pub lora_alpha: f64,
    /// Dropout on the delta's input.
    #[serde(default)]
    pub lora_dropout: f64,
    /// A list of module names; peft also allows one regular expression, which kiln refuses.
    pub target_modules: serde_json::Value,
    /// The base weights are stored `[in, out]` (GPT-2's Conv1D).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Which biases train: kiln writes `none` and refuses anything else on import.
    #[serde(default = "no_bias")]
    pub bias: String,
    /// Modules saved whole beside the deltas (the classifier).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// rsLoRA scaling, `alpha / sqrt(r)`.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA: a magnitude per output over the normalised weight.
    #[serde(default)]
    pub use_dora: bool,
    /// How the adapter started: `true` (peft's default), `false`, `gaussian`, or a start that
    /// moved part of the base (`pissa`, `olora`, ...), which kiln refuses on import.
    #[serde(default = "default_init")]
    pub init_lora_weights: serde_json::Value,
    /// Per-module ranks (refused on import unless empty).
    #[serde(default)]
    pub rank_pattern: serde_json::Map<String, serde_json::Value>,
    /// Per-module alphas (refused on import unless empty).
    #[serde(default)]
    pub alpha_pattern: serde_json::Map<String, serde_json::Value>,
    /// Saved for inference only.
    #[serde(default = "yes")]
    pub inference_mode: bool,
}

fn no_bias() -> String {
    "none".into()
}

fn default_init() -> serde_json::Value {
    serde_json::Value::Bool(true)
}

/// The backbone's key table and the prefix its HF task class puts before module paths.
pub(super) fn backbone_names(model: &SequenceClassifier) -> Result<(KeyTable, &'static str)> {
    match (&model.bert, &model.gpt2) {
        (Some(_), _) => Ok((BERT_KEYS, "bert.")),
        (_, Some(_)) => Ok((GPT2_KEYS, "transformer.")),
        _ => Err(TrainError::Invalid(
            "peft's format has no M2-BERT model class; LoRA on M2-BERT stays in kiln's format"
                .into(),
        )),
    }
}

/// `bert.layers.0.attention.query.lora.a` → (`layers.0.attention.query`, `lora_A.weight`), with
/// the layout peft stores the tensor in.
fn split_lora_path<'a>(path: &'a str, backbone: &str) -> Option<(&'a str, &'static str, Layout)> {
    let rest = path.strip_prefix(backbone)?.strip_prefix('.')?;
    [
        (".lora.a", "lora_A.weight", Layout::Transposed),
        (".lora.b", "lora_B.weight", Layout::Transposed),
        (".lora.magnitude", "lora_magnitude_vector", Layout::Same),
    ]
    .into_iter()
    .find_map(|(kiln, peft, layout)| rest.strip_suffix(kiln).map(|p| (p, peft, layout)))
}

/// The HF module path of a kiln projection path (`layers.0.attention.query` →
/// `encoder.layer.0.attention.self.query`).
pub(super) fn hf_module(table: KeyTable, projection: &str) -> Option<String> {
    let (weight, _) = hf_name_for(table, &format!("{projection}.weight"))?;
    weight.strip_suffix(".weight").map(str::to_string)
}

/// Writes `model`'s LoRA deltas (and, for a BERT sequence classifier, its head) as a peft
/// adapter directory. `base_model` goes into the config as `base_model_name_or_path`.
pub fn export_lora(model: &SequenceClassifier, out: &Path, base_model: &str) -> Result<PeftExport> {
    let (table, task_prefix) = backbone_names(model)?;
    let backbone = model.backbone_name();
    let mut model = model.clone();
    // What peft's one config must say of every delta: rank, alpha, rsLoRA, DoRA, dropout.
    let mut deltas = Vec::new();
    for (path, projection) in model.projections_mut() {
        let Some(delta) = projection.lora.as_mut() else {
            continue;
        };
        if delta.merged {
            return Err(TrainError::Invalid(format!(
                "{path}: the delta is merged into the weight; unmerge before exporting"
            )));
        }
        if delta.start.is_some() && delta.magnitude.is_some() {
            return Err(TrainError::Invalid(format!(
                "{path}: a DoRA delta started by PiSSA/OLoRA has no form relative to the \
                 original base weight (peft cannot convert it either); export it with `kiln \
                 merge` instead"
            )));
        }
        if let Some(converted) = delta.relative_to_original_base() {
            *delta = converted;
        }
        deltas.push((
            path,
            delta.rank(),
            delta.alpha(),
            delta.rank_stabilized,
            delta.magnitude.is_some(),
            delta.dropout.prob,
        ));
    }
    let (embedding_path, embedding) = model.word_embedding_mut();
    if let Some(delta) = embedding.lora.as_ref() {
        if delta.merged {
            return Err(TrainError::Invalid(format!(
                "{embedding_path}: the delta is merged into the table; unmerge before exporting"
            )));
        }
        // peft's embedding delta has no dropout; the config's is the projections'.
        let dropout = deltas.first().map_or(0.0, |d| d.5);
        deltas.push((
            embedding_path.clone(),
            delta.rank(),
            delta.alpha(),
            delta.rank_stabilized,
            false,
            dropout,
        ));
    }
    let embedding_local = embedding_path
        .strip_prefix(backbone)
        .and_then(|p| p.strip_prefix('.'))
        .unwrap_or(&embedding_path)
        .to_string();
    let Some(&(_, rank, alpha, rslora, dora, dropout)) = deltas.first() else {
        return Err(TrainError::Invalid(
            "the model has no LoRA delta to export".into(),
        ));
    };
    if let Some((path, ..)) = deltas
        .iter()
        .find(|&&(_, r, a, rs, d, p)| (r, a, rs, d, p) != (rank, alpha, rslora, dora, dropout))
    {
        return Err(TrainError::Invalid(format!(
            "{path}: peft's config holds one rank, alpha, dropout, rsLoRA and DoRA setting, and \
             this delta's differ from the first one's"
        )));
    }
    let with_classifier = is_bert_sequence_classifier(&model);
    // Under BertModel / GPT2Model the module paths have no task prefix.
    let prefix = if with_classifier { task_prefix } else { "" };
    let mut target_modules = BTreeSet::new();
    for (path, ..) in &deltas {
        let projection = path
            .strip_prefix(backbone)
            .and_then(|p| p.strip_prefix('.'))
            .unwrap_or(path);
        let module = hf_module(table, projection).ok_or_else(|| {
            TrainError::Invalid(format!(
                "{path}: no HF module corresponds to this projection"
            ))
        })?;
        target_modules.insert(module);
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let tensors = save_params_laid_out(&model, &out.join(PEFT_WEIGHTS_FILE), |path| {
        if let Some((projection, tensor, layout)) = split_lora_path(path, backbone) {
            let module = hf_module(table, projection)?;
            // peft's embedding delta: `lora_embedding_A` `[r, vocab]`, `lora_embedding_B` `[h, r]`.
            let tensor = match (projection == embedding_local, tensor) {
                (true, "lora_A.weight") => "lora_embedding_A",
                (true, "lora_B.weight") => "lora_embedding_B",
                _ => tensor,
            };
            return Some((
                format!("base_model.model.{prefix}{module}.{tensor}"),
                layout,
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
    let task_type = if with_classifier {
        "SEQ_CLS"
    } else {
        "FEATURE_EXTRACTION"
    };
    let target_modules: Vec<String> = target_modules.into_iter().collect();
    let config = PeftLoraConfig {
        peft_type: "LORA".into(),
        task_type: Some(task_type.into()),
        r: rank,
        lora_alpha: alpha,
        lora_dropout: dropout,
        target_modules: serde_json::json!(target_modules),
        // HF GPT-2's Conv1D stores `[in, out]`: peft must be told.
        fan_in_fan_out: model.gpt2.is_some(),
        bias: no_bias(),
        modules_to_save: with_classifier.then(|| vec!["classifier".into()]),
        base_model_name_or_path: Some(base_model.into()),
        use_rslora: rslora,
        use_dora: dora,
        init_lora_weights: default_init(),
        rank_pattern: Default::default(),
        alpha_pattern: Default::default(),
        inference_mode: true,
    };
    write_peft_config(out, &config)?;
    Ok(PeftExport {
        task_type,
        target_modules,
        tensors,
        with_classifier,
    })
}

/// Reads a peft LoRA directory's config, refusing what kiln cannot represent.
pub fn read_lora_config(dir: &Path) -> Result<PeftLoraConfig> {
    // The type first: another type's config lacks LoRA's fields, and that is the news.
    let (header, path) = read_peft_config::<serde_json::Value>(dir)?;
    let refuse = |field: &str, why: &str| {
        Err(TrainError::Invalid(format!(
            "{}: `{field}` {why}",
            path.display()
        )))
    };
    let peft_type = header["peft_type"].as_str().unwrap_or("missing");
    if peft_type != "LORA" {
        return refuse(
            "peft_type",
            &format!("is {peft_type}; this needs a LORA adapter"),
        );
    }
    let (config, _) = read_peft_config::<PeftLoraConfig>(dir)?;
    if let Some(init) = config.init_lora_weights.as_str()
        && init != "gaussian"
    {
        return refuse(
            "init_lora_weights",
            &format!(
                "is `{init}`: the adapter is relative to residual base weights its directory \
                 does not hold; save it from peft with `path_initial_model_for_weight_conversion` \
                 for a LoRA of the original base"
            ),
        );
    }
    if !config.rank_pattern.is_empty() || !config.alpha_pattern.is_empty() {
        return refuse(
            "rank_pattern",
            "/ `alpha_pattern` give per-module ranks; kiln's deltas share one",
        );
    }
    if config.bias != "none" {
        return refuse("bias", "trains biases; kiln's LoRA does not");
    }
    if config.r == 0 {
        return refuse("r", "is 0");
    }
    Ok(config)
}

/// A peft LoRA directory read against a model: each delta by full projection path, and the
/// classifier (`[c, h]` weight, bias) when the adapter has one.
struct ReadAdapter {
    deltas: Vec<(String, LowRankDelta)>,
    /// The token embedding's delta (peft's `lora_embedding_A`/`B`).
    embedding: Option<LowRankDelta>,
    classifier: Option<(RawTensor, RawTensor)>,
}

fn read_adapter(model: &SequenceClassifier, dir: &Path) -> Result<ReadAdapter> {
    let config = read_lora_config(dir)?;
    let (table, task_prefix) = backbone_names(model)?;
    let backbone = model.backbone_name();
    let weights_path = dir.join(PEFT_WEIGHTS_FILE);
    let file = WeightFile::open(&weights_path)?;
    let device = model.head.output.weight.lazy_device();
    let bad = |message: String| TrainError::checkpoint(&weights_path, message);
    let delta_config = LowRankConfig {
        rank_stabilized: config.use_rslora,
        dora: config.use_dora,
        ..LowRankConfig::new(config.r, config.lora_alpha, config.lora_dropout)
    };
    let matrix = |name: &str, rows: usize| -> Result<Tensor<2>> {
        let raw = file
            .get(name)
            .ok_or_else(|| bad(format!("`{name}` is missing")))?;
        match raw.shape.as_slice() {
            // Stored `[out, in]` as PyTorch's Linear: kiln's layout is the transpose.
            &[out, inner] if out == rows || inner == rows => {
                Ok(super::transposed(&raw.values, [out, inner], &device))
            }
            other => Err(bad(format!(
                "`{name}` is {other:?}, not a rank-{rows} matrix"
            ))),
        }
    };
    let mut deltas = Vec::new();
    let mut embedding = None;
    let mut classifier = None;
    for name in file.names() {
        let rest = name
            .strip_prefix("base_model.model.")
            .ok_or_else(|| bad(format!("`{name}` is not a peft LoRA tensor")))?;
        if rest == "classifier.weight" {
            let bias = file
                .get("base_model.model.classifier.bias")
                .ok_or_else(|| bad("`classifier.bias` is missing".into()))?;
            let weight = file.get(name).cloned().expect("listed by the file");
            classifier = Some((weight, bias.clone()));
            continue;
        }
        if rest == "classifier.bias" {
            continue;
        }
        if let Some(module) = rest.strip_suffix(".lora_embedding_A") {
            let b_name = format!("base_model.model.{module}.lora_embedding_B");
            let a = matrix(name, config.r)?;
            let b = matrix(&b_name, config.r)?;
            if a.dims()[1] != config.r || b.dims()[0] != config.r {
                return Err(bad(format!(
                    "`{module}`: its embedding matrices are not of rank {}",
                    config.r
                )));
            }
            embedding = Some(LowRankDelta::from_matrices(
                a,
                b,
                LowRankConfig {
                    dora: false,
                    ..delta_config
                },
            ));
            continue;
        }
        let Some(module) = rest.strip_suffix(".lora_A.weight") else {
            if rest.ends_with(".lora_B.weight")
                || rest.ends_with(".lora_magnitude_vector")
                || rest.ends_with(".lora_embedding_B")
            {
                continue;
            }
            return Err(bad(format!("`{name}`: not a LoRA matrix")));
        };
        let local = module.strip_prefix(task_prefix).unwrap_or(module);
        let (kiln, _) = kiln_name_for(table, &format!("{local}.weight")).ok_or_else(|| {
            bad(format!(
                "`{name}`: no {backbone} projection is called `{local}`"
            ))
        })?;
        let projection = kiln.strip_suffix(".weight").unwrap_or(&kiln);
        let a = matrix(name, config.r)?;
        let b = matrix(
            &format!("base_model.model.{module}.lora_B.weight"),
            config.r,
        )?;
        if a.dims()[1] != config.r || b.dims()[0] != config.r {
            return Err(bad(format!(
                "`{module}`: its matrices are not of rank {} (`r` in {PEFT_CONFIG_FILE})",
                config.r
            )));
        }
        let d_out = b.dims()[1];
        let mut delta = LowRankDelta::from_matrices(a, b, delta_config);
        if config.use_dora {
            let name = format!("base_model.model.{module}.lora_magnitude_vector");
            let raw = file
                .get(&name)
                .ok_or_else(|| bad(format!("`{name}` is missing (`use_dora` is true)")))?;
            if raw.shape != [d_out] {
                return Err(bad(format!(
                    "`{name}` is {:?}, not the projection's {d_out} outputs",
                    raw.shape
                )));
            }
            delta.magnitude = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(raw.values.clone(), [d_out]),
                &device,
            )));
        }
        deltas.push((format!("{backbone}.{projection}"), delta));
    }
    if deltas.is_empty() && embedding.is_none() {
        return Err(bad("it holds no LoRA matrices".into()));
    }
    Ok(ReadAdapter {
        deltas,
        embedding,
        classifier,
    })
}

/// Puts the deltas of the peft LoRA directory `dir` in `model`'s LoRA slots (replacing any
/// there; projections the adapter leaves alone get none), loads its classifier when it has one,
/// and makes the deltas and the head trainable: the adapter, ready to evaluate, train further,
/// merge or export. The backbone must be the one it was trained on.
pub fn import_lora(
    model: SequenceClassifier,
    dir: &Path,
) -> Result<(SequenceClassifier, ParamReport)> {
    let ReadAdapter {
        deltas,
        embedding,
        classifier,
    } = read_adapter(&model, dir)?;
    if classifier.is_some() && !is_bert_sequence_classifier(&model) {
        return Err(TrainError::checkpoint(
            dir.join(PEFT_WEIGHTS_FILE),
            "it holds a BertForSequenceClassification classifier: build the model with \
             `--readout pooler` and a one-layer head to load it",
        ));
    }
    let mut model = model;
    if let Some((path, _)) = model
        .projections_mut()
        .into_iter()
        .find(|(_, p)| p.lora.as_ref().is_some_and(|d| d.start.is_some()))
    {
        return Err(TrainError::Invalid(format!(
            "{path}: a PiSSA/OLoRA start moved part of the base weight into the delta the \
             adapter would replace; start from the adapter with the default `--lora-init`"
        )));
    }
    let mut deltas = deltas;
    // The model's LoRA slots become the adapter's: a delta where it has one, none elsewhere.
    for (path, projection) in model.projections_mut() {
        projection.lora = deltas
            .iter()
            .position(|(p, _)| *p == path)
            .map(|i| deltas.swap_remove(i).1);
    }
    if let Some((path, _)) = deltas.first() {
        return Err(TrainError::checkpoint(
            dir.join(PEFT_WEIGHTS_FILE),
            format!("it changes `{path}`, which this model does not have"),
        ));
    }
    model.word_embedding_mut().1.lora = embedding;
    if let Some((weight, bias)) = classifier {
        set_head(&mut model, weight, bias, &dir.join(PEFT_WEIGHTS_FILE))?;
    }
    Ok(set_trainable(
        model,
        &["*.lora.*".to_string(), "head.*".to_string()],
    ))
}

/// Serves the peft LoRA adapter in `dir` on `model` under `name`, beside the adapters already
/// there (see `SequenceClassifier::add_lora_adapter`); it starts inactive. The served adapters
/// share the model's head: a classifier in the adapter is not loaded (the returned flag says
/// whether there was one).
pub fn load_lora_adapter(model: &mut SequenceClassifier, name: &str, dir: &Path) -> Result<bool> {
    let ReadAdapter {
        deltas,
        embedding,
        classifier,
    } = read_adapter(model, dir)?;
    if embedding.is_some() {
        return Err(TrainError::checkpoint(
            dir.join(PEFT_WEIGHTS_FILE),
            "it changes the token embedding, which served adapters leave to the base; import \
             it on its own",
        ));
    }
    model.add_lora_adapter(name, deltas)?;
    Ok(classifier.is_some())
}

/// Writes a combined LoRA (`crate::lora_arithmetic`) as a peft directory: `first`'s config with
/// rank `rank`, `lora_alpha = rank` (scale 1), the union of the modules as targets, no head.
pub(crate) fn write_combined(
    out: &Path,
    first: &PeftLoraConfig,
    rank: usize,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<()> {
    let modules: BTreeSet<String> = tensors
        .iter()
        .filter_map(|(name, _, _)| name.strip_suffix(".lora_A.weight"))
        .map(|m| {
            let m = m.strip_prefix("base_model.model.").unwrap_or(m);
            m.strip_prefix("bert.")
                .or_else(|| m.strip_prefix("transformer."))
                .unwrap_or(m)
                .to_string()
        })
        .collect();
    let config = PeftLoraConfig {
        r: rank,
        lora_alpha: rank as f64,
        target_modules: serde_json::json!(modules.into_iter().collect::<Vec<_>>()),
        modules_to_save: None,
        use_rslora: false,
        rank_pattern: Default::default(),
        alpha_pattern: Default::default(),
        init_lora_weights: default_init(),
        inference_mode: true,
        ..first.clone()
    };
    super::write_peft_weights(out, tensors)?;
    write_peft_config(out, &config)
}
