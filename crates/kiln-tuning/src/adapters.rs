//! What the bottleneck-adapter methods share: the adapter's options (bottleneck, non-linearity,
//! initialisation, whether layer norms train, the name it is saved under) and the step that puts
//! one into the model and names what trains.

use serde::{Deserialize, Serialize};

use kiln_models::{Activation, AdapterConfig, AdapterInit, SequenceClassifier};

use crate::error::{Result, TuningError};
use crate::method::MethodOptions;

/// Options of one bottleneck adapter; each method supplies its paper's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BottleneckOptions {
    /// Bottleneck width `m`; `None` derives it as `h / reduction_factor`.
    pub bottleneck: Option<usize>,
    pub reduction_factor: usize,
    pub activation: Activation,
    pub init: AdapterInit,
    /// Train every layer norm of the backbone as well (Houlsby et al. do).
    pub train_norms: bool,
    /// The name the adapter is held, saved and loaded under.
    pub name: String,
}

/// The CLI flags [`BottleneckOptions::with_options`] reads.
pub const BOTTLENECK_FLAGS: &[&str] = &[
    "bottleneck",
    "reduction-factor",
    "adapter-activation",
    "adapter-init",
    "train-norms",
    "adapter-name",
];

impl BottleneckOptions {
    pub fn new(reduction_factor: usize, activation: Activation, init: AdapterInit) -> Self {
        Self {
            bottleneck: None,
            reduction_factor,
            activation,
            init,
            train_norms: false,
            name: "adapter".into(),
        }
    }

    /// These defaults with the options the user gave.
    pub fn with_options(mut self, options: &MethodOptions) -> Self {
        self.bottleneck = options.bottleneck.or(self.bottleneck);
        self.reduction_factor = options.reduction_factor.unwrap_or(self.reduction_factor);
        self.activation = options.adapter_activation.unwrap_or(self.activation);
        self.init = options.adapter_init.unwrap_or(self.init);
        self.train_norms = options.train_norms.unwrap_or(self.train_norms);
        self.name = options.adapter_name.clone().unwrap_or(self.name);
        self
    }

    /// `m` on a model of width `h`.
    pub fn width(&self, hidden: usize) -> usize {
        self.bottleneck
            .unwrap_or(hidden / self.reduction_factor.max(1))
    }

    pub fn check(&self, model: &SequenceClassifier) -> Result<()> {
        if self.bottleneck == Some(0) {
            return Err(TuningError::Option {
                option: "bottleneck",
                message: "an adapter bottleneck must be at least 1 wide".into(),
            });
        }
        if self.bottleneck.is_none()
            && (self.reduction_factor == 0 || self.reduction_factor > model.hidden_size())
        {
            return Err(TuningError::Option {
                option: "reduction-factor",
                message: format!(
                    "{} leaves no bottleneck on a model {} wide",
                    self.reduction_factor,
                    model.hidden_size()
                ),
            });
        }
        if self.name.is_empty() {
            return Err(TuningError::Option {
                option: "adapter-name",
                message: "an adapter needs a name".into(),
            });
        }
        Ok(())
    }

    /// The adapter's layout: which slots, at `scale`, with a prefix of `prefix_len` rows.
    pub fn layout(
        &self,
        model: &SequenceClassifier,
        slots: Slots,
        scale: f64,
        prefix_len: usize,
    ) -> AdapterConfig {
        AdapterConfig {
            after_attention: slots.after_attention,
            after_feed_forward: slots.after_feed_forward,
            parallel: slots.parallel,
            bottleneck: self.width(model.hidden_size()),
            activation: self.activation,
            scale,
            init: self.init,
            prefix_len,
        }
    }

    /// The adapter's parameters, the head, and the layer norms if they train.
    pub fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        let mut patterns = model.adapter_patterns(&self.name);
        if self.train_norms {
            patterns.extend(model.norm_patterns());
        }
        patterns.push("head.*".into());
        patterns
    }
}

/// Where in each layer an adapter sits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slots {
    pub after_attention: bool,
    pub after_feed_forward: bool,
    pub parallel: bool,
}
