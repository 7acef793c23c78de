//! Adapters on their own, apart from the model and the run: a directory with
//! `adapter_config.json` (method, name, backbone, sizes, slots) and `adapter.safetensors` (the
//! adapter's tensors, keyed `layers.{i}.{slot}.{tensor}` for either backbone). Several can be
//! loaded into one model, one active at a time or all fused; loading never touches the base.

use std::path::Path;

use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use kiln_models::paths::{ParamMapper, ParamVisitor, map_params, visit_params};
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
    let expected = adapter_tensors(&model, index);
    let weights = dir.join(ADAPTER_WEIGHTS_FILE);
    let (model, loaded) = load_params_as(model, &weights, |path| file_key(path, index))?;
    if loaded != expected {
        return Err(TrainError::checkpoint(
            &weights,
            format!("holds {loaded} of the adapter's {expected} tensors"),
        ));
    }
    Ok((model, saved))
}

/// `into` with a copy of `from`'s adapter `name` added as `as_name` (same layout, same weights),
/// active; nothing else of `into` changes. Both models must share the backbone's shape.
pub fn copy_adapter(
    from: &SequenceClassifier,
    name: &str,
    into: SequenceClassifier,
    as_name: &str,
) -> Result<SequenceClassifier> {
    let source = from
        .adapter_index(name)
        .ok_or_else(|| TrainError::Invalid(format!("the model holds no adapter `{name}`")))?;
    if (from.hidden_size(), from.num_layers()) != (into.hidden_size(), into.num_layers()) {
        return Err(TrainError::Invalid(format!(
            "adapter `{name}` is for {} layers of width {}; the model has {} of {}",
            from.num_layers(),
            from.hidden_size(),
            into.num_layers(),
            into.hidden_size()
        )));
    }
    struct Collect {
        index: usize,
        tensors: HashMap<String, TensorData>,
    }
    impl ParamVisitor for Collect {
        fn visit<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
            if let Some(key) = file_key(path, self.index) {
                self.tensors.insert(key, param.val().into_data());
            }
        }
    }
    struct Fill {
        index: usize,
        tensors: HashMap<String, TensorData>,
    }
    impl ParamMapper for Fill {
        fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            match file_key(path, self.index).and_then(|key| self.tensors.remove(&key)) {
                Some(data) => {
                    let device = param.lazy_device();
                    Param::initialized(param.id, Tensor::from_data(data, &device))
                }
                None => param,
            }
        }
    }
    let mut collect = Collect {
        index: source,
        tensors: HashMap::new(),
    };
    visit_params(from, &mut collect);
    let mut into = into;
    into.add_adapter(as_name, &from.adapters[source].config)?;
    let mut fill = Fill {
        index: into.adapters.len() - 1,
        tensors: collect.tensors,
    };
    let into = map_params(into, &mut fill);
    match fill.tensors.keys().next() {
        Some(left) => Err(TrainError::Invalid(format!(
            "adapter `{name}`'s tensor `{left}` found no place in the model"
        ))),
        None => Ok(into),
    }
}

/// How many tensors adapter `index` of `model` has, over every layer.
fn adapter_tensors(model: &SequenceClassifier, index: usize) -> usize {
    struct Count {
        index: usize,
        tensors: usize,
    }
    impl ParamVisitor for Count {
        fn visit<const D: usize>(&mut self, path: &str, _: &Param<Tensor<D>>) {
            self.tensors += usize::from(file_key(path, self.index).is_some());
        }
    }
    let mut count = Count { index, tensors: 0 };
    visit_params(model, &mut count);
    count.tensors
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
