//! VeRA (Kopiczko, Blankevoort and Asano 2024, "VeRA: Vector-based Random Matrix Adaptation"):
//! every targeted projection shares one pair of frozen random matrices `A`, `B` of rank `r` and
//! trains only two vectors, `x ↦ x·W + b + λ_b ⊙ ((dropout(x)·A) ⊙ λ_d)·B`; `λ_b` starts at zero
//! and `λ_d` at `d_initial`. The update merges into `W` (see `kiln_models::vera`). peft's
//! defaults: `r` 256, `d_initial` 0.1, projection seed 0, LoRA's targets.
//!
//! Trainable parameters: `Σ_targets (r + d_out) + h·c + c`; for BERT with query and value,
//! `2·L·(r + h)`. The shared matrices are frozen (`r·(d_in_max + d_out_max)` numbers).

use serde::{Deserialize, Serialize};

use kiln_models::{SequenceClassifier, VeraProjections};

use crate::error::Result;
use crate::method::{Method, Registered};
use crate::methods::lora::check_rank;
use crate::options::{MethodOption, parse_list, probability};
use crate::targets::{fill_targets, projections_named};

/// VeRA's settings (peft's `VeraConfig` names: `r`, `d_initial`, `projection_prng_key`,
/// `vera_dropout`, `target_modules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VeraConfig {
    /// `r`, the rank of the shared matrices.
    pub rank: usize,
    /// `λ_d`'s start.
    pub d_initial: f64,
    /// The seed the shared matrices are drawn from.
    pub projection_seed: u64,
    /// Dropout on the delta's input.
    pub dropout: f64,
    /// Projection names; `None` picks the backbone's LoRA default.
    pub targets: Option<Vec<String>>,
}

impl Default for VeraConfig {
    fn default() -> Self {
        Self {
            rank: 256,
            d_initial: 0.1,
            projection_seed: 0,
            dropout: 0.0,
            targets: None,
        }
    }
}

impl Registered for VeraConfig {
    const NAME: &'static str = "vera";
    const SUMMARY: &'static str =
        "shared frozen random matrices, two trained vectors per projection, mergeable (Kopiczko et al. 2024)";

    fn options() -> Vec<MethodOption<Self>> {
        vec![
            MethodOption::new(
                "rank",
                "R",
                "VeRA rank of the shared matrices",
                |c: &Self| c.rank.to_string(),
                |c, rank| c.rank = rank,
            ),
            MethodOption::new(
                "d-initial",
                "D",
                "VeRA: the start of the vector on the rank side",
                |c: &Self| c.d_initial.to_string(),
                |c, d| c.d_initial = d,
            ),
            MethodOption::new(
                "projection-seed",
                "S",
                "VeRA: the seed of the shared matrices (peft's projection_prng_key)",
                |c: &Self| c.projection_seed.to_string(),
                |c, seed| c.projection_seed = seed,
            ),
            MethodOption::new(
                "vera-dropout",
                "P",
                "VeRA dropout on the delta's input",
                |c: &Self| c.dropout.to_string(),
                |c, p| c.dropout = p,
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

impl VeraConfig {
    fn targets_for(&self, model: &SequenceClassifier) -> Vec<String> {
        self.targets
            .clone()
            .unwrap_or_else(|| model.backbone().default_lora_targets())
    }
}

impl Method for VeraConfig {
    fn label(&self) -> Option<String> {
        Some(format!("vera-r{}", self.rank))
    }

    fn peft_type(&self) -> Option<&'static str> {
        Some("VERA")
    }

    fn check(&self, _model: &SequenceClassifier) -> Result<()> {
        probability("vera-dropout", self.dropout)?;
        check_rank(self.rank, "VeRA")
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let targets = self.targets_for(model);
        let paths = projections_named(model, &targets, "targets")?;
        // The shared pair is as large as the largest targeted projection needs.
        let (mut d_in_max, mut d_out_max) = (0, 0);
        for (path, projection) in model.projections_mut() {
            if paths.contains(&path) {
                d_in_max = d_in_max.max(projection.d_in());
                d_out_max = d_out_max.max(projection.d_out());
            }
        }
        let device = model.head.output.weight.lazy_device();
        let shared =
            VeraProjections::new(d_in_max, d_out_max, self.rank, self.projection_seed, &device);
        fill_targets(model, &targets, "targets", |p| {
            p.vera = Some(shared.delta(p.d_in(), p.d_out(), self.d_initial, self.dropout));
        })
    }

    fn trainable_patterns(&self, _model: &SequenceClassifier) -> Vec<String> {
        vec![
            "*.vera.lambda_d".into(),
            "*.vera.lambda_b".into(),
            "head.*".into(),
        ]
    }
}
