//! Full fine-tuning: every parameter of the backbone and the head trains.
//!
//! The reference point every other method is measured against. Trainable parameters: all of
//! them, backbone + head (one linear layer: `h·c + c`).

use serde::{Deserialize, Serialize};

use kiln_models::SequenceClassifier;

use crate::method::{Method, Registered};

/// Full fine-tuning: no settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FullConfig {}

impl Registered for FullConfig {
    const NAME: &'static str = "full";
    const SUMMARY: &'static str = "full fine-tuning: every parameter trains";
}

impl Method for FullConfig {
    fn default_lr(&self) -> f64 {
        5e-5
    }

    fn trainable_patterns(&self, _model: &SequenceClassifier) -> Vec<String> {
        vec!["*".into()]
    }
}
