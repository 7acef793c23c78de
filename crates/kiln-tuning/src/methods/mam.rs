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
use crate::method::{Method, Registered};
use crate::methods::parallel::{PARALLEL_SLOTS, check_scale, scale_option};
use crate::options::MethodOption;
use crate::prompts::prefix_len_option;

/// The MAM adapter's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MamConfig {
    /// The parallel adapter's shape and name.
    #[serde(flatten)]
    pub adapter: BottleneckOptions,
    /// `s`, the factor on the parallel adapter's output.
    pub scale: f64,
    /// `l`, prefix rows per attention.
    pub prefix_len: usize,
}

impl Default for MamConfig {
    fn default() -> Self {
        let mut adapter = BottleneckOptions::new(2, Activation::Relu, AdapterInit::Lora);
        adapter.name = "mam".into();
        Self {
            adapter,
            scale: 4.0,
            prefix_len: 30,
        }
    }
}

impl Registered for MamConfig {
    const NAME: &'static str = "mam";
    const SUMMARY: &'static str = "prefix tuning plus a scaled parallel adapter (He et al. 2022)";

    fn options() -> Vec<MethodOption<Self>> {
        let mut options = vec![
            prefix_len_option(|c: &Self| c.prefix_len, |c| &mut c.prefix_len),
            scale_option(|c: &Self| c.scale, |c| &mut c.scale),
        ];
        options.extend(BottleneckOptions::options(
            |c: &Self| &c.adapter,
            |c| &mut c.adapter,
        ));
        options
    }
}

impl Method for MamConfig {
    fn adapter_name(&self) -> Option<&str> {
        Some(&self.adapter.name)
    }

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
