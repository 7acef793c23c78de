//! HF peft's directory format for LoRA, prompt tuning and prefix tuning, both ways:
//! `adapter_config.json` and `adapter_model.safetensors`, which
//! `PeftModel.from_pretrained(base, dir)` loads in Python.
//!
//! Prefix tuning is GPT-2 only: peft passes the prefixes as `past_key_values`, which
//! transformers 5's BERT does not take, and HF GPT-2 then numbers the real tokens after the
//! prefix, so a kiln run must be trained with `--prefix-positions` to give peft's outputs.
//! `prompt_embeddings` `[n, L·2·h]` holds, per virtual token, each layer's key row then value
//! row; kiln's folded prefix-tuning prefixes and P-tuning v2's deep prompts both write to it
//! (peft's `prefix_projection` MLP is folded away, as kiln folds its own).
//!
//! - Tensors: `base_model.model.<module>.lora_A.weight` `[r, d_in]` and `lora_B.weight`
//!   `[d_out, r]`, the transposes of kiln's `lora.a` `[d_in, r]` and `lora.b` `[r, d_out]`;
//!   `<module>` is the HF module path (`bert.encoder.layer.0.attention.self.query` under
//!   `BertForSequenceClassification`, `h.0.attn.c_attn` under `GPT2Model`).
//! - A BERT classifier that reads BERT's pooler through one linear layer is exactly HF's
//!   `BertForSequenceClassification`: it exports as task `SEQ_CLS` with the head as peft's
//!   `modules_to_save` classifier. Any other model exports its deltas for the base model alone
//!   (task `FEATURE_EXTRACTION`, `BertModel` / `GPT2Model`); kiln's head then has no peft
//!   counterpart (GPT-2's sequence classifier has no bias, kiln's head does) and is not written.
//! - `target_modules` lists the HF module paths without the task prefix: peft matches them as
//!   suffixes, so they name exactly the projections that carry deltas, under either base class.
//!
//! Importing reads the same files into any kiln model of the same backbone: a delta for each
//! `lora_A`/`lora_B` pair (rank, `lora_alpha`, `lora_dropout` from the config; rsLoRA's
//! `alpha/sqrt(r)` scale kept), and the classifier when there is one; into the model's LoRA
//! slots (`import_lora`) or served by name beside other adapters (`load_lora_adapter`).

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};

use kiln_models::weights::{KeyTable, Layout, RawTensor, hf_name_for, kiln_name_for};
use kiln_models::{
    AdapterConfig, AttentionPrefix, LayerAdapter, LowRankConfig, LowRankDelta, PromptTemplate,
    Readout, SequenceClassifier, SoftPrompt, WeightFile,
};
use kiln_models::{bert::BERT_KEYS, gpt2::GPT2_KEYS};
use kiln_tuning::{ParamReport, set_trainable};

use crate::checkpoint::{f32_bytes, save_params_laid_out, write_atomically, write_f32_tensors};
use crate::error::{Result, TrainError};

pub const PEFT_CONFIG_FILE: &str = "adapter_config.json";
pub const PEFT_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The fields of peft's `LoraConfig` kiln writes and reads (peft fills the rest with defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftLoraConfig {
    pub peft_type: String,
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// A list of module names; peft also allows one regular expression, which kiln refuses.
    pub target_modules: serde_json::Value,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "no_bias")]
    pub bias: String,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub rank_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default = "yes")]
    pub inference_mode: bool,
}

fn no_bias() -> String {
    "none".into()
}

fn yes() -> bool {
    true
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftExport {
    pub task_type: &'static str,
    pub target_modules: Vec<String>,
    pub tensors: usize,
    /// The head went in as peft's classifier.
    pub with_classifier: bool,
}

/// The backbone's key table and the prefix its HF task class puts before module paths.
fn backbone_names(model: &SequenceClassifier) -> Result<(KeyTable, &'static str)> {
    match (&model.bert, &model.gpt2) {
        (Some(_), _) => Ok((BERT_KEYS, "bert.")),
        (_, Some(_)) => Ok((GPT2_KEYS, "transformer.")),
        _ => Err(TrainError::Invalid(
            "peft's format has no M2-BERT model class; LoRA on M2-BERT stays in kiln's format"
                .into(),
        )),
    }
}

/// Whether `model` is HF's `BertForSequenceClassification`: BERT, pooler readout, one linear
/// layer.
fn is_bert_sequence_classifier(model: &SequenceClassifier) -> bool {
    model.bert.is_some() && model.readout == Readout::Pooler && model.head.hidden.is_empty()
}

/// `bert.layers.0.attention.query.lora.a` → (`layers.0.attention.query`, `lora_A`).
fn split_lora_path<'a>(path: &'a str, backbone: &str) -> Option<(&'a str, &'static str)> {
    let rest = path.strip_prefix(backbone)?.strip_prefix('.')?;
    if let Some(projection) = rest.strip_suffix(".lora.a") {
        return Some((projection, "lora_A"));
    }
    rest.strip_suffix(".lora.b").map(|p| (p, "lora_B"))
}

/// The HF module path of a kiln projection path (`layers.0.attention.query` →
/// `encoder.layer.0.attention.self.query`).
fn hf_module(table: KeyTable, projection: &str) -> Option<String> {
    let (weight, _) = hf_name_for(table, &format!("{projection}.weight"))?;
    weight.strip_suffix(".weight").map(str::to_string)
}

/// Writes `model`'s LoRA deltas (and, for a BERT sequence classifier, its head) as a peft
/// adapter directory. `base_model` goes into the config as `base_model_name_or_path`.
pub fn export_lora(model: &SequenceClassifier, out: &Path, base_model: &str) -> Result<PeftExport> {
    let (table, task_prefix) = backbone_names(model)?;
    let backbone = model.backbone_name();
    let mut model = model.clone();
    let mut deltas = Vec::new();
    for (path, projection) in model.projections_mut() {
        if let Some(delta) = projection.lora.as_ref() {
            if delta.merged {
                return Err(TrainError::Invalid(format!(
                    "{path}: the delta is merged into the weight; unmerge before exporting"
                )));
            }
            deltas.push((path, delta.rank(), delta.scale));
        }
    }
    let Some(&(_, rank, scale)) = deltas.first() else {
        return Err(TrainError::Invalid(
            "the model has no LoRA delta to export".into(),
        ));
    };
    if deltas.iter().any(|&(_, r, s)| r != rank || s != scale) {
        return Err(TrainError::Invalid(
            "peft's config holds one rank and alpha; this model's deltas differ".into(),
        ));
    }
    let dropout = model
        .projections_mut()
        .into_iter()
        .find_map(|(_, p)| p.lora.as_ref().map(|d| d.dropout.prob))
        .unwrap_or(0.0);
    let with_classifier = is_bert_sequence_classifier(&model);
    // Under BertModel / GPT2Model the module paths have no task prefix.
    let prefix = if with_classifier { task_prefix } else { "" };
    let mut target_modules = BTreeSet::new();
    for (path, _, _) in &deltas {
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
        if let Some((projection, matrix)) = split_lora_path(path, backbone) {
            let module = hf_module(table, projection)?;
            return Some((
                format!("base_model.model.{prefix}{module}.{matrix}.weight"),
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
        lora_alpha: scale * rank as f64,
        lora_dropout: dropout,
        target_modules: serde_json::json!(target_modules),
        // HF GPT-2's Conv1D stores `[in, out]`: peft must be told.
        fan_in_fan_out: model.gpt2.is_some(),
        bias: no_bias(),
        modules_to_save: with_classifier.then(|| vec!["classifier".into()]),
        base_model_name_or_path: Some(base_model.into()),
        use_rslora: false,
        use_dora: false,
        rank_pattern: Default::default(),
        alpha_pattern: Default::default(),
        inference_mode: true,
    };
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| TrainError::Invalid(e.to_string()))?;
    write_atomically(&out.join(PEFT_CONFIG_FILE), format!("{text}\n").as_bytes())?;
    Ok(PeftExport {
        task_type,
        target_modules,
        tensors,
        with_classifier,
    })
}

/// Reads a peft LoRA directory's config, refusing what kiln cannot represent.
pub fn read_lora_config(dir: &Path) -> Result<PeftLoraConfig> {
    let path = dir.join(PEFT_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let config: PeftLoraConfig = serde_json::from_str(&text)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
    let refuse = |field: &str, why: &str| {
        Err(TrainError::Invalid(format!(
            "{}: `{field}` {why}",
            path.display()
        )))
    };
    if config.peft_type != "LORA" {
        return refuse(
            "peft_type",
            &format!("is {}; kiln imports LORA adapters", config.peft_type),
        );
    }
    if config.use_dora {
        return refuse("use_dora", "is true; kiln has no DoRA");
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
    // rsLoRA scales by alpha/sqrt(r); kiln's deltas scale by alpha/r.
    let alpha = if config.use_rslora {
        config.lora_alpha * (config.r as f64).sqrt()
    } else {
        config.lora_alpha
    };
    let delta_config = LowRankConfig {
        rank: config.r,
        alpha,
        dropout: config.lora_dropout,
    };
    let matrix = |name: &str, rows: usize| -> Result<Tensor<2>> {
        let raw = file
            .get(name)
            .ok_or_else(|| bad(format!("`{name}` is missing")))?;
        match raw.shape.as_slice() {
            // Stored `[out, in]` as PyTorch's Linear: kiln's layout is the transpose.
            &[out, inner] if out == rows || inner == rows => Ok(Tensor::<2>::from_data(
                TensorData::new(raw.values.clone(), [out, inner]),
                &device,
            )
            .transpose()),
            other => Err(bad(format!(
                "`{name}` is {other:?}, not a rank-{rows} matrix"
            ))),
        }
    };
    let mut deltas = Vec::new();
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
        let Some(module) = rest.strip_suffix(".lora_A.weight") else {
            if rest.ends_with(".lora_B.weight") {
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
        deltas.push((
            format!("{backbone}.{projection}"),
            LowRankDelta::from_matrices(a, b, delta_config),
        ));
    }
    if deltas.is_empty() {
        return Err(bad("it holds no LoRA matrices".into()));
    }
    Ok(ReadAdapter { deltas, classifier })
}

/// Puts the deltas of the peft LoRA directory `dir` in `model`'s LoRA slots (replacing any
/// there; projections the adapter leaves alone get none), loads its classifier when it has one,
/// and makes the deltas and the head trainable: the adapter, ready to evaluate, train further,
/// merge or export. The backbone must be the one it was trained on.
pub fn import_lora(
    model: SequenceClassifier,
    dir: &Path,
) -> Result<(SequenceClassifier, ParamReport)> {
    let ReadAdapter { deltas, classifier } = read_adapter(&model, dir)?;
    if classifier.is_some() && !is_bert_sequence_classifier(&model) {
        return Err(TrainError::checkpoint(
            dir.join(PEFT_WEIGHTS_FILE),
            "it holds a BertForSequenceClassification classifier: build the model with \
             `--readout pooler` and a one-layer head to load it",
        ));
    }
    let mut model = model;
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
    let ReadAdapter { deltas, classifier } = read_adapter(model, dir)?;
    model.add_lora_adapter(name, deltas)?;
    Ok(classifier.is_some())
}

/// The fields of peft's `PromptTuningConfig` kiln writes and reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftPromptConfig {
    pub peft_type: String,
    pub task_type: Option<String>,
    pub num_virtual_tokens: usize,
    pub token_dim: usize,
    #[serde(default = "one")]
    pub num_transformer_submodules: usize,
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
    #[serde(default)]
    pub num_layers: Option<usize>,
    #[serde(default = "random_init")]
    pub prompt_tuning_init: String,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default = "yes")]
    pub inference_mode: bool,
}

fn one() -> usize {
    1
}

fn random_init() -> String {
    "RANDOM".into()
}

/// The model's plain prompt (prompt tuning: no encoder, all tokens in front).
fn plain_prompt(model: &SequenceClassifier) -> Option<&SoftPrompt> {
    let prompt = match (&model.bert, &model.gpt2) {
        (Some(bert), _) => bert.prompt.as_ref(),
        (_, Some(gpt2)) => gpt2.prompt.as_ref(),
        _ => None,
    }?;
    (prompt.encoder.is_none() && prompt.template.after == 0).then_some(prompt)
}

/// Writes a prompt-tuning model as a peft `PROMPT_TUNING` directory: `prompt_embeddings`
/// `[n, h]`, and for a BERT sequence classifier its head as `base_model.classifier`. BERT's
/// tokens must sit in front of `[CLS]` (`--prompt-at-start`), where peft puts them.
pub fn export_prompt(
    model: &SequenceClassifier,
    out: &Path,
    base_model: &str,
) -> Result<PeftExport> {
    let prompt = plain_prompt(model).ok_or_else(|| {
        TrainError::Invalid(
            "the model has no prompt-tuning prompt to export (P-tuning's encoder and tokens \
             behind the text have no peft counterpart)"
                .into(),
        )
    })?;
    if model.bert.is_some() && !prompt.template.at_start {
        return Err(TrainError::Invalid(
            "kiln put this BERT's virtual tokens after [CLS]; peft puts them in front of it: \
             train with --prompt-at-start to export"
                .into(),
        ));
    }
    let embeddings = prompt.embedding.val();
    let [tokens, width] = embeddings.dims();
    let with_classifier = is_bert_sequence_classifier(model);
    let mut named: Vec<(String, Vec<usize>, Vec<f32>)> = vec![(
        "prompt_embeddings".into(),
        vec![tokens, width],
        read_floats(embeddings)?,
    )];
    if with_classifier {
        let head = &model.head.output;
        named.push((
            "base_model.classifier.weight".into(),
            head.weight.val().transpose().dims().to_vec(),
            read_floats(head.weight.val().transpose())?,
        ));
        if let Some(bias) = &head.bias {
            named.push((
                "base_model.classifier.bias".into(),
                bias.val().dims().to_vec(),
                read_floats(bias.val())?,
            ));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let bytes: Vec<Vec<u8>> = named.iter().map(|(_, _, v)| f32_bytes(v)).collect();
    write_f32_tensors(
        &out.join(PEFT_WEIGHTS_FILE),
        named
            .iter()
            .zip(&bytes)
            .map(|((name, shape, _), bytes)| (name.as_str(), shape.as_slice(), bytes.as_slice())),
        Some([("format".to_string(), "pt".to_string())].into()),
    )?;
    let task_type = if with_classifier {
        "SEQ_CLS"
    } else {
        "FEATURE_EXTRACTION"
    };
    let config = PeftPromptConfig {
        peft_type: "PROMPT_TUNING".into(),
        task_type: Some(task_type.into()),
        num_virtual_tokens: tokens,
        token_dim: width,
        num_transformer_submodules: 1,
        num_attention_heads: None,
        num_layers: Some(model.num_layers()),
        prompt_tuning_init: random_init(),
        base_model_name_or_path: Some(base_model.into()),
        inference_mode: true,
    };
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| TrainError::Invalid(e.to_string()))?;
    write_atomically(&out.join(PEFT_CONFIG_FILE), format!("{text}\n").as_bytes())?;
    Ok(PeftExport {
        task_type,
        target_modules: Vec::new(),
        tensors: named.len(),
        with_classifier,
    })
}

fn read_floats<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::Invalid(format!("cannot read a tensor: {e:?}")))
}

/// Puts the prompt of the peft `PROMPT_TUNING` directory `dir` in front of `model`'s input (in
/// front of `[CLS]` for BERT, as peft does) and loads its classifier when there is one; the
/// prompt and the head train.
pub fn import_prompt(
    model: SequenceClassifier,
    dir: &Path,
) -> Result<(SequenceClassifier, ParamReport)> {
    let config_path = dir.join(PEFT_CONFIG_FILE);
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| TrainError::io(&config_path, e))?;
    let config: PeftPromptConfig = serde_json::from_str(&text)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", config_path.display())))?;
    if config.peft_type != "PROMPT_TUNING" || config.num_transformer_submodules != 1 {
        return Err(TrainError::Invalid(format!(
            "{}: `peft_type` {} with {} transformer submodules; kiln reads PROMPT_TUNING with one",
            config_path.display(),
            config.peft_type,
            config.num_transformer_submodules
        )));
    }
    let weights_path = dir.join(PEFT_WEIGHTS_FILE);
    let file = WeightFile::open(&weights_path)?;
    let bad = |message: String| TrainError::checkpoint(&weights_path, message);
    let embeddings = file
        .get("prompt_embeddings")
        .ok_or_else(|| bad("`prompt_embeddings` is missing".into()))?;
    let width = model.hidden_size();
    if embeddings.shape != [config.num_virtual_tokens, width] {
        return Err(bad(format!(
            "`prompt_embeddings` is {:?}; the config and the model ask for [{}, {width}]",
            embeddings.shape, config.num_virtual_tokens
        )));
    }
    let classifier = file.get("base_model.classifier.weight");
    if classifier.is_some() && !is_bert_sequence_classifier(&model) {
        return Err(bad(
            "it holds a BertForSequenceClassification classifier: build the model with \
             `--readout pooler` and a one-layer head to load it"
                .into(),
        ));
    }
    let device = model.head.output.weight.lazy_device();
    let mut model = model;
    let initial = Tensor::<2>::from_data(
        TensorData::new(
            embeddings.values.clone(),
            [config.num_virtual_tokens, width],
        ),
        &device,
    );
    let template = PromptTemplate {
        before: config.num_virtual_tokens,
        after: 0,
        at_start: true,
    };
    model.add_prompt(template, initial, None)?;
    if let Some(weight) = classifier {
        let bias = file
            .get("base_model.classifier.bias")
            .ok_or_else(|| bad("`base_model.classifier.bias` is missing".into()))?;
        set_head(&mut model, weight.clone(), bias.clone(), &weights_path)?;
    }
    let prompt = format!("{}.prompt.*", model.backbone_name());
    Ok(set_trainable(model, &[prompt, "head.*".to_string()]))
}

/// Loads a `[c, h]` classifier and its bias into the model's one-layer head.
fn set_head(
    model: &mut SequenceClassifier,
    weight: RawTensor,
    bias: RawTensor,
    file: &Path,
) -> Result<()> {
    let head = &mut model.head.output;
    let device = head.weight.lazy_device();
    let [width, outputs] = head.weight.lazy_shape().dims::<2>();
    if weight.shape != [outputs, width] || bias.shape != [outputs] {
        return Err(TrainError::checkpoint(
            file,
            format!(
                "its classifier is {:?}, the model's head maps {width} features to {outputs}",
                weight.shape
            ),
        ));
    }
    let weight = Tensor::<2>::from_data(TensorData::new(weight.values, [outputs, width]), &device);
    head.weight = Param::from_tensor(weight.transpose());
    head.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(bias.values, [outputs]),
        &device,
    )));
    Ok(())
}

/// Imports a peft directory of any type kiln reads (LoRA, prompt tuning), by its `peft_type`.
pub fn import_peft(
    model: SequenceClassifier,
    dir: &Path,
) -> Result<(SequenceClassifier, ParamReport)> {
    let path = dir.join(PEFT_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let header: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
    match header["peft_type"].as_str() {
        Some("LORA") => import_lora(model, dir),
        Some("PROMPT_TUNING") => import_prompt(model, dir),
        Some("PREFIX_TUNING") => import_prefix(model, dir),
        other => Err(TrainError::Invalid(format!(
            "{}: `peft_type` {other:?}; kiln imports LORA, PROMPT_TUNING and PREFIX_TUNING",
            path.display()
        ))),
    }
}

/// Exports what the model's method trained (LoRA deltas, a prompt, or attention prefixes) in
/// peft's format.
pub fn export_peft(model: &SequenceClassifier, out: &Path, base_model: &str) -> Result<PeftExport> {
    if plain_prompt(model).is_some() {
        export_prompt(model, out, base_model)
    } else if model.gpt2.as_ref().is_some_and(|g| g.prefix_rows() > 0) {
        export_prefix(model, out, base_model)
    } else {
        export_lora(model, out, base_model)
    }
}

/// The fields of peft's `PrefixTuningConfig` kiln writes and reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftPrefixConfig {
    pub peft_type: String,
    pub task_type: Option<String>,
    pub num_virtual_tokens: usize,
    pub token_dim: usize,
    #[serde(default = "one")]
    pub num_transformer_submodules: usize,
    pub num_attention_heads: usize,
    pub num_layers: usize,
    pub encoder_hidden_size: usize,
    #[serde(default)]
    pub prefix_projection: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default = "yes")]
    pub inference_mode: bool,
}

/// Every GPT-2 layer's attention prefix (key rows, value rows), from a prefix-only adapter.
fn gpt2_prefixes(model: &SequenceClassifier) -> Result<Vec<(Tensor<2>, Tensor<2>)>> {
    let refuse = |why: &str| TrainError::Invalid(format!("no peft prefix-tuning export: {why}"));
    let gpt2 = model
        .gpt2
        .as_ref()
        .ok_or_else(|| refuse("peft's prefix tuning runs on GPT-2 only here"))?;
    if gpt2.prefix_encoder.is_some() {
        return Err(refuse("fold the prefix encoder first"));
    }
    if !gpt2.prefix_takes_positions {
        return Err(refuse(
            "kiln's prefix took no positions, HF GPT-2 numbers the text after it: train with \
             --prefix-positions",
        ));
    }
    if plain_prompt(model).is_some() || gpt2.prompt.is_some() {
        return Err(refuse("the model also has virtual tokens"));
    }
    gpt2.blocks
        .iter()
        .enumerate()
        .map(|(i, block)| {
            let slots = block
                .adapters
                .as_ref()
                .ok_or_else(|| refuse(&format!("layer {i} has no prefix")))?;
            let bottlenecks = slots.active_layer_adapter().is_some_and(|a| {
                a.attention.is_some() || a.feed_forward.is_some() || a.parallel.is_some()
            });
            if bottlenecks {
                return Err(refuse(
                    "the adapter has bottleneck modules beside its prefix",
                ));
            }
            slots
                .prefix()
                .ok_or_else(|| refuse(&format!("layer {i} has no prefix")))
        })
        .collect()
}

/// Writes a GPT-2's attention prefixes as a peft `PREFIX_TUNING` directory
/// (`FEATURE_EXTRACTION` on `GPT2Model`; kiln's head has no peft counterpart).
pub fn export_prefix(
    model: &SequenceClassifier,
    out: &Path,
    base_model: &str,
) -> Result<PeftExport> {
    let prefixes = gpt2_prefixes(model)?;
    let (tokens, width) = match prefixes.first() {
        Some((key, _)) => (key.dims()[0], key.dims()[1]),
        None => return Err(TrainError::Invalid("the model has no layers".into())),
    };
    // Row i: layer 0's key, layer 0's value, layer 1's key, ... (peft's past_key_values view).
    let rows = prefixes
        .into_iter()
        .flat_map(|(key, value)| [key, value])
        .collect::<Vec<_>>();
    let layers = rows.len() / 2;
    let embeddings = read_floats(Tensor::cat(rows, 1))?;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let bytes = f32_bytes(&embeddings);
    let shape = [tokens, layers * 2 * width];
    write_f32_tensors(
        &out.join(PEFT_WEIGHTS_FILE),
        [("prompt_embeddings", shape.as_slice(), bytes.as_slice())],
        Some([("format".to_string(), "pt".to_string())].into()),
    )?;
    let heads = model
        .gpt2
        .as_ref()
        .map_or(1, |g| g.blocks[0].attention.heads);
    let config = PeftPrefixConfig {
        peft_type: "PREFIX_TUNING".into(),
        task_type: Some("FEATURE_EXTRACTION".into()),
        num_virtual_tokens: tokens,
        token_dim: width,
        num_transformer_submodules: 1,
        num_attention_heads: heads,
        num_layers: layers,
        encoder_hidden_size: width,
        prefix_projection: false,
        base_model_name_or_path: Some(base_model.into()),
        inference_mode: true,
    };
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| TrainError::Invalid(e.to_string()))?;
    write_atomically(&out.join(PEFT_CONFIG_FILE), format!("{text}\n").as_bytes())?;
    Ok(PeftExport {
        task_type: "FEATURE_EXTRACTION",
        target_modules: Vec::new(),
        tensors: 1,
        with_classifier: false,
    })
}

/// The adapter name an imported peft prefix is held under.
pub const PEFT_PREFIX_ADAPTER: &str = "p-tuning-v2";

/// Puts the prefixes of the peft `PREFIX_TUNING` directory `dir` into a GPT-2 `model` as the
/// prefix-only adapter [`PEFT_PREFIX_ADAPTER`], numbering the text after them as HF does; the
/// prefixes and the head train. peft's `prefix_projection` MLP is not read (its prefixes would
/// need the encoder's weights, which peft saves under other names): such adapters are refused.
pub fn import_prefix(
    model: SequenceClassifier,
    dir: &Path,
) -> Result<(SequenceClassifier, ParamReport)> {
    let config_path = dir.join(PEFT_CONFIG_FILE);
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| TrainError::io(&config_path, e))?;
    let config: PeftPrefixConfig = serde_json::from_str(&text)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", config_path.display())))?;
    let refuse = |field: &str, why: String| {
        TrainError::Invalid(format!("{}: `{field}` {why}", config_path.display()))
    };
    if config.prefix_projection {
        return Err(refuse(
            "prefix_projection",
            "is true; kiln reads peft prefixes without the projection MLP".into(),
        ));
    }
    let Some(gpt2) = model.gpt2.as_ref() else {
        return Err(refuse(
            "peft_type",
            "is PREFIX_TUNING, which kiln reads into GPT-2 only".into(),
        ));
    };
    let (layers, width) = (gpt2.blocks.len(), model.hidden_size());
    if config.num_layers != layers || config.token_dim != width {
        return Err(refuse(
            "num_layers",
            format!(
                "and `token_dim` are {} and {}; the model has {layers} layers {width} wide",
                config.num_layers, config.token_dim
            ),
        ));
    }
    let weights_path = dir.join(PEFT_WEIGHTS_FILE);
    let file = WeightFile::open(&weights_path)?;
    let tokens = config.num_virtual_tokens;
    let embeddings = file
        .get("prompt_embeddings")
        .ok_or_else(|| TrainError::checkpoint(&weights_path, "`prompt_embeddings` is missing"))?;
    if embeddings.shape != [tokens, layers * 2 * width] {
        return Err(TrainError::checkpoint(
            &weights_path,
            format!(
                "`prompt_embeddings` is {:?}; the config asks for [{tokens}, {}]",
                embeddings.shape,
                layers * 2 * width
            ),
        ));
    }
    let device = model.head.output.weight.lazy_device();
    let all = Tensor::<2>::from_data(
        TensorData::new(embeddings.values.clone(), [tokens, layers * 2 * width]),
        &device,
    );
    let mut model = model;
    // The adapter of that name (P-tuning v2's, when `kiln train` built the method first) becomes
    // the peft prefixes and nothing else.
    let config = AdapterConfig::prefix_only(tokens);
    let index = match model.adapter_index(PEFT_PREFIX_ADAPTER) {
        Some(index) => index,
        None => {
            model.add_adapter(PEFT_PREFIX_ADAPTER, &config)?;
            model.adapters.len() - 1
        }
    };
    model.adapters[index].config = config;
    model.set_active_adapter(Some(PEFT_PREFIX_ADAPTER))?;
    let gpt2 = model.gpt2.as_mut().expect("checked above");
    gpt2.prefix_takes_positions = true;
    for (l, block) in gpt2.blocks.iter_mut().enumerate() {
        let columns = |j: usize| {
            Param::from_tensor(all.clone().slice([0..tokens, j * width..(j + 1) * width]))
        };
        let slot = block
            .adapters
            .as_mut()
            .and_then(|slots| slots.loaded.get_mut(index))
            .expect("every layer holds every adapter");
        *slot = LayerAdapter {
            attention: None,
            feed_forward: None,
            parallel: None,
            prefix: Some(AttentionPrefix {
                key: columns(2 * l),
                value: columns(2 * l + 1),
            }),
        };
    }
    let mut patterns = model.adapter_patterns(PEFT_PREFIX_ADAPTER);
    patterns.push("head.*".into());
    Ok(set_trainable(model, &patterns))
}
