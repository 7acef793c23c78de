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
use crate::method::{Method, Registered};
use crate::methods::prompt::{check_len, set_prefix_positions};
use crate::options::MethodOption;
use crate::prompts::{
    prefix_hidden_option, prefix_len_option, prefix_name_option, prefix_positions_option,
};

/// Prefix tuning's settings.
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

impl Default for PrefixTuningConfig {
    fn default() -> Self {
        Self {
            len: 20,
            hidden: 512,
            name: "prefix".into(),
            prefix_positions: false,
        }
    }
}

impl Registered for PrefixTuningConfig {
    const NAME: &'static str = "prefix";
    const SUMMARY: &'static str = "prefix tuning: MLP-reparameterised key/value prefixes, folded \
                                   after training (Li and Liang 2021)";

    fn options() -> Vec<MethodOption<Self>> {
        vec![
            prefix_len_option(|c: &Self| c.len, |c| &mut c.len),
            prefix_hidden_option(|c: &Self| c.hidden, |c| &mut c.hidden),
            prefix_name_option(|c: &Self| &c.name, |c| &mut c.name),
            prefix_positions_option(|c: &Self| c.prefix_positions, |c| &mut c.prefix_positions),
        ]
    }
}

impl Method for PrefixTuningConfig {
    fn after_fit(&self, model: &mut SequenceClassifier) -> Result<()> {
        // What is evaluated, saved on its own and exported are the folded prefixes.
        Ok(model.fold_prefix_encoder(&self.name)?)
    }

    // The adapter exists once the encoder is folded.
    fn adapter_name(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn peft_type(&self) -> Option<&'static str> {
        Some("PREFIX_TUNING")
    }

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
