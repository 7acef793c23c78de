//! P-tuning v2 (Liu et al. 2022, "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning
//! Universally Across Scales and Tasks"): deep prompts, trained key and value rows in every
//! layer's attention, trained directly (no reparameterisation, the paper's default). The
//! backbone is frozen. This is also VPT-deep (Jia et al. 2022, "Visual Prompt Tuning"): nothing
//! in it is specific to text, so it applies unchanged to any sequence of patch embeddings.
//!
//! The prompts are a prefix-only adapter (see `kiln_models::adapter`), saved on its own like any
//! adapter. Default `l = 20`. `--prefix-positions` (GPT-2) lets the prefix take the first
//! positions, as HF GPT-2 under peft's prefix tuning, so the run exports to peft.
//! Trainable parameters: `2·L·l·h + h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::{AdapterConfig, SequenceClassifier};

use crate::error::Result;
use crate::method::{Method, MethodOptions};
use crate::methods::prompt::{check_len, set_prefix_positions};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PTuningV2Config {
    /// `l`, prompt rows per layer.
    pub len: usize,
    pub name: String,
    /// GPT-2's real tokens are numbered after the prefix (peft's layout).
    #[serde(default)]
    pub prefix_positions: bool,
}

impl PTuningV2Config {
    pub fn with_options(options: &MethodOptions) -> Self {
        Self {
            len: options.prefix_len.unwrap_or(20),
            name: options.adapter_name.clone().unwrap_or("p-tuning-v2".into()),
            prefix_positions: options.prefix_positions.unwrap_or(false),
        }
    }
}

impl Method for PTuningV2Config {
    fn check(&self, _model: &SequenceClassifier) -> Result<()> {
        check_len("prefix-len", self.len)
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        set_prefix_positions(model, self.prefix_positions)?;
        Ok(model.add_adapter(&self.name, &AdapterConfig::prefix_only(self.len))?)
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        let mut patterns = model.adapter_patterns(&self.name);
        patterns.push("head.*".into());
        patterns
    }
}
