//! MLP-k: a `k`-layer MLP head (GELU between layers, hidden width = the backbone's) on a frozen
//! backbone's pooled features.
//!
//! The non-linear probe of the transfer literature. Trainable parameters:
//! `(k-1)(h² + h) + h·c + c`. `mlp-1` is the linear probe.

use serde::{Deserialize, Serialize};

use kiln_models::{FrozenCut, SequenceClassifier};

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::methods::partial::k_option;
use crate::options::MethodOption;

/// MLP-k's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Linear layers in the head.
    pub k: usize,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self { k: 2 }
    }
}

impl Registered for MlpConfig {
    const NAME: &'static str = "mlp-k";
    const SUMMARY: &'static str = "frozen backbone, k-layer MLP head";

    fn options() -> Vec<MethodOption<Self>> {
        vec![k_option(|c: &Self| c.k, |c| &mut c.k)]
    }
}

impl Method for MlpConfig {
    fn label(&self) -> Option<String> {
        Some(format!("mlp-{}", self.k))
    }

    fn head_layers(&self) -> usize {
        self.k
    }

    fn check(&self, _model: &SequenceClassifier) -> Result<()> {
        if self.k == 0 {
            return Err(TuningError::Option {
                option: "k",
                message: "an MLP head needs at least one layer".into(),
            });
        }
        Ok(())
    }

    fn trainable_patterns(&self, _model: &SequenceClassifier) -> Vec<String> {
        vec!["head.*".into()]
    }

    fn frozen_cut(&self, model: &SequenceClassifier) -> Option<FrozenCut> {
        model.cacheable(FrozenCut::Features)
    }
}
