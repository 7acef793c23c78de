//! Adapters on their own, apart from the model and the run: a directory with
//! `adapter_config.json` (method, name, backbone, sizes, slots) and `adapter.safetensors` (the
//! adapter's tensors, keyed `layers.{i}.{slot}.{tensor}` for either backbone). Several can be
//! loaded into one model, one active at a time or all fused; loading never touches the base.

use std::path::Path;

use serde::{Deserialize, Serialize};

use kiln_models::{AdapterConfig, SequenceClassifier};

use crate::checkpoint::{load_params_as, save_params_as};
use crate::error::{Result, TrainError};
use crate::trainer::{read_json, write_json};

/// The adapter directory's settings file.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The adapter directory's tensors.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter.safetensors";

/// What `adapter_config.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedAdapter {
    /// The name the adapter is held under in a model.
    pub name: String,
    /// The kiln method that trained it (`houlsby`, `pfeiffer`, ...).
    pub method: String,
    /// `bert` or `gpt2`.
    pub backbone: String,
    /// Width of the model it was trained on.
    pub hidden_size: usize,
    /// Layers of the model it was trained on.
    pub num_layers: usize,
    /// Its shape (slots, bottleneck, non-linearity, prefix rows).
    pub adapter: AdapterConfig,
}

/// `bert.layers.3.adapters.loaded.{index}.feed_forward.up.weight` →
/// `layers.3.feed_forward.up.weight`; `None` for any other parameter.
fn file_key(path: &str, index: usize) -> Option<String> {
    let marker = format!(".adapters.loaded.{index}.");
    let (layer, rest) = path.split_once(&marker)?;
    let layer_index = layer.rsplit('.').next()?;
    Some(format!("layers.{layer_index}.{rest}"))
}

/// Writes the adapter called `name` of `model` into `dir` (weights first, config last, each
/// atomically).
pub fn save_adapter(
    model: &SequenceClassifier,
    name: &str,
    method: &str,
    dir: &Path,
) -> Result<()> {
    let (index, named) = model
        .adapters
        .iter()
        .enumerate()
        .find(|(_, a)| a.name == name)
        .ok_or_else(|| TrainError::Invalid(format!("the model holds no adapter `{name}`")))?;
    save_params_as(model, &dir.join(ADAPTER_WEIGHTS_FILE), |path| {
        file_key(path, index)
    })?;
    let saved = SavedAdapter {
        name: name.to_string(),
        method: method.to_string(),
        backbone: model.backbone_name().to_string(),
        hidden_size: model.hidden_size(),
        num_layers: model.num_layers(),
        adapter: named.config.clone(),
    };
    write_json(&dir.join(ADAPTER_CONFIG_FILE), &saved)
}

/// Loads the adapter saved in `dir` into `model` under its saved name and makes it active.
/// The adapter must fit the model (backbone, width, depth) and the file must hold every tensor.
pub fn load_adapter(
    model: SequenceClassifier,
    dir: &Path,
) -> Result<(SequenceClassifier, SavedAdapter)> {
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let saved: SavedAdapter = read_json(&config_path)?;
    let fits = [
        (
            "backbone",
            saved.backbone.clone(),
            model.backbone_name().to_string(),
        ),
        (
            "hidden_size",
            saved.hidden_size.to_string(),
            model.hidden_size().to_string(),
        ),
        (
            "num_layers",
            saved.num_layers.to_string(),
            model.num_layers().to_string(),
        ),
    ];
    if let Some((field, theirs, ours)) = fits.into_iter().find(|(_, a, b)| a != b) {
        return Err(TrainError::checkpoint(
            &config_path,
            format!("the adapter was trained with {field} {theirs}; this model has {ours}"),
        ));
    }
    let mut model = model;
    model
        .add_adapter(&saved.name, &saved.adapter)
        .map_err(|e| TrainError::checkpoint(&config_path, e.to_string()))?;
    let index = model.adapters.len() - 1;
    let weights = dir.join(ADAPTER_WEIGHTS_FILE);
    let (model, loaded) = load_params_as(model, &weights, |path| file_key(path, index))?;
    let expected = expected_tensors(&saved.adapter) * saved.num_layers;
    if loaded != expected {
        return Err(TrainError::checkpoint(
            &weights,
            format!("holds {loaded} of the adapter's {expected} tensors"),
        ));
    }
    Ok((model, saved))
}

/// Tensors per layer: weight and bias of both projections per bottleneck, key and value rows.
fn expected_tensors(config: &AdapterConfig) -> usize {
    4 * config.bottlenecks() + if config.prefix_len > 0 { 2 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::file_key;

    #[test]
    fn adapter_keys_drop_the_backbone_and_slot_index() {
        assert_eq!(
            file_key("bert.layers.3.adapters.loaded.1.feed_forward.up.weight", 1).as_deref(),
            Some("layers.3.feed_forward.up.weight")
        );
        assert_eq!(
            file_key("gpt2.blocks.10.adapters.loaded.0.prefix.key", 0).as_deref(),
            Some("layers.10.prefix.key")
        );
        assert_eq!(
            file_key("bert.layers.3.adapters.loaded.0.feed_forward.up.weight", 1),
            None
        );
        assert_eq!(
            file_key("bert.layers.3.adapters.fusion.query.weight", 0),
            None
        );
    }
}
