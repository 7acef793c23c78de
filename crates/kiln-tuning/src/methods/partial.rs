//! Partial-k: the last `k` transformer layers, what sits above them (BERT's pooler when the
//! readout uses it, GPT-2's final layer norm) and the head train; the rest is frozen.
//!
//! Standard baseline of the transfer literature (e.g. Yosinski et al. 2014; "partial-k" in
//! He et al. 2022). Trainable parameters: `k·P_layer + P_top + h·c + c`, with
//! `P_layer = 4h² + 2h·f + 9h + f` for BERT (f the feed-forward width) and
//! `12h² + 13h` for GPT-2 (f = 4h).

use serde::{Deserialize, Serialize};

use kiln_models::{FrozenCut, SequenceClassifier};

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::options::MethodOption;

/// Partial-k's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialConfig {
    /// How many of the top layers train.
    pub k: usize,
}

impl Default for PartialConfig {
    fn default() -> Self {
        Self { k: 2 }
    }
}

/// `--k` (partial-k's trained layers, mlp-k's head layers).
pub(crate) fn k_option<C: 'static>(k: fn(&C) -> usize, k_mut: fn(&mut C) -> &mut usize) -> MethodOption<C> {
    MethodOption::new(
        "k",
        "K",
        "partial-k: layers that train; mlp-k: layers of the head",
        move |c| k(c).to_string(),
        move |c, v| *k_mut(c) = v,
    )
}

impl Registered for PartialConfig {
    const NAME: &'static str = "partial-k";
    const SUMMARY: &'static str =
        "the last k layers (and what sits above them) plus the head train";

    fn options() -> Vec<MethodOption<Self>> {
        vec![k_option(|c: &Self| c.k, |c| &mut c.k)]
    }
}

impl Method for PartialConfig {
    fn default_lr(&self) -> f64 {
        1e-4
    }

    fn label(&self) -> Option<String> {
        Some(format!("partial-{}", self.k))
    }

    fn check(&self, model: &SequenceClassifier) -> Result<()> {
        let layers = model.num_layers();
        if self.k > layers {
            return Err(TuningError::Option {
                option: "k",
                message: format!(
                    "partial-{} asks for more layers than the model's {layers}",
                    self.k
                ),
            });
        }
        Ok(())
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        let layers = model.num_layers();
        let mut patterns: Vec<String> = (layers.saturating_sub(self.k)..layers)
            .map(|i| format!("{}.*", model.layer_path(i)))
            .collect();
        patterns.extend(model.top_paths().iter().map(|p| format!("{p}.*")));
        patterns.push("head.*".into());
        patterns
    }

    fn frozen_cut(&self, model: &SequenceClassifier) -> Option<FrozenCut> {
        let layers = model.num_layers();
        model.cacheable(FrozenCut::BeforeLayer(layers.saturating_sub(self.k)))
    }
}
