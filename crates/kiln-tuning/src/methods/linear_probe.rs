//! Linear probe: the backbone is frozen and one linear layer on its pooled features trains.
//!
//! The classic test of what a representation already holds (Alain and Bengio 2016). Trainable
//! parameters: `h·c + c` for width `h` and `c` outputs.

use serde::{Deserialize, Serialize};

use kiln_models::{FrozenCut, SequenceClassifier};

use crate::method::{Method, Registered};

/// The linear probe: no settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinearProbeConfig {}

impl Registered for LinearProbeConfig {
    const NAME: &'static str = "linear-probe";
    const SUMMARY: &'static str = "frozen backbone, one linear layer on pooled features";
}

impl Method for LinearProbeConfig {
    fn trainable_patterns(&self, _model: &SequenceClassifier) -> Vec<String> {
        vec!["head.*".into()]
    }

    fn frozen_cut(&self, model: &SequenceClassifier) -> Option<FrozenCut> {
        model.cacheable(FrozenCut::Features)
    }
}
