//! LoHa (peft's `LoHaConfig`, from LyCORIS; Yeh et al. 2024, "Navigating Text-To-Image
//! Customization: From LyCORIS Fine-Tuning to Model Evaluation"; the Hadamard product of
//! low-rank matrices is FedPara's, Hyeon-Woo et al. 2022): each targeted projection `W` gains
//! `ΔW = (U1·V1) ⊙ (U2·V2)·alpha/r`, whose rank reaches `r²` from `2r(d_in + d_out)` parameters;
//! `ΔW` starts at zero and merges into `W` (see `kiln_models::lycoris`).
//!
//! Targets are LoRA's (peft's default for LoHa is LoRA's mapping): `query`, `value` for BERT,
//! `c_attn` for GPT-2. Trainable parameters: `Σ_targets 2·r·(d_in + d_out) + h·c + c`; for BERT
//! with query and value, `8·L·r·h`.

use serde::{Deserialize, Serialize};

use kiln_models::{HadamardDelta, SequenceClassifier};

use crate::error::Result;
use crate::method::{Method, Registered};
use crate::methods::lora::check_rank;
use crate::options::{MethodOption, parse_list};
use crate::targets::fill_targets;

/// LoHa's settings (peft's `LoHaConfig` names: `r`, `alpha`, `target_modules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LohaConfig {
    /// `r`, the rank of each factor pair.
    pub rank: usize,
    /// The update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Projection names; `None` picks the backbone's LoRA default.
    pub targets: Option<Vec<String>>,
}

impl Default for LohaConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 8.0,
            targets: None,
        }
    }
}

impl Registered for LohaConfig {
    const NAME: &'static str = "loha";
    const SUMMARY: &'static str =
        "Hadamard product of two low-rank updates, rank up to r², mergeable (LyCORIS; Yeh et al. 2024)";

    fn options() -> Vec<MethodOption<Self>> {
        vec![
            MethodOption::new(
                "rank",
                "R",
                "LoHa rank of each factor pair",
                |c: &Self| c.rank.to_string(),
                |c, rank| c.rank = rank,
            ),
            MethodOption::new(
                "alpha",
                "A",
                "LoHa alpha (the update is scaled by alpha / rank)",
                |c: &Self| c.alpha.to_string(),
                |c, alpha| c.alpha = alpha,
            ),
            MethodOption::parsed(
                "targets",
                "a,b",
                "Target projections, comma-separated, matched as peft matches target_modules (query,value; c_attn; attention.output; layers.*.output)",
                |_: &Self| "query,value | c_attn | in_linear,out_linear".into(),
                |c, text| {
                    c.targets = Some(parse_list("targets", text)?);
                    Ok(())
                },
            ),
        ]
    }
}

impl Method for LohaConfig {
    fn label(&self) -> Option<String> {
        Some(format!("loha-r{}", self.rank))
    }

    fn peft_type(&self) -> Option<&'static str> {
        Some("LOHA")
    }

    fn check(&self, _model: &SequenceClassifier) -> Result<()> {
        check_rank(self.rank, "LoHa")
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let targets = self
            .targets
            .clone()
            .unwrap_or_else(|| model.backbone().default_lora_targets());
        let (rank, alpha) = (self.rank, self.alpha);
        fill_targets(model, &targets, "targets", |p| {
            let device = p.weight.lazy_device();
            p.loha = Some(HadamardDelta::new(p.d_in(), p.d_out(), rank, alpha, &device));
        })
    }

    fn trainable_patterns(&self, _model: &SequenceClassifier) -> Vec<String> {
        vec!["*.loha.*".into(), "head.*".into()]
    }
}
