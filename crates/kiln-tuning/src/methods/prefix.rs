//! Prefix tuning (Li and Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for
//! Generation"): every attention gets `l` key and value rows that every query may attend to. While
//! training they come from a reparameterisation, `l` embeddings through an MLP
//! `h → mid → L·2·h` (tanh between), which the paper needs for stable optimisation; after training
//! the MLP is folded away (`SequenceClassifier::fold_prefix_encoder`) into plain per-layer
//! prefixes, a prefix-only adapter that saves, loads and runs like any other, with the same
//! outputs (tested). The backbone is frozen.
//!
//! `--prefix-positions` (GPT-2) lets the prefix take the first positions, as HF GPT-2 under
//! peft's prefix tuning, so the folded run exports to peft.
//!
//! Defaults: `l = 20`, `mid = 512` (the paper's). Trainable parameters while training:
//! `l·h + (h·mid + mid) + (mid·2Lh + 2Lh) + h·c + c`; after folding the prefixes are `2·L·l·h`.

use serde::{Deserialize, Serialize};

use kiln_models::SequenceClassifier;

use crate::error::{Result, TuningError};
use crate::method::{Method, MethodOptions};
use crate::methods::prompt::{check_len, set_prefix_positions};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefixTuningConfig {
    /// `l`, prefix rows per attention.
    pub len: usize,
    /// `mid`, the reparameterisation MLP's hidden width.
    pub hidden: usize,
    /// The name the folded prefixes are held and saved under.
    pub name: String,
    /// GPT-2's real tokens are numbered after the prefix (peft's layout).
    #[serde(default)]
    pub prefix_positions: bool,
}

impl PrefixTuningConfig {
    pub fn with_options(options: &MethodOptions) -> Self {
        Self {
            len: options.prefix_len.unwrap_or(20),
            hidden: options.prefix_hidden.unwrap_or(512),
            name: options.adapter_name.clone().unwrap_or("prefix".into()),
            prefix_positions: options.prefix_positions.unwrap_or(false),
        }
    }
}

impl Method for PrefixTuningConfig {
    fn check(&self, _model: &SequenceClassifier) -> Result<()> {
        check_len("prefix-len", self.len)?;
        if self.hidden == 0 {
            return Err(TuningError::Option {
                option: "prefix-hidden",
                message: "the reparameterisation needs a hidden layer at least 1 wide".into(),
            });
        }
        Ok(())
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        set_prefix_positions(model, self.prefix_positions)?;
        model.add_prefix_encoder(self.len, self.hidden)?;
        Ok(())
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        vec![
            format!("{}.prefix_encoder.*", model.backbone_name()),
            "head.*".into(),
        ]
    }
}
