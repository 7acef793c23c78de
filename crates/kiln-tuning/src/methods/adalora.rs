//! AdaLoRA (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning"),
//! peft's `AdaLoraConfig`: each targeted projection gains an SVD-form update
//! `((dropout(x)·P) ⊙ λ)·Q·α/r` starting at rank `--init-r` (12) with `λ = 0`; training adds the
//! orthogonality regulariser (`--orth-reg-weight`, 0.5) to the loss, and after every optimizer
//! step the rank allocator zeroes the least important triplets' `λ`s until the total budget,
//! which falls cubically to `--target-r` (8) per target between `--tinit` and `T − --tfinal`
//! steps, allocating every `--delta-t` steps (see `kiln_models::adalora`). The update merges.
//!
//! Targets are LoRA's. Trainable parameters: `Σ_targets r·(d_in + d_out + 1) + h·c + c` with
//! `r = init_r` (zeroed triplets keep their parameters, as in peft); BERT with query and value,
//! `2·L·r·(2h + 1)`.

use serde::{Deserialize, Serialize};

use kiln_models::{RankAllocation, SequenceClassifier, SvdDelta};

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::methods::lora::check_rank;
use crate::options::{MethodOption, parse_list};
use crate::targets::fill_targets;

/// AdaLoRA's settings (peft's `AdaLoraConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaLoraConfig {
    /// `init_r`: every target's starting rank.
    pub init_rank: usize,
    /// `target_r`: the average rank at the end.
    pub target_rank: usize,
    /// `lora_alpha`: the update is scaled by `alpha / init_r`.
    pub alpha: f64,
    /// `lora_dropout`.
    pub dropout: f64,
    /// `tinit`: steps before the budget falls.
    pub tinit: usize,
    /// `tfinal`: steps at the end with the budget fixed.
    pub tfinal: usize,
    /// `deltaT`: steps between allocations.
    pub delta_t: usize,
    /// `beta1`, `beta2`: smoothing of the importance and its uncertainty.
    pub beta1: f64,
    /// See `beta1`.
    pub beta2: f64,
    /// `orth_reg_weight`.
    pub orth_reg_weight: f64,
    /// Projection names; `None` picks the backbone's LoRA default.
    pub targets: Option<Vec<String>>,
}

impl Default for AdaLoraConfig {
    fn default() -> Self {
        Self {
            init_rank: 12,
            target_rank: 8,
            alpha: 8.0,
            dropout: 0.0,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            beta1: 0.85,
            beta2: 0.85,
            orth_reg_weight: 0.5,
            targets: None,
        }
    }
}

impl Registered for AdaLoraConfig {
    const NAME: &'static str = "adalora";
    const SUMMARY: &'static str =
        "SVD-form low-rank updates whose ranks are pruned by importance during training, mergeable (Zhang et al. 2023)";

    fn options() -> Vec<MethodOption<Self>> {
        vec![
            MethodOption::new("init-r", "R", "AdaLoRA: every target's starting rank", |c: &Self| c.init_rank.to_string(), |c, r| c.init_rank = r),
            MethodOption::new("target-r", "R", "AdaLoRA: the average rank per target at the end", |c: &Self| c.target_rank.to_string(), |c, r| c.target_rank = r),
            MethodOption::new("alpha", "A", "LoRA alpha (the delta is scaled by alpha / rank)", |c: &Self| c.alpha.to_string(), |c, a| c.alpha = a),
            MethodOption::new("lora-dropout", "P", "LoRA dropout on the delta's input", |c: &Self| c.dropout.to_string(), |c, p| c.dropout = p),
            MethodOption::new("tinit", "N", "AdaLoRA: steps before the rank budget starts to fall", |c: &Self| c.tinit.to_string(), |c, n| c.tinit = n),
            MethodOption::new("tfinal", "N", "AdaLoRA: steps at the end with the budget fixed", |c: &Self| c.tfinal.to_string(), |c, n| c.tfinal = n),
            MethodOption::new("delta-t", "N", "AdaLoRA: steps between two rank allocations", |c: &Self| c.delta_t.to_string(), |c, n| c.delta_t = n),
            MethodOption::new("beta1", "B", "AdaLoRA: smoothing of the importance", |c: &Self| c.beta1.to_string(), |c, b| c.beta1 = b),
            MethodOption::new("beta2", "B", "AdaLoRA: smoothing of the importance's uncertainty", |c: &Self| c.beta2.to_string(), |c, b| c.beta2 = b),
            MethodOption::new("orth-reg-weight", "W", "AdaLoRA: weight of the orthogonality regulariser", |c: &Self| c.orth_reg_weight.to_string(), |c, w| c.orth_reg_weight = w),
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

impl Method for AdaLoraConfig {
    fn label(&self) -> Option<String> {
        Some(format!("adalora-r{}-{}", self.init_rank, self.target_rank))
    }

    fn peft_type(&self) -> Option<&'static str> {
        Some("ADALORA")
    }

    fn check(&self, _model: &SequenceClassifier) -> Result<()> {
        check_rank(self.init_rank, "AdaLoRA")?;
        let problem = if self.target_rank > self.init_rank {
            Some(("target-r", format!("{} is above --init-r {}", self.target_rank, self.init_rank)))
        } else if !(0.0..1.0).contains(&self.beta1) || self.beta1 == 0.0 {
            Some(("beta1", format!("{} is not in (0, 1)", self.beta1)))
        } else if !(0.0..1.0).contains(&self.beta2) || self.beta2 == 0.0 {
            Some(("beta2", format!("{} is not in (0, 1)", self.beta2)))
        } else if self.orth_reg_weight < 0.0 {
            Some(("orth-reg-weight", "must be at least 0".into()))
        } else if !(0.0..1.0).contains(&self.dropout) {
            Some(("lora-dropout", format!("{} is not a probability in [0, 1)", self.dropout)))
        } else {
            None
        };
        match problem {
            Some((option, message)) => Err(TuningError::Option { option, message }),
            None => Ok(()),
        }
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let targets = self
            .targets
            .clone()
            .unwrap_or_else(|| model.backbone().default_lora_targets());
        let allocation = RankAllocation {
            target_rank: self.target_rank,
            warmup_steps: self.tinit,
            final_steps: self.tfinal,
            interval: self.delta_t,
            beta1: self.beta1,
            beta2: self.beta2,
        };
        fill_targets(model, &targets, "targets", |p| {
            let device = p.weight.lazy_device();
            p.adalora = Some(SvdDelta::new(
                [p.d_in(), p.d_out()],
                self.init_rank,
                self.alpha,
                self.dropout,
                allocation,
                self.orth_reg_weight,
                &device,
            ));
        })
    }

    fn trainable_patterns(&self, _model: &SequenceClassifier) -> Vec<String> {
        vec!["*.adalora.*".into(), "head.*".into()]
    }
}
