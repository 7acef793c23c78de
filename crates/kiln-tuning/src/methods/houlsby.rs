//! Houlsby adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP"): a
//! bottleneck adapter `x + up(f(down(x)))` on the output of every attention block and of every
//! feed-forward block, before the residual is added; the backbone is frozen, the adapters, the
//! layer norms and the head train.
//!
//! Defaults as AdapterHub's `HoulsbyConfig`: `m = h/16`, swish, near-identity initialisation,
//! layer norms trained. Trainable parameters: `L·2·(2hm + m + h) + [2h·(2L+1) with
//! --train-norms] + h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::{Activation, AdapterInit, SequenceClassifier};

use crate::adapters::{BottleneckOptions, Slots};
use crate::error::Result;
use crate::method::{Method, Registered};
use crate::options::MethodOption;

/// Houlsby adapters' settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoulsbyConfig {
    /// The adapter's shape and name.
    #[serde(flatten)]
    pub adapter: BottleneckOptions,
}

impl Default for HoulsbyConfig {
    fn default() -> Self {
        let mut adapter = BottleneckOptions::new(16, Activation::Silu, AdapterInit::NearIdentity);
        adapter.train_norms = true;
        adapter.name = "houlsby".into();
        Self { adapter }
    }
}

impl Registered for HoulsbyConfig {
    const NAME: &'static str = "houlsby";
    const SUMMARY: &'static str = "bottleneck adapters after attention and feed-forward, layer \
                                   norms train (Houlsby et al. 2019)";

    fn options() -> Vec<MethodOption<Self>> {
        let mut options = BottleneckOptions::options(|c: &Self| &c.adapter, |c| &mut c.adapter);
        options.push(BottleneckOptions::stack_option(
            |c: &Self| &c.adapter,
            |c| &mut c.adapter,
        ));
        options
    }
}

impl Method for HoulsbyConfig {
    fn adapter_name(&self) -> Option<&str> {
        Some(&self.adapter.name)
    }

    fn saved_adapters(&self) -> &[std::path::PathBuf] {
        &self.adapter.stack_on
    }

    fn check(&self, model: &SequenceClassifier) -> Result<()> {
        self.adapter.check(model)
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let slots = Slots {
            after_attention: true,
            after_feed_forward: true,
            parallel: false,
            original_ln_before: false,
        };
        let layout = self.adapter.layout(model, slots, 1.0, 0);
        self.adapter.add(model, &layout)
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        self.adapter.trainable_patterns(model)
    }
}
