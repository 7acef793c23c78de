//! HF peft's adapter directories, both ways: `adapter_config.json` and
//! `adapter_model.safetensors`, which `PeftModel.from_pretrained(base, dir)` loads in Python,
//! for LoRA with its rsLoRA, DoRA, PiSSA and OLoRA variants (`peft/lora.rs`), IA3 (`ia3.rs`),
//! AdaLoRA (`adalora.rs`), LoHa and LoKr (`lycoris.rs`), VeRA (`vera.rs`), OFT (`oft.rs`), prompt
//! tuning (`prompt.rs`) and prefix tuning (`prefix.rs`).
//! [`import_peft`] reads any of them by its `peft_type`; [`export_peft`] writes what a model's
//! method trained. What kiln cannot represent is refused naming the field at fault.
//!
//! A BERT classifier that reads BERT's pooler through one linear layer is exactly HF's
//! `BertForSequenceClassification`: it exports as task `SEQ_CLS` with the head as peft's
//! classifier. Any other model exports for the base model alone (task `FEATURE_EXTRACTION`,
//! `BertModel` / `GPT2Model`); kiln's head then has no peft counterpart (GPT-2's sequence
//! classifier has no bias, kiln's head does) and is not written.

mod adalora;
mod ia3;
mod lora;
mod lycoris;
mod oft;
mod prefix;
mod prompt;
mod vera;

pub use adalora::{PeftAdaLoraConfig, export_adalora, import_adalora};
pub use ia3::{PeftIa3Config, export_ia3, import_ia3};
pub(crate) use lora::write_combined;
pub use lora::{PeftLoraConfig, export_lora, import_lora, load_lora_adapter, read_lora_config};
pub use lycoris::{PeftLycorisConfig, export_lycoris, import_lycoris};
pub use oft::{PeftOftConfig, export_oft, import_oft};
pub use prefix::{PEFT_PREFIX_ADAPTER, PeftPrefixConfig, export_prefix, import_prefix};
pub use prompt::{PeftPromptConfig, export_prompt, import_prompt};
pub use vera::{PeftVeraConfig, export_vera, import_vera};

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};

use kiln_models::WeightFile;
use kiln_models::weights::{KeyTable, RawTensor};
use kiln_models::{Readout, SequenceClassifier};
use kiln_tuning::{MethodConfig, ParamReport};

use crate::checkpoint::{f32_bytes, write_atomically, write_f32_tensors};
use crate::error::{Result, TrainError};

/// A peft adapter directory's settings file.
pub const PEFT_CONFIG_FILE: &str = "adapter_config.json";
/// A peft adapter directory's tensors.
pub const PEFT_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftExport {
    /// peft's task type written (`SEQ_CLS` or `FEATURE_EXTRACTION`).
    pub task_type: &'static str,
    /// The modules the adapter changes.
    pub target_modules: Vec<String>,
    /// Tensors written.
    pub tensors: usize,
    /// The head went in as peft's classifier.
    pub with_classifier: bool,
}

fn yes() -> bool {
    true
}

fn one() -> usize {
    1
}

/// Whether `model` is HF's `BertForSequenceClassification`: BERT, pooler readout, one linear
/// layer.
pub(crate) fn is_bert_sequence_classifier(model: &SequenceClassifier) -> bool {
    model.bert.is_some() && model.readout == Readout::Pooler && model.head.hidden.is_empty()
}

fn read_floats<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::Invalid(format!("cannot read a tensor: {e:?}")))
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
    head.weight = Param::from_tensor(transposed(&weight.values, [outputs, width], &device));
    head.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(bias.values, [outputs]),
        &device,
    )));
    Ok(())
}

/// A tensor to write: its name, shape and values.
type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// peft's task type for a model whose head is (`SEQ_CLS`) or is not (`FEATURE_EXTRACTION`)
/// peft's classifier.
fn task_type(with_classifier: bool) -> &'static str {
    if with_classifier {
        "SEQ_CLS"
    } else {
        "FEATURE_EXTRACTION"
    }
}

/// The one-layer head as peft's `classifier` tensors (weight `[c, h]`, bias `[c]`), as the
/// named tensors `write_peft_weights` takes.
fn classifier_tensors(model: &SequenceClassifier) -> Result<Vec<NamedTensor>> {
    let head = &model.head.output;
    let [width, outputs] = head.weight.lazy_shape().dims::<2>();
    let bias = match &head.bias {
        Some(bias) => read_floats(bias.val())?,
        None => vec![0.0; outputs],
    };
    Ok(vec![
        (
            "base_model.model.classifier.weight".into(),
            vec![outputs, width],
            read_floats(head.weight.val().transpose())?,
        ),
        (
            "base_model.model.classifier.bias".into(),
            vec![outputs],
            bias,
        ),
    ])
}

/// The HF module path of the projection at full kiln path `path` (`bert.layers.0.attention.query`
/// → `encoder.layer.0.attention.self.query`), or an error naming it.
fn hf_module_of(table: KeyTable, backbone: &str, path: &str) -> Result<String> {
    let local = path
        .strip_prefix(backbone)
        .and_then(|p| p.strip_prefix('.'))
        .unwrap_or(path);
    lora::hf_module(table, local).ok_or_else(|| {
        TrainError::Invalid(format!(
            "{path}: no HF module corresponds to this projection"
        ))
    })
}

/// Whether `rest` (a tensor name after `base_model.model.`) is the classifier's.
fn is_classifier_tensor(rest: &str) -> bool {
    rest == "classifier.weight" || rest == "classifier.bias"
}

/// The classifier a peft weights file holds (weight, bias), if it holds one.
fn read_classifier(file: &WeightFile, path: &Path) -> Result<Option<(RawTensor, RawTensor)>> {
    let Some(weight) = file.get("base_model.model.classifier.weight") else {
        return Ok(None);
    };
    let bias = file
        .get("base_model.model.classifier.bias")
        .ok_or_else(|| TrainError::checkpoint(path, "`classifier.bias` is missing"))?;
    Ok(Some((weight.clone(), bias.clone())))
}

/// Loads a classifier read from the peft file at `path` into the model's one-layer head; the
/// model must be HF's `BertForSequenceClassification`.
fn load_classifier(
    model: &mut SequenceClassifier,
    classifier: Option<(RawTensor, RawTensor)>,
    path: &Path,
) -> Result<()> {
    let Some((weight, bias)) = classifier else {
        return Ok(());
    };
    if !is_bert_sequence_classifier(model) {
        return Err(TrainError::checkpoint(
            path,
            "it holds a BertForSequenceClassification classifier: build the model with \
             `--readout pooler` and a one-layer head to load it",
        ));
    }
    set_head(model, weight, bias, path)
}

/// `dir`'s `adapter_config.json` read as `T`, with the file's path for error messages.
pub fn read_peft_config<T: DeserializeOwned>(dir: &Path) -> Result<(T, PathBuf)> {
    let path = dir.join(PEFT_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let config = serde_json::from_str(&text)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
    Ok((config, path))
}

/// Writes `config` as `out`'s `adapter_config.json`, atomically.
fn write_peft_config(out: &Path, config: &impl Serialize) -> Result<()> {
    let text =
        serde_json::to_string_pretty(config).map_err(|e| TrainError::Invalid(e.to_string()))?;
    write_atomically(&out.join(PEFT_CONFIG_FILE), format!("{text}\n").as_bytes())
}

/// Writes named f32 tensors (name, shape, values) as `out`'s `adapter_model.safetensors`,
/// with the `format: pt` metadata peft's loader expects; creates `out`.
fn write_peft_weights(out: &Path, named: &[NamedTensor]) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let bytes: Vec<Vec<u8>> = named.iter().map(|(_, _, v)| f32_bytes(v)).collect();
    write_f32_tensors(
        &out.join(PEFT_WEIGHTS_FILE),
        named
            .iter()
            .zip(&bytes)
            .map(|((name, shape, _), bytes)| (name.as_str(), shape.as_slice(), bytes.as_slice())),
        Some([("format".to_string(), "pt".to_string())].into()),
    )
}

/// Imports a peft directory of any type kiln reads (LoRA, IA3, prompt tuning, prefix tuning), by
/// its `peft_type`.
pub fn import_peft(
    model: SequenceClassifier,
    dir: &Path,
) -> Result<(SequenceClassifier, ParamReport)> {
    let (header, path) = read_peft_config::<serde_json::Value>(dir)?;
    match header["peft_type"].as_str() {
        Some("LORA") => import_lora(model, dir),
        Some("IA3") => import_ia3(model, dir),
        Some("LOHA" | "LOKR") => import_lycoris(model, dir),
        Some("VERA") => import_vera(model, dir),
        Some("OFT") => import_oft(model, dir),
        Some("ADALORA") => import_adalora(model, dir),
        Some("PROMPT_TUNING") => import_prompt(model, dir),
        Some("PREFIX_TUNING") => import_prefix(model, dir),
        other => Err(TrainError::Invalid(format!(
            "{}: `peft_type` {other:?}; kiln imports LORA, ADALORA, IA3, LOHA, LOKR, VERA, \
             OFT, PROMPT_TUNING and PREFIX_TUNING",
            path.display()
        ))),
    }
}

/// The kiln method `method` with the settings a peft adapter's config gives (LoRA's rank, alpha,
/// dropout, rsLoRA and DoRA; the number of virtual tokens), for a run that starts from the
/// adapter. The method must be the adapter's: LoRA from LORA, IA3 from IA3, prompt from
/// PROMPT_TUNING, p-tuning-v2 (GPT-2) from PREFIX_TUNING.
///
/// An AdapterHub adapter directory is read as such ([`crate::adapterhub`]).
pub fn method_from_adapter(method: &str, dir: &Path) -> Result<MethodConfig> {
    if crate::adapterhub::is_adapterhub_dir(dir) {
        return crate::adapterhub::method_from_adapterhub(method, dir);
    }
    let (config, path) = read_peft_config::<serde_json::Value>(dir)?;
    let count = |field: &str| config[field].as_u64().map(|n| n.to_string());
    let options: Vec<(&str, String)> = match (method, config["peft_type"].as_str()) {
        ("lora", Some("LORA")) => {
            let lora = read_lora_config(dir)?;
            let mut options = vec![
                ("rank", lora.r.to_string()),
                ("alpha", lora.lora_alpha.to_string()),
                ("lora-dropout", lora.lora_dropout.to_string()),
            ];
            for (on, switch) in [(lora.use_rslora, "rslora"), (lora.use_dora, "dora")] {
                if on {
                    options.push((switch, "true".into()));
                }
            }
            options
        }
        // The vectors go where the adapter has them whatever the targets say.
        ("ia3", Some("IA3")) => Vec::new(),
        ("loha", Some("LOHA")) | ("lokr", Some("LOKR")) => {
            let (lycoris, _) = read_peft_config::<PeftLycorisConfig>(dir)?;
            let mut options = vec![
                ("rank", lycoris.r.to_string()),
                ("alpha", lycoris.alpha.to_string()),
            ];
            if let Some(factor) = lycoris.decompose_factor {
                options.push(("decompose-factor", factor.to_string()));
            }
            options
        }
        ("adalora", Some("ADALORA")) => {
            let (ada, _) = read_peft_config::<PeftAdaLoraConfig>(dir)?;
            vec![
                ("init-r", ada.init_r.to_string()),
                ("target-r", ada.target_r.to_string()),
                ("alpha", ada.lora_alpha.to_string()),
                ("lora-dropout", ada.lora_dropout.to_string()),
                ("tinit", ada.tinit.to_string()),
                ("tfinal", ada.tfinal.to_string()),
                ("delta-t", ada.delta_t.to_string()),
                ("beta1", ada.beta1.to_string()),
                ("beta2", ada.beta2.to_string()),
                ("orth-reg-weight", ada.orth_reg_weight.to_string()),
            ]
        }
        ("oft", Some("OFT")) => {
            let (oft, _) = read_peft_config::<PeftOftConfig>(dir)?;
            let mut options = vec![("neumann-terms", oft.num_cayley_neumann_terms.to_string())];
            if oft.oft_block_size > 0 {
                options.push(("block-size", oft.oft_block_size.to_string()));
            }
            options
        }
        ("vera", Some("VERA")) => {
            let (vera, _) = read_peft_config::<PeftVeraConfig>(dir)?;
            vec![
                ("rank", vera.r.to_string()),
                ("d-initial", vera.d_initial.to_string()),
                ("projection-seed", vera.projection_prng_key.to_string()),
                ("vera-dropout", vera.vera_dropout.to_string()),
            ]
        }
        ("prompt", Some("PROMPT_TUNING")) => count("num_virtual_tokens")
            .map(|n| ("prompt-len", n))
            .into_iter()
            .chain([("prompt-at-start", "true".into())])
            .collect(),
        ("p-tuning-v2", Some("PREFIX_TUNING")) => count("num_virtual_tokens")
            .map(|n| ("prefix-len", n))
            .into_iter()
            .chain([
                ("prefix-positions", "true".into()),
                ("adapter-name", PEFT_PREFIX_ADAPTER.into()),
            ])
            .collect(),
        (method, peft_type) => {
            return Err(TrainError::Invalid(format!(
                "--peft-adapter: {} holds a {} adapter; kiln starts `--method lora` from LORA, \
                 `--method ia3` from IA3, `--method loha` / `lokr` / `vera` / `oft` / `adalora` \
                 from LOHA / LOKR / VERA / OFT / ADALORA, `--method prompt` from PROMPT_TUNING and `--method p-tuning-v2` from PREFIX_TUNING (got \
                 --method {method})",
                path.display(),
                peft_type.unwrap_or("unknown")
            )));
        }
    };
    let options: Vec<(&str, &str)> = options.iter().map(|(f, t)| (*f, t.as_str())).collect();
    Ok(MethodConfig::parse(method, &options)?)
}

/// Exports what the model's method trained (LoRA deltas, IA3 vectors, a prompt, or attention
/// prefixes) in peft's format.
pub fn export_peft(model: &SequenceClassifier, out: &Path, base_model: &str) -> Result<PeftExport> {
    let has_ia3 = model
        .clone()
        .projections_mut()
        .iter()
        .any(|(_, p)| p.ia3.is_some());
    if prompt::plain_prompt(model).is_some() {
        export_prompt(model, out, base_model)
    } else if model.gpt2.as_ref().is_some_and(|g| g.prefix_rows() > 0) {
        export_prefix(model, out, base_model)
    } else if has_ia3 {
        export_ia3(model, out, base_model)
    } else if lycoris::has_lycoris(model) {
        export_lycoris(model, out, base_model)
    } else if model
        .clone()
        .projections_mut()
        .iter()
        .any(|(_, p)| p.vera.is_some())
    {
        export_vera(model, out, base_model)
    } else if model
        .clone()
        .projections_mut()
        .iter()
        .any(|(_, p)| p.oft.is_some())
    {
        export_oft(model, out, base_model)
    } else if model
        .clone()
        .projections_mut()
        .iter()
        .any(|(_, p)| p.adalora.is_some())
    {
        export_adalora(model, out, base_model)
    } else {
        export_lora(model, out, base_model)
    }
}

/// A PyTorch `[rows, cols]` matrix (a Linear's `[out, in]`) as kiln's `[cols, rows]`, transposed
/// on the host: the tensor is contiguous, as a trained one is, so products with it add in the
/// same order and an imported adapter gives bit-identical outputs.
pub(crate) fn transposed(values: &[f32], [rows, cols]: [usize; 2], device: &Device) -> Tensor<2> {
    let mut out = vec![0.0f32; values.len()];
    for (r, row) in values.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    Tensor::from_data(TensorData::new(out, [cols, rows]), device)
}
