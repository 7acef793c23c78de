//! AdapterDrop (Rücklé et al. 2021, "AdapterDrop: On the Efficiency of Adapters in
//! Transformers"): Pfeiffer adapters that are removed from the lowest `n` layers at inference,
//! which saves their cost there (and, while training, the backward pass below the lowest
//! adapter). Robust training draws `n` uniformly from `0..=drop_max` at every step, so one
//! trained adapter serves any `n` at inference.
//!
//! Defaults: Pfeiffer's adapter (`m = h/16`, ReLU, near-identity), `drop_max = L - 1`, and the
//! lower half of the layers (`n = L/2`) dropped at inference. Trainable parameters are
//! Pfeiffer's: `L·(2hm + m + h) + h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::{Activation, AdapterInit, SequenceClassifier};

use crate::adapters::BottleneckOptions;
use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::methods::pfeiffer::PFEIFFER_SLOTS;
use crate::options::{MethodOption, show_or};

/// AdapterDrop's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterDropConfig {
    /// The Pfeiffer adapter's shape and name.
    #[serde(flatten)]
    pub adapter: BottleneckOptions,
    /// Lowest layers without adapters at inference; `None` is half the layers.
    pub drop_layers: Option<usize>,
    /// Most layers dropped in a training step; `None` is all but the top one.
    pub drop_max: Option<usize>,
}

impl Default for AdapterDropConfig {
    fn default() -> Self {
        let mut adapter = BottleneckOptions::new(16, Activation::Relu, AdapterInit::NearIdentity);
        adapter.name = "adapter-drop".into();
        Self {
            adapter,
            drop_layers: None,
            drop_max: None,
        }
    }
}

impl Registered for AdapterDropConfig {
    const NAME: &'static str = "adapter-drop";
    const SUMMARY: &'static str = "Pfeiffer adapters dropped from the lowest layers, robust \
                                   training (Rücklé et al. 2021)";

    fn options() -> Vec<MethodOption<Self>> {
        let mut options = vec![
            MethodOption::new(
                "drop-layers",
                "N",
                "adapter-drop: lowest layers without adapters at inference",
                |c: &Self| show_or(&c.drop_layers, "L/2"),
                |c, n| c.drop_layers = Some(n),
            ),
            MethodOption::new(
                "drop-max",
                "N",
                "adapter-drop: most layers dropped in a training step",
                |c: &Self| show_or(&c.drop_max, "L-1"),
                |c, n| c.drop_max = Some(n),
            ),
        ];
        options.extend(BottleneckOptions::options(
            |c: &Self| &c.adapter,
            |c| &mut c.adapter,
        ));
        options
    }
}

impl AdapterDropConfig {
    /// `(drop_max, drop_layers)` on a model of `layers` layers.
    pub fn counts(&self, layers: usize) -> (usize, usize) {
        (
            self.drop_max.unwrap_or(layers.saturating_sub(1)),
            self.drop_layers.unwrap_or(layers / 2),
        )
    }
}

impl Method for AdapterDropConfig {
    fn adapter_name(&self) -> Option<&str> {
        Some(&self.adapter.name)
    }

    fn check(&self, model: &SequenceClassifier) -> Result<()> {
        let layers = model.num_layers();
        let (drop_max, drop_layers) = self.counts(layers);
        for (option, value) in [("drop-max", drop_max), ("drop-layers", drop_layers)] {
            if value > layers {
                return Err(TuningError::Option {
                    option,
                    message: format!("{value} is more layers than the model's {layers}"),
                });
            }
        }
        self.adapter.check(model)
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let layout = self.adapter.layout(model, PFEIFFER_SLOTS, 1.0, 0);
        model.add_adapter(&self.adapter.name, &layout)?;
        let (drop_max, drop_layers) = self.counts(model.num_layers());
        model.set_adapter_drop(drop_max, drop_layers);
        Ok(())
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        self.adapter.trainable_patterns(model)
    }
}
