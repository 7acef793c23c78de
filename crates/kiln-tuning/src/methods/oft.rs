//! OFT (Qiu et al. 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning"), as
//! peft 0.21's `OFTConfig` defaults it: each targeted projection's input is rotated by a
//! block-diagonal orthogonal matrix before the frozen weight, `x ↦ (x·R)·W + b`, with blocks of
//! `--block-size b` (peft's `oft_block_size`, 32) whose Cayley transforms are taken as a
//! `--neumann-terms`-term series (5). Rotations keep the angles between the weight's neurons,
//! which the paper argues preserves pretrained knowledge. The rotation starts at `I` and merges
//! into `W` (see `kiln_models::oft`).
//!
//! Targets are LoRA's (peft's OFT default is LoRA's mapping). Trainable per target:
//! `(d_in / b)·b(b−1)/2`, plus the head; MiniLM's 384-wide query at b 32: 12·496 = 5,952.
//! peft's constrained (`coft`) and block-sharing variants are not implemented.

use serde::{Deserialize, Serialize};

use kiln_models::{OrthogonalRotation, SequenceClassifier};

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::options::{MethodOption, parse_list};
use crate::targets::{fill_targets, projections_named};

/// OFT's settings (peft's `OFTConfig` names: `oft_block_size`, `num_cayley_neumann_terms`,
/// `target_modules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OftConfig {
    /// `b`, the side of each rotation block.
    pub block_size: usize,
    /// Terms of the Cayley transform's Neumann series.
    pub neumann_terms: usize,
    /// Projection names; `None` picks the backbone's LoRA default.
    pub targets: Option<Vec<String>>,
}

impl Default for OftConfig {
    fn default() -> Self {
        Self {
            block_size: 32,
            neumann_terms: 5,
            targets: None,
        }
    }
}

impl Registered for OftConfig {
    const NAME: &'static str = "oft";
    const SUMMARY: &'static str =
        "block-diagonal orthogonal rotation of each projection's input, mergeable (Qiu et al. 2023)";

    fn options() -> Vec<MethodOption<Self>> {
        vec![
            MethodOption::new(
                "block-size",
                "B",
                "OFT rotation block side (peft's oft_block_size); must divide each target's inputs",
                |c: &Self| c.block_size.to_string(),
                |c, b| c.block_size = b,
            ),
            MethodOption::new(
                "neumann-terms",
                "T",
                "OFT: terms of the Cayley transform's Neumann series",
                |c: &Self| c.neumann_terms.to_string(),
                |c, t| c.neumann_terms = t,
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

impl OftConfig {
    fn targets_for(&self, model: &SequenceClassifier) -> Vec<String> {
        self.targets
            .clone()
            .unwrap_or_else(|| model.backbone().default_lora_targets())
    }
}

impl Method for OftConfig {
    fn label(&self) -> Option<String> {
        Some(format!("oft-b{}", self.block_size))
    }

    fn peft_type(&self) -> Option<&'static str> {
        Some("OFT")
    }

    fn check(&self, model: &SequenceClassifier) -> Result<()> {
        if self.block_size < 2 {
            return Err(TuningError::Option {
                option: "block-size",
                message: "an OFT block is at least 2 x 2".into(),
            });
        }
        if self.neumann_terms == 0 {
            return Err(TuningError::Option {
                option: "neumann-terms",
                message: "the series needs at least one term".into(),
            });
        }
        let targets = self.targets_for(model);
        let mut model = model.clone();
        let paths = projections_named(&mut model, &targets, "targets")?;
        for (path, projection) in model.projections_mut() {
            if paths.contains(&path) && !projection.d_in().is_multiple_of(self.block_size) {
                return Err(TuningError::Option {
                    option: "block-size",
                    message: format!(
                        "{} does not divide the {} inputs of `{path}`",
                        self.block_size,
                        projection.d_in()
                    ),
                });
            }
        }
        Ok(())
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let targets = self.targets_for(model);
        let (block, terms) = (self.block_size, self.neumann_terms);
        fill_targets(model, &targets, "targets", |p| {
            let device = p.weight.lazy_device();
            p.oft = Some(OrthogonalRotation::new(p.d_in(), block, terms, &device));
        })
    }

    fn trainable_patterns(&self, _model: &SequenceClassifier) -> Vec<String> {
        vec!["*.oft.*".into(), "head.*".into()]
    }
}
