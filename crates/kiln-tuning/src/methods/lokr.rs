//! LoKr (peft's `LoKrConfig`, from LyCORIS; Yeh et al. 2024, "Navigating Text-To-Image
//! Customization: From LyCORIS Fine-Tuning to Model Evaluation"): each targeted projection `W`
//! gains `ΔW = (W1 ⊗ W2)·alpha/r`, a Kronecker product of a small full matrix `W1: [m, l]` and
//! `W2: [n, k]` (itself `W2_in·W2_out` of rank `r` when `r < max(n, k)/2`), with `d_in = m·n`,
//! `d_out = l·k` factored as peft's `factorization` does (`--decompose-factor`, default -1: near
//! the square root). `W1` starts at zero, so `ΔW` does; it merges into `W` (see
//! `kiln_models::lycoris`).
//!
//! Targets are LoRA's (peft's default for LoKr is LoRA's mapping). Trainable parameters per
//! target: `m·l + n·k`, or `m·l + r·(n + k)` with `W2` factored, plus the head; MiniLM's
//! 384 x 384 query at r 8: 16·16 + 8·(24 + 24) = 640.

use serde::{Deserialize, Serialize};

use kiln_models::{KroneckerDelta, SequenceClassifier};

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::methods::lora::check_rank;
use crate::options::{MethodOption, parse_list};
use crate::targets::fill_targets;

/// LoKr's settings (peft's `LoKrConfig` names: `r`, `alpha`, `decompose_factor`,
/// `target_modules`; `decompose_both` is false, peft's default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LokrConfig {
    /// `r`, the rank of `W2`'s factors when it is factored.
    pub rank: usize,
    /// The update is scaled by `alpha / r`.
    pub alpha: f64,
    /// peft's `decompose_factor`: -1 factors each width near its square root.
    pub decompose_factor: i64,
    /// Projection names; `None` picks the backbone's LoRA default.
    pub targets: Option<Vec<String>>,
}

impl Default for LokrConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 8.0,
            decompose_factor: -1,
            targets: None,
        }
    }
}

impl Registered for LokrConfig {
    const NAME: &'static str = "lokr";
    const SUMMARY: &'static str =
        "Kronecker product of a small matrix and a low-rank one, mergeable (LyCORIS; Yeh et al. 2024)";

    fn options() -> Vec<MethodOption<Self>> {
        vec![
            MethodOption::new(
                "rank",
                "R",
                "LoKr rank of W2's factors",
                |c: &Self| c.rank.to_string(),
                |c, rank| c.rank = rank,
            ),
            MethodOption::new(
                "alpha",
                "A",
                "LoKr alpha (the update is scaled by alpha / rank)",
                |c: &Self| c.alpha.to_string(),
                |c, alpha| c.alpha = alpha,
            ),
            MethodOption::new(
                "decompose-factor",
                "F",
                "LoKr: factor each width as F x width/F (-1: near its square root)",
                |c: &Self| c.decompose_factor.to_string(),
                |c, factor| c.decompose_factor = factor,
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

impl Method for LokrConfig {
    fn label(&self) -> Option<String> {
        Some(format!("lokr-r{}", self.rank))
    }

    fn peft_type(&self) -> Option<&'static str> {
        Some("LOKR")
    }

    fn check(&self, _model: &SequenceClassifier) -> Result<()> {
        if self.decompose_factor == 0 || self.decompose_factor < -1 {
            return Err(TuningError::Option {
                option: "decompose-factor",
                message: format!("{} is neither -1 nor a positive factor", self.decompose_factor),
            });
        }
        check_rank(self.rank, "LoKr")
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let targets = self
            .targets
            .clone()
            .unwrap_or_else(|| model.backbone().default_lora_targets());
        let (rank, alpha, factor) = (self.rank, self.alpha, self.decompose_factor);
        fill_targets(model, &targets, "targets", |p| {
            let device = p.weight.lazy_device();
            p.lokr = Some(KroneckerDelta::new(
                p.d_in(),
                p.d_out(),
                rank,
                alpha,
                factor,
                &device,
            ));
        })
    }

    fn trainable_patterns(&self, _model: &SequenceClassifier) -> Vec<String> {
        vec!["*.lokr.*".into(), "head.*".into()]
    }
}
