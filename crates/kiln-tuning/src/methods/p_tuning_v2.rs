//! P-tuning v2 (Liu et al. 2022, "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning
//! Universally Across Scales and Tasks"): deep prompts, trained key and value rows in every
//! layer's attention, trained directly (no reparameterisation, the paper's default). The
//! backbone is frozen. (Not VPT-deep, Jia et al. 2022, which replaces every layer's prompt tokens
//! on image patches; VPT comes with a ViT backbone.)
//!
//! The prompts are a prefix-only adapter (see `kiln_models::adapter`), saved on its own like any
//! adapter. Default `l = 20`. `--prefix-positions` (GPT-2) lets the prefix take the first
//! positions, as HF GPT-2 under peft's prefix tuning, so the run exports to peft.
//! Trainable parameters: `2·L·l·h + h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::{AdapterConfig, SequenceClassifier};

use crate::error::Result;
use crate::method::{Method, Registered};
use crate::methods::prompt::{check_len, set_prefix_positions};
use crate::options::MethodOption;
use crate::prompts::{prefix_len_option, prefix_name_option, prefix_positions_option};

/// P-tuning v2's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PTuningV2Config {
    /// `l`, prompt rows per layer.
    pub len: usize,
    /// The name the prompts are held and saved under.
    pub name: String,
    /// GPT-2's real tokens are numbered after the prefix (peft's layout).
    #[serde(default)]
    pub prefix_positions: bool,
}

impl Default for PTuningV2Config {
    fn default() -> Self {
        Self {
            len: 20,
            name: "p-tuning-v2".into(),
            prefix_positions: false,
        }
    }
}

impl Registered for PTuningV2Config {
    const NAME: &'static str = "p-tuning-v2";
    const SUMMARY: &'static str =
        "P-tuning v2: deep prompts in every layer's attention (Liu et al. 2022)";

    fn options() -> Vec<MethodOption<Self>> {
        vec![
            prefix_len_option(|c: &Self| c.len, |c| &mut c.len),
            prefix_name_option(|c: &Self| &c.name, |c| &mut c.name),
            prefix_positions_option(|c: &Self| c.prefix_positions, |c| &mut c.prefix_positions),
        ]
    }
}

impl Method for PTuningV2Config {
    fn default_lr(&self) -> f64 {
        1e-2
    }

    fn adapter_name(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn peft_type(&self) -> Option<&'static str> {
        Some("PREFIX_TUNING")
    }

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
