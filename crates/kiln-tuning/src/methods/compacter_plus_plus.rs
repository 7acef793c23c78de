//! Compacter++ (Karimi Mahabadi et al. 2021, "Compacter: Efficient Low-Rank Hypercomplex Adapter
//! Layers"): Compacter's PHM adapter after the feed-forward block only, reading the closed
//! sub-layer as Pfeiffer's adapter does; the paper's most efficient variant, at about 0.05% of
//! BERT-base's parameters. The backbone is frozen.
//!
//! Defaults as AdapterHub's `CompacterPlusPlusConfig`: `m = h/32`, GELU, `n = 4`, `r = 1`.
//! Trainable parameters: `L·(2r(h + m) + m + h) + n³ + h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::{Activation, AdapterInit, SequenceClassifier};

use crate::adapters::{BottleneckOptions, PhmOptions};
use crate::error::Result;
use crate::method::{Method, Registered};
use crate::methods::pfeiffer::PFEIFFER_SLOTS;
use crate::options::MethodOption;

/// Compacter++'s settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompacterPlusPlusConfig {
    /// The adapter's shape and name.
    #[serde(flatten)]
    pub adapter: BottleneckOptions,
    /// The PHM projections' shape.
    #[serde(flatten)]
    pub phm: PhmOptions,
}

impl Default for CompacterPlusPlusConfig {
    fn default() -> Self {
        let mut adapter = BottleneckOptions::new(32, Activation::Gelu, AdapterInit::NearIdentity);
        adapter.name = "compacter++".into();
        Self {
            adapter,
            phm: PhmOptions::default(),
        }
    }
}

impl Registered for CompacterPlusPlusConfig {
    const NAME: &'static str = "compacter++";
    const SUMMARY: &'static str = "one shared-rule PHM adapter after each feed-forward \
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

impl Method for CompacterPlusPlusConfig {
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
        let layout = self
            .phm
            .apply(self.adapter.layout(model, PFEIFFER_SLOTS, 1.0, 0));
        self.adapter.add(model, &layout)
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        self.adapter.trainable_patterns(model)
    }
}
