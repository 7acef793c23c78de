//! Pfeiffer adapters (Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition for
//! Transfer Learning"): one bottleneck adapter `x + up(f(down(x)))` per layer, on the output of
//! the feed-forward block before its residual is added; the backbone is frozen, the adapters and
//! the head train. Half of Houlsby's adapters at about the same accuracy, and the adapter
//! AdapterFusion mixes.
//!
//! Defaults as AdapterHub's `PfeifferConfig`: `m = h/16`, ReLU, near-identity initialisation.
//! Trainable parameters: `L·(2hm + m + h) + [2h·(2L+1) with --train-norms] + h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::{Activation, AdapterInit, SequenceClassifier};

use crate::adapters::{BottleneckOptions, Slots};
use crate::error::Result;
use crate::method::{Method, Registered};
use crate::options::MethodOption;

/// Pfeiffer adapters' settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PfeifferConfig {
    /// The adapter's shape and name.
    #[serde(flatten)]
    pub adapter: BottleneckOptions,
}

impl Default for PfeifferConfig {
    fn default() -> Self {
        let mut adapter = BottleneckOptions::new(16, Activation::Relu, AdapterInit::NearIdentity);
        adapter.name = "pfeiffer".into();
        Self { adapter }
    }
}

impl Registered for PfeifferConfig {
    const NAME: &'static str = "pfeiffer";
    const SUMMARY: &'static str =
        "one bottleneck adapter after each feed-forward (Pfeiffer et al. 2021)";

    fn options() -> Vec<MethodOption<Self>> {
        let mut options = BottleneckOptions::options(|c: &Self| &c.adapter, |c| &mut c.adapter);
        options.push(BottleneckOptions::stack_option(
            |c: &Self| &c.adapter,
            |c| &mut c.adapter,
        ));
        options
    }
}

/// Pfeiffer's placement: after the feed-forward only.
pub(crate) const PFEIFFER_SLOTS: Slots = Slots {
    after_attention: false,
    after_feed_forward: true,
    parallel: false,
    original_ln_before: true,
};

impl Method for PfeifferConfig {
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
        let layout = self.adapter.layout(model, PFEIFFER_SLOTS, 1.0, 0);
        self.adapter.add(model, &layout)
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        self.adapter.trainable_patterns(model)
    }
}
