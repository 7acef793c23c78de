//! Compacter (Karimi Mahabadi et al. 2021, "Compacter: Efficient Low-Rank Hypercomplex Adapter
//! Layers"): Houlsby's adapters (after attention and after the feed-forward) whose down- and
//! up-projections are parameterised hypercomplex multiplication layers, `H = Σ_k S_k ⊗ (L_k·R_k)`
//! with rules `S_k` shared by every adapter layer and rank-`r` factors per projection (see
//! [`kiln_models::phm`]); the backbone is frozen.
//!
//! Defaults as AdapterHub's `CompacterConfig`: `m = h/32`, GELU, `n = 4`, `r = 1`, the layer norms
//! frozen. Trainable parameters: `L·2·(2r(h + m) + m + h) + n³ + h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::{Activation, AdapterInit, SequenceClassifier};

use crate::adapters::{BottleneckOptions, PhmOptions, Slots};
use crate::error::Result;
use crate::method::{Method, Registered};
use crate::options::MethodOption;

/// Compacter's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompacterConfig {
    /// The adapter's shape and name.
    #[serde(flatten)]
    pub adapter: BottleneckOptions,
    /// The PHM projections' shape.
    #[serde(flatten)]
    pub phm: PhmOptions,
}

impl Default for CompacterConfig {
    fn default() -> Self {
        let mut adapter = BottleneckOptions::new(32, Activation::Gelu, AdapterInit::NearIdentity);
        adapter.name = "compacter".into();
        Self {
            adapter,
            phm: PhmOptions::default(),
        }
    }
}

impl Registered for CompacterConfig {
    const NAME: &'static str = "compacter";
    const SUMMARY: &'static str = "Houlsby-placed adapters with shared-rule PHM projections \
                                   (Karimi Mahabadi et al. 2021)";

    fn options() -> Vec<MethodOption<Self>> {
        let mut options = BottleneckOptions::options(|c: &Self| &c.adapter, |c| &mut c.adapter);
        options.extend(PhmOptions::options(|c: &Self| &c.phm, |c| &mut c.phm));
        options.push(BottleneckOptions::stack_option(
            |c: &Self| &c.adapter,
            |c| &mut c.adapter,
        ));
        options
    }
}

impl Method for CompacterConfig {
    fn adapter_name(&self) -> Option<&str> {
        Some(&self.adapter.name)
    }

    fn saved_adapters(&self) -> &[std::path::PathBuf] {
        &self.adapter.stack_on
    }

    fn check(&self, model: &SequenceClassifier) -> Result<()> {
        self.adapter.check(model)?;
        self.phm.check(model)
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let slots = Slots {
            after_attention: true,
            after_feed_forward: true,
            parallel: false,
            original_ln_before: false,
        };
        let layout = self.phm.apply(self.adapter.layout(model, slots, 1.0, 0));
        self.adapter.add(model, &layout)
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        self.adapter.trainable_patterns(model)
    }
}
