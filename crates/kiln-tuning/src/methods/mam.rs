//! MAM adapter (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer
//! Learning", "Mix-And-Match"): prefix tuning on every attention (`l` key and value rows each
//! query may attend to) plus a scaled parallel adapter beside every feed-forward block. The
//! backbone is frozen; prefixes, adapters and the head train.
//!
//! Defaults from the paper (l = 30, bottleneck 512 with s = 4 on a 1024-wide model), scaled to
//! the model's width: `l = 30`, `m = h/2`, `s = 4`, ReLU, LoRA-style initialisation. The
//! prefixes are trained directly, without the paper's MLP reparameterisation (the prefix-tuning
//! method adds that). Trainable parameters: `L·(2·l·h + 2hm + m + h) + h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::{Activation, AdapterInit, SequenceClassifier};

use crate::adapters::BottleneckOptions;
use crate::error::{Result, TuningError};
use crate::method::{Method, MethodOptions};
use crate::methods::parallel::{PARALLEL_SLOTS, check_scale};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MamConfig {
    #[serde(flatten)]
    pub adapter: BottleneckOptions,
    pub scale: f64,
    /// `l`, prefix rows per attention.
    pub prefix_len: usize,
}

impl MamConfig {
    pub fn with_options(options: &MethodOptions) -> Self {
        let mut defaults = BottleneckOptions::new(2, Activation::Relu, AdapterInit::Lora);
        defaults.name = "mam".into();
        Self {
            adapter: defaults.with_options(options),
            scale: options.scale.unwrap_or(4.0),
            prefix_len: options.prefix_len.unwrap_or(30),
        }
    }
}

impl Method for MamConfig {
    fn check(&self, model: &SequenceClassifier) -> Result<()> {
        check_scale(self.scale)?;
        if self.prefix_len == 0 {
            return Err(TuningError::Option {
                option: "prefix-len",
                message: "MAM needs at least one prefix row".into(),
            });
        }
        self.adapter.check(model)
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let layout = self
            .adapter
            .layout(model, PARALLEL_SLOTS, self.scale, self.prefix_len);
        Ok(model.add_adapter(&self.adapter.name, &layout)?)
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        self.adapter.trainable_patterns(model)
    }
}
