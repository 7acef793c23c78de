//! The classifier's adapter registry: adapters by name in every layer's slots, which one is
//! active, AdapterFusion over them, AdapterDrop's depth, and the trainability patterns of each.

use super::{NamedAdapter, SequenceClassifier};
use crate::adapter::{ActiveAdapter, AdapterConfig, AdapterFusion, LayerAdapters};
use crate::backbone::no_attention;
use crate::error::{ModelError, Result};
use burn::tensor::Tensor;

impl SequenceClassifier {
    /// Patterns of the parameters of the adapter called `name`, in every layer.
    pub fn adapter_patterns(&self, name: &str) -> Vec<String> {
        self.adapter_index(name)
            .map(|k| vec![format!("{}.*.adapters.loaded.{k}.*", self.backbone_name())])
            .unwrap_or_default()
    }

    /// Patterns of the fusion layers' parameters.
    pub fn fusion_patterns(&self) -> Vec<String> {
        vec![format!("{}.*.adapters.fusion.*", self.backbone_name())]
    }

    /// Slot index of the adapter called `name`.
    pub fn adapter_index(&self, name: &str) -> Option<usize> {
        self.adapters.iter().position(|a| a.name == name)
    }

    /// Every layer's adapter slots, bottom to top, to change (importers fill them).
    pub fn layer_adapters_mut(&mut self) -> Vec<&mut Option<LayerAdapters>> {
        self.backbone_mut().layer_adapters_mut()
    }

    fn set_active(&mut self, active: ActiveAdapter) {
        for slots in self.layer_adapters_mut().into_iter().flatten() {
            slots.active = active.clone();
        }
    }

    /// Adds a fresh adapter called `name` to every layer and makes it the active one.
    pub fn add_adapter(&mut self, name: &str, config: &AdapterConfig) -> Result<()> {
        if self.adapter_index(name).is_some() {
            return Err(ModelError::InvalidInput(format!(
                "the model already holds an adapter called `{name}`"
            )));
        }
        if config.bottleneck == 0
            && (config.after_attention || config.after_feed_forward || config.parallel)
        {
            return Err(ModelError::InvalidInput(
                "an adapter bottleneck must be at least 1 wide".into(),
            ));
        }
        if config.prefix_len > 0 && !self.backbone().has_attention() {
            return Err(no_attention("attention prefixes"));
        }
        let width = self.hidden_size();
        let device = self.head.output.weight.lazy_device();
        for (i, slots) in self.layer_adapters_mut().into_iter().enumerate() {
            slots
                .get_or_insert_with(|| LayerAdapters {
                    loaded: Vec::new(),
                    fusion: None,
                    active: ActiveAdapter::Off,
                })
                .loaded
                .push(config.init_layer(width, i == 0, &device));
        }
        self.adapters.push(NamedAdapter {
            name: name.to_string(),
            config: config.clone(),
        });
        self.set_active_adapter(Some(name))
    }

    /// Makes the adapter called `name` the only active one; `None` runs the plain backbone.
    pub fn set_active_adapter(&mut self, name: Option<&str>) -> Result<()> {
        let active = match name {
            None => ActiveAdapter::Off,
            Some(name) => ActiveAdapter::One(self.require_adapter(name)?),
        };
        self.set_active(active);
        Ok(())
    }

    /// The active adapter's name, `None` when adapters are off or fused.
    pub fn active_adapter(&self) -> Option<&str> {
        let slots = self.backbone().layer_adapters().first()?.as_ref()?;
        match slots.active {
            ActiveAdapter::One(k) => self.adapters.get(k).map(|a| a.name.as_str()),
            _ => None,
        }
    }

    /// Removes the adapter called `name` from every layer.
    pub fn delete_adapter(&mut self, name: &str) -> Result<()> {
        let index = self.require_adapter(name)?;
        for slots in self.layer_adapters_mut().into_iter().flatten() {
            if slots.fusion.is_some() {
                return Err(ModelError::InvalidInput(format!(
                    "adapter `{name}` takes part in a fusion; it cannot be deleted"
                )));
            }
            slots.loaded.remove(index);
            slots.active = match slots.active.clone() {
                ActiveAdapter::One(k) if k == index => ActiveAdapter::Off,
                ActiveAdapter::One(k) if k > index => ActiveAdapter::One(k - 1),
                // A composition names adapters by index: deleting one ends it.
                ActiveAdapter::Composed(_) => ActiveAdapter::Off,
                other => other,
            };
        }
        self.adapters.remove(index);
        Ok(())
    }

    /// Adds a fusion layer over all loaded adapters to every layer (AdapterFusion) and makes it
    /// active. Every adapter must sit after the feed-forward and nowhere else. The scores' dropout
    /// is `score_dropout`, else the backbone's attention dropout (as AdapterHub's `dropout_prob`);
    /// `value_regularization` weighs `‖I - V‖²` in the training loss.
    pub fn add_fusion(
        &mut self,
        score_dropout: Option<f64>,
        value_regularization: f64,
    ) -> Result<()> {
        if self.adapters.len() < 2 {
            return Err(ModelError::InvalidInput(format!(
                "AdapterFusion needs at least two adapters; the model holds {}",
                self.adapters.len()
            )));
        }
        if let Some(adapter) = self.adapters.iter().find(|a| {
            let c = &a.config;
            !c.after_feed_forward || c.after_attention || c.parallel || c.prefix_len > 0
        }) {
            return Err(ModelError::InvalidInput(format!(
                "adapter `{}` is not a feed-forward (Pfeiffer) adapter; AdapterFusion mixes \
                 adapters that sit after the feed-forward only",
                adapter.name
            )));
        }
        let width = self.hidden_size();
        let device = self.head.output.weight.lazy_device();
        let score_dropout = score_dropout.unwrap_or_else(|| self.backbone().attention_dropout());
        for slots in self.layer_adapters_mut().into_iter().flatten() {
            slots.fusion = Some(AdapterFusion::new(
                width,
                score_dropout,
                value_regularization,
                &device,
            ));
            slots.active = ActiveAdapter::Fusion;
        }
        Ok(())
    }

    /// AdapterFusion's value regulariser summed over the layers (`None` without an active
    /// fusion or with its weight 0): what training adds to the task loss.
    pub fn fusion_regularization(&self) -> Option<Tensor<1>> {
        self.backbone()
            .layer_adapters()
            .into_iter()
            .flatten()
            .filter_map(LayerAdapters::fusion_regularization)
            .reduce(|a, b| a + b)
    }

    fn require_adapter(&self, name: &str) -> Result<usize> {
        self.adapter_index(name).ok_or_else(|| {
            let names: Vec<&str> = self.adapters.iter().map(|a| a.name.as_str()).collect();
            ModelError::InvalidInput(format!(
                "no adapter called `{name}` (the model holds: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ))
        })
    }

    /// AdapterDrop: `inference` lowest layers run without adapters at inference; while training
    /// each step drops a number drawn from `0..=training_max`.
    pub fn set_adapter_drop(&mut self, training_max: usize, inference: usize) {
        self.adapter_drop_max = training_max;
        self.adapter_drop_state().inference = inference;
    }

    /// Layers without adapters at inference (AdapterDrop).
    pub fn adapter_drop_inference(&self) -> usize {
        self.backbone().adapter_drop().inference
    }

    pub(super) fn adapter_drop_state(&mut self) -> &mut crate::adapter::AdapterDropState {
        self.backbone_mut().adapter_drop_state()
    }
}
