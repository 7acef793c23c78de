//! AdapterHub's adapter directories (the Python `adapters` library), both ways, for BERT:
//! `adapter_config.json` + `adapter.safetensors` (or `pytorch_adapter.bin`) as
//! `model.save_adapter` writes them, the head as `head_config.json` + `model_head.safetensors`,
//! and a fusion as `adapter_fusion_config.json` + `model_adapter_fusion.safetensors`.
//! `model.load_adapter(dir, use_safetensors=True)` loads what [`export_adapterhub`] writes; the
//! tests check the outputs against the library's on fixtures it wrote
//! (`scripts/make_adapterhub_fixtures.py`).
//!
//! Bottleneck adapters map one to one: `SeqBnConfig` (Pfeiffer), `DoubleSeqBnConfig` (Houlsby),
//! `ParBnConfig` (parallel), `leave_out` (AdapterDrop at inference, the layers left out carrying
//! a zero adapter), and `MAMConfig` (a prefix with a parallel adapter; kiln's folded prefix is
//! AdapterHub's `flat` prefix, and a reparameterised one imports as the prefixes it computes).
//! What kiln cannot represent (gating, PHM layers, adapter layer norms, invertible adapters,
//! learned scaling, adapter dropout) is refused naming the field.

mod config;
mod export;
mod import;
mod reft;

pub use config::{AdapterHubAdapter, method_from_adapterhub, read_adapterhub_config};
pub use export::{AdapterHubExport, export_adapterhub, export_adapterhub_fusion};
pub use import::{import_adapterhub, load_adapterhub, load_adapterhub_fusion};

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use kiln_models::weights::{RawTensor, WeightFile};
use kiln_models::{Activation, SequenceClassifier};

use crate::error::{Result, TrainError};

/// An AdapterHub adapter's settings file (the name kiln's own adapter directories use too).
pub const ADAPTERHUB_CONFIG_FILE: &str = "adapter_config.json";
/// Its tensors, as `save_adapter(..., use_safetensors=True)` writes them.
pub const ADAPTERHUB_WEIGHTS_FILE: &str = "adapter.safetensors";
/// Its tensors as `save_adapter` writes them by default (a PyTorch pickle).
pub const ADAPTERHUB_TORCH_WEIGHTS_FILE: &str = "pytorch_adapter.bin";
/// The head's settings.
pub const ADAPTERHUB_HEAD_CONFIG_FILE: &str = "head_config.json";
/// The head's tensors.
pub const ADAPTERHUB_HEAD_WEIGHTS_FILE: &str = "model_head.safetensors";
/// A fusion's settings.
pub const ADAPTERHUB_FUSION_CONFIG_FILE: &str = "adapter_fusion_config.json";
/// A fusion's tensors.
pub const ADAPTERHUB_FUSION_WEIGHTS_FILE: &str = "model_adapter_fusion.safetensors";

/// The library version whose format is written.
const VERSION: &str = "adapters.1.3.0";

/// The model class the tensors are named for (`bert.encoder.layer...`).
const MODEL_CLASS: &str = "BertAdapterModel";

/// What every AdapterHub settings file holds around its `config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    config: Value,
    hidden_size: usize,
    #[serde(default)]
    model_class: Option<String>,
    #[serde(default)]
    model_name: Option<String>,
    model_type: String,
    name: String,
    #[serde(default)]
    version: Option<String>,
    /// Fusion configs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adapter_names: Option<Vec<String>>,
}

/// Whether `dir` holds an AdapterHub adapter: its `adapter_config.json` has AdapterHub's
/// `config` object and `model_type` (kiln's own adapter files and peft's have neither).
pub fn is_adapterhub_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(ADAPTERHUB_CONFIG_FILE))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .is_some_and(|v| {
            v.get("config").is_some_and(Value::is_object) && v.get("model_type").is_some()
        })
}

fn refuse(path: &Path, message: String) -> TrainError {
    TrainError::checkpoint(path, message)
}

fn field<'a>(config: &'a Value, name: &str) -> Option<&'a Value> {
    config.get(name).filter(|v| !v.is_null())
}

fn flag(config: &Value, name: &str) -> bool {
    field(config, name)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn number(config: &Value, name: &str) -> Option<f64> {
    field(config, name).and_then(Value::as_f64)
}

/// The AdapterHub name of one of kiln's bottleneck tensors: `slot` is `attention`,
/// `feed_forward` or `parallel`, `part` e.g. `down.weight`.
fn adapter_tensor_name(layer: usize, slot: &str, name: &str, part: &str) -> String {
    let location = if slot == "attention" {
        "attention.output"
    } else {
        "output"
    };
    // kiln's `down.weight` is the library's `adapter_down.0.weight` (a Linear, then the
    // non-linearity, in one Sequential); `up.*` is `adapter_up.*`; UniPELT's `gate.*` keeps its
    // name.
    let part = match part.strip_prefix("down.") {
        Some(rest) => format!("adapter_down.0.{rest}"),
        None if part.starts_with("gate.") => part.to_string(),
        None => format!("adapter_{part}"),
    };
    format!("bert.encoder.layer.{layer}.{location}.adapters.{name}.{part}")
}

/// `bert.encoder...` as `BertAdapterModel` names it, or `encoder...` as a bare `BertModel`
/// with adapters does.
fn lookup<'a>(file: &'a WeightFile, name: &str) -> Option<&'a RawTensor> {
    file.get(name)
        .or_else(|| name.strip_prefix("bert.").and_then(|bare| file.get(bare)))
}

fn tensor_1d(raw: &RawTensor, device: &Device) -> Tensor<1> {
    Tensor::from_data(
        TensorData::new(raw.values.clone(), [raw.values.len()]),
        device,
    )
}

fn require_bert(model: &SequenceClassifier) -> Result<()> {
    if model.bert.is_none() {
        return Err(TrainError::Invalid(format!(
            "AdapterHub adapters are read and written for BERT; this model is {}",
            model.backbone_name()
        )));
    }
    Ok(())
}

fn activation_name(activation: Activation) -> String {
    serde_json::to_value(activation)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "relu".into())
}
