//! BitFit (Ben Zaken, Ravfogel and Goldberg 2022, "BitFit: Simple Parameter-efficient
//! Fine-tuning for Transformer-based Masked Language-models"): only the bias terms train, those
//! of every projection and of every layer norm (Burn's `beta`), plus the head.
//!
//! Trainable parameters for BERT: `L·(7h + f) + h` biases (per layer four attention projections,
//! the intermediate `f`, the output and two layer norms; then the embedding layer norm), plus `h`
//! for the pooler when the readout uses it, plus the head `h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::SequenceClassifier;

use crate::method::{Method, Registered};

/// BitFit: no settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BitFitConfig {}

impl Registered for BitFitConfig {
    const NAME: &'static str = "bitfit";
    const SUMMARY: &'static str =
        "only bias terms (projections and layer norms) plus the head (Ben Zaken et al. 2022)";
}

impl Method for BitFitConfig {
    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        let backbone = model.backbone_name();
        vec![
            format!("{backbone}.*.bias"),
            format!("{backbone}.*.beta"),
            "head.*".into(),
        ]
    }
}
