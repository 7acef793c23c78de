//! LoReFT (Wu et al. 2024, "ReFT: Representation Finetuning for Language Models"): the frozen
//! model's hidden states are edited, not its weights. After every layer, the states of the first
//! `p` and the last `s` real tokens become `h + Rᵀ(W·h + b − R·h)`, with `R: [r, h]` of
//! orthonormal rows (see [`kiln_models::reft`]); `W`, `b`, `R` and the head train.
//!
//! Defaults as AdapterHub's `LoReftConfig`: `p = 3`, `s = 0`, `r = 1`, one unit for the prefix and
//! one for the suffix positions (untied), dropout 0.05. Trainable parameters:
//! `L·u·(2rh + r) + h·c + c`, `u` the units per layer (1 tied; else one per non-empty group of
//! positions: AdapterHub also counts an unused suffix unit when `s = 0`).

use serde::{Deserialize, Serialize};

use kiln_models::{AdapterConfig, ReftConfig, SequenceClassifier};

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::options::{MethodOption, probability};

/// LoReFT's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoReftConfig {
    /// Positions, rank, tying and dropout.
    #[serde(flatten)]
    pub reft: ReftConfig,
    /// The name the intervention is held, saved and loaded under.
    pub name: String,
}

impl Default for LoReftConfig {
    fn default() -> Self {
        Self {
            reft: ReftConfig::default(),
            name: "loreft".into(),
        }
    }
}

impl Registered for LoReftConfig {
    const NAME: &'static str = "loreft";
    const SUMMARY: &'static str = "low-rank edits of the hidden states of the first and last \
                                   tokens after every layer (Wu et al. 2024)";

    fn options() -> Vec<MethodOption<Self>> {
        vec![
            MethodOption::new(
                "reft-prefix",
                "P",
                "edit the first P real tokens of each text",
                |c: &Self| c.reft.prefix_positions.to_string(),
                |c, v| c.reft.prefix_positions = v,
            ),
            MethodOption::new(
                "reft-suffix",
                "S",
                "edit the last S real tokens of each text",
                |c: &Self| c.reft.suffix_positions.to_string(),
                |c, v| c.reft.suffix_positions = v,
            ),
            MethodOption::new(
                "reft-rank",
                "R",
                "rank of the edited subspace",
                |c: &Self| c.reft.rank.to_string(),
                |c, v| c.reft.rank = v,
            ),
            MethodOption::new(
                "reft-tied",
                "true|false",
                "one edit for prefix and suffix positions instead of one each",
                |c: &Self| c.reft.tied.to_string(),
                |c, v| c.reft.tied = v,
            ),
            MethodOption::new(
                "reft-dropout",
                "P",
                "dropout on the edited states",
                |c: &Self| c.reft.dropout.to_string(),
                |c, v| c.reft.dropout = v,
            ),
            MethodOption::new(
                "adapter-name",
                "NAME",
                "the name the adapter is held and saved under",
                |c: &Self| c.name.clone(),
                |c, v: String| c.name = v,
            ),
        ]
    }
}

impl LoReftConfig {
    /// The adapter layout holding only the edits.
    pub fn layout(&self) -> AdapterConfig {
        AdapterConfig {
            reft: Some(self.reft),
            ..AdapterConfig::prefix_only(0)
        }
    }
}

impl Method for LoReftConfig {
    fn adapter_name(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn check(&self, model: &SequenceClassifier) -> Result<()> {
        let option = |option: &'static str, message: String| TuningError::Option { option, message };
        if self.reft.prefix_positions + self.reft.suffix_positions == 0 {
            return Err(option(
                "reft-prefix",
                "LoReFT edits no position: give --reft-prefix or --reft-suffix above 0".into(),
            ));
        }
        if self.reft.rank == 0 || self.reft.rank > model.hidden_size() {
            return Err(option(
                "reft-rank",
                format!(
                    "{} must lie in 1..={} (the model's width)",
                    self.reft.rank,
                    model.hidden_size()
                ),
            ));
        }
        probability("reft-dropout", self.reft.dropout)?;
        if self.name.is_empty() {
            return Err(option("adapter-name", "an adapter needs a name".into()));
        }
        Ok(())
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        Ok(model.add_adapter(&self.name, &self.layout())?)
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        let mut patterns = model.adapter_patterns(&self.name);
        patterns.push("head.*".into());
        patterns
    }
}
