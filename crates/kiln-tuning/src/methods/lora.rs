//! LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models"): each targeted
//! projection `W` gains a delta `A·B·(alpha/r)` with `A: [d_in, r]`, `B: [r, d_out]`; only the
//! deltas and the head train. After training the deltas merge into `W` (see
//! `kiln_models::tunable`), so inference costs what the base model costs.
//!
//! Targets are projection names matched as peft matches `target_modules`: a projection path
//! equal to a target or ending in `.target` (`query`, `value`, `attention.output`, `c_attn`).
//! Default targets are peft's: `query`, `value` for BERT, `c_attn` for GPT-2 (M2-BERT: its mixer's
//! `in_linear`, `out_linear`). Trainable
//! parameters: `Σ_targets r·(d_in + d_out) + h·c + c`; for BERT with query and value,
//! `L·2·r·2h = 4·L·r·h`.

use serde::{Deserialize, Serialize};

use kiln_models::{LowRankConfig, SequenceClassifier};

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::options::{MethodOption, parse_list};

/// LoRA's settings (peft's `LoraConfig` names: `r`, `lora_alpha`, `lora_dropout`, `target_modules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// `r`, the rank of each delta.
    pub rank: usize,
    /// The delta is scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the delta's input.
    pub dropout: f64,
    /// Projection names; `None` picks the backbone's default.
    pub targets: Option<Vec<String>>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.1,
            targets: None,
        }
    }
}

impl LoraConfig {
    /// The projection names the deltas go on in `model`: the given ones, or the backbone's defaults.
    pub fn targets_for(&self, model: &SequenceClassifier) -> Vec<String> {
        match &self.targets {
            Some(targets) => targets.clone(),
            None => model.backbone().default_lora_targets(),
        }
    }
}

fn is_target(path: &str, target: &str) -> bool {
    path == target || path.ends_with(&format!(".{target}"))
}

impl Registered for LoraConfig {
    const NAME: &'static str = "lora";
    const SUMMARY: &'static str =
        "low-rank deltas on chosen projections, mergeable (Hu et al. 2022)";

    fn options() -> Vec<MethodOption<Self>> {
        vec![
            MethodOption::new(
                "rank",
                "R",
                "LoRA rank",
                |c: &Self| c.rank.to_string(),
                |c, rank| c.rank = rank,
            ),
            MethodOption::new(
                "alpha",
                "A",
                "LoRA alpha (the delta is scaled by alpha / rank)",
                |c: &Self| c.alpha.to_string(),
                |c, alpha| c.alpha = alpha,
            ),
            MethodOption::new(
                "lora-dropout",
                "P",
                "LoRA dropout on the delta's input",
                |c: &Self| c.dropout.to_string(),
                |c, p| c.dropout = p,
            ),
            MethodOption::parsed(
                "targets",
                "a,b",
                "LoRA target projections, comma-separated (query,value; c_attn; attention.output)",
                |_: &Self| "query,value | c_attn | in_linear,out_linear".into(),
                |c, text| {
                    c.targets = Some(parse_list("targets", text)?);
                    Ok(())
                },
            ),
        ]
    }
}

impl Method for LoraConfig {
    fn label(&self) -> Option<String> {
        Some(format!("lora-r{}", self.rank))
    }

    fn peft_type(&self) -> Option<&'static str> {
        Some("LORA")
    }

    fn check(&self, _model: &SequenceClassifier) -> Result<()> {
        if self.rank == 0 {
            return Err(TuningError::Option {
                option: "rank",
                message: "LoRA rank must be at least 1".into(),
            });
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(TuningError::Option {
                option: "lora-dropout",
                message: format!("{} is not a probability in [0, 1)", self.dropout),
            });
        }
        Ok(())
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let targets = self.targets_for(model);
        let delta = LowRankConfig {
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
        };
        let mut projections = model.projections_mut();
        for target in &targets {
            if !projections.iter().any(|(path, _)| is_target(path, target)) {
                let names: Vec<String> = projections
                    .iter()
                    .filter(|(path, _)| path.contains(".0."))
                    .map(|(path, _)| path.clone())
                    .collect();
                return Err(TuningError::Option {
                    option: "targets",
                    message: format!(
                        "`{target}` names no projection of this model; layer 0 has {}",
                        names.join(", ")
                    ),
                });
            }
        }
        for (path, projection) in projections.iter_mut() {
            if targets.iter().any(|t| is_target(path, t)) {
                projection.add_lora(delta);
            }
        }
        Ok(())
    }

    fn trainable_patterns(&self, _model: &SequenceClassifier) -> Vec<String> {
        vec!["*.lora.*".into(), "head.*".into()]
    }
}
