//! LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models"): each targeted
//! projection `W` gains a delta `A·B·s` with `A: [d_in, r]`, `B: [r, d_out]`, `s = alpha/r`; only
//! the deltas and the head train. After training the deltas merge into `W` (see
//! `kiln_models::low_rank`), so inference costs what the base model costs.
//!
//! The variants are peft's `LoraConfig` switches, on the same deltas: `--rslora` scales by
//! `alpha/sqrt(r)` (rsLoRA, Kalajdzievski 2023); `--dora` adds DoRA's trained magnitude over the
//! column-normalised weight (Liu et al. 2024); `--lora-init` starts `A` and `B` as peft's
//! `kaiming` default, `gaussian`, `pissa` (the top-`r` singular part of `W`, Meng et al. 2024) or
//! `olora` (`W`'s QR decomposition, Büyükakyüz 2024), the last two taking their start out of `W`.
//!
//! Targets are projection names matched as peft matches `target_modules` (see
//! [`crate::targets`]): `query`, `value`, `attention.output`, `layers.*.output`, `c_attn`; and
//! the token embedding, `embeddings.word` (BERT, M2-BERT) or `wte` (GPT-2), which takes peft's
//! embedding delta (`A: [vocab, r]` zero, `B: [r, h]` normal, `r·(vocab + h)` parameters).
//! Default targets are peft's: `query`, `value` for BERT, `c_attn` for GPT-2 (M2-BERT: its mixer's
//! `in_linear`, `out_linear`). Trainable parameters: `Σ_targets r·(d_in + d_out) + h·c + c`, plus
//! `Σ_targets d_out` with DoRA; for BERT with query and value, `L·2·r·2h = 4·L·r·h`.

use serde::{Deserialize, Serialize};

use kiln_models::{LoraInit, LowRankConfig, SequenceClassifier};

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::options::{MethodOption, parse_list, probability, show_name};
use crate::targets::{fill_targets, is_target, projections_named};

/// LoRA's settings (peft's `LoraConfig` names: `r`, `lora_alpha`, `lora_dropout`,
/// `target_modules`, `use_rslora`, `use_dora`, `init_lora_weights`).
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
    /// rsLoRA: scale by `alpha / sqrt(r)`.
    #[serde(default)]
    pub rslora: bool,
    /// DoRA: a trained magnitude per output over the normalised weight.
    #[serde(default)]
    pub dora: bool,
    /// How the deltas start.
    #[serde(default)]
    pub init: LoraInit,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.1,
            targets: None,
            rslora: false,
            dora: false,
            init: LoraInit::Kaiming,
        }
    }
}

impl LoraConfig {
    /// The settings of each delta.
    pub fn delta_config(&self) -> LowRankConfig {
        LowRankConfig {
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            rank_stabilized: self.rslora,
            dora: self.dora,
            init: self.init,
        }
    }

    /// Whether a target names the token embedding (`embeddings.word`, `wte`), and the targets
    /// that name projections. The embedding takes plain LoRA, as peft's LoRA `Embedding` does.
    fn split_targets(&self, model: &SequenceClassifier) -> Result<(bool, Vec<String>)> {
        let (embedding, _) = model.clone().word_embedding_mut();
        let (on_embedding, on_projections): (Vec<String>, Vec<String>) = self
            .targets_for(model)
            .into_iter()
            .partition(|t| is_target(&embedding, t));
        if !on_embedding.is_empty() && (self.dora || self.init.mutates_base()) {
            return Err(TuningError::Option {
                option: "targets",
                message: format!(
                    "`{}` is the token embedding, which takes plain LoRA (and rsLoRA): DoRA and \
                     the PiSSA/OLoRA starts are for projections",
                    on_embedding[0]
                ),
            });
        }
        Ok((!on_embedding.is_empty(), on_projections))
    }

    /// The projection names the deltas go on in `model`: the given ones, or the backbone's defaults.
    pub fn targets_for(&self, model: &SequenceClassifier) -> Vec<String> {
        match &self.targets {
            Some(targets) => targets.clone(),
            None => model.backbone().default_lora_targets(),
        }
    }
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
                "Target projections, comma-separated, matched as peft matches target_modules (query,value; c_attn; attention.output; layers.*.output; the token embedding: embeddings.word, wte)",
                |_: &Self| "query,value | c_attn | in_linear,out_linear".into(),
                |c, text| {
                    c.targets = Some(parse_list("targets", text)?);
                    Ok(())
                },
            ),
            MethodOption::switch(
                "rslora",
                "rsLoRA: scale the delta by alpha / sqrt(rank) (peft's use_rslora)",
                |c: &Self| c.rslora,
                |c, on| c.rslora = on,
            ),
            MethodOption::switch(
                "dora",
                "DoRA: train a magnitude per output over the normalised weight (peft's use_dora)",
                |c: &Self| c.dora,
                |c, on| c.dora = on,
            ),
            MethodOption::parsed(
                "lora-init",
                "kaiming|gaussian|pissa|olora",
                "how A and B start (peft's init_lora_weights); pissa and olora move part of W into them",
                |c: &Self| show_name(&c.init),
                |c, text| {
                    c.init = parse_init(text)?;
                    Ok(())
                },
            ),
        ]
    }
}

impl Method for LoraConfig {
    fn label(&self) -> Option<String> {
        let mut label = format!("lora-r{}", self.rank);
        if self.dora {
            label.push_str("-dora");
        }
        if self.rslora {
            label.push_str("-rs");
        }
        if self.init != LoraInit::Kaiming {
            label.push('-');
            label.push_str(&show_name(&self.init));
        }
        Some(label)
    }

    fn peft_type(&self) -> Option<&'static str> {
        Some("LORA")
    }

    fn check(&self, model: &SequenceClassifier) -> Result<()> {
        check_rank(self.rank, "LoRA")?;
        probability("lora-dropout", self.dropout)?;
        let (_, targets) = self.split_targets(model)?;
        if self.init.mutates_base() {
            let mut model = model.clone();
            let paths = projections_named(&mut model, &targets, "targets")?;
            for (path, projection) in model.projections_mut() {
                let smaller = projection.d_in().min(projection.d_out());
                if paths.contains(&path) && self.rank > smaller {
                    return Err(TuningError::Option {
                        option: "rank",
                        message: format!(
                            "{}: rank {} is above `{path}`'s {} x {} weight's rank bound {smaller}",
                            show_name(&self.init),
                            self.rank,
                            projection.d_in(),
                            projection.d_out()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let delta = self.delta_config();
        let (on_embedding, on_projections) = self.split_targets(model)?;
        if on_embedding {
            model.word_embedding_mut().1.add_lora(delta);
        }
        fill_targets(model, &on_projections, "targets", |p| p.add_lora(delta))
    }

    fn trainable_patterns(&self, _model: &SequenceClassifier) -> Vec<String> {
        vec!["*.lora.*".into(), "head.*".into()]
    }
}

/// `--lora-init`'s value.
fn parse_init(text: &str) -> Result<LoraInit> {
    match text {
        "kaiming" => Ok(LoraInit::Kaiming),
        "gaussian" => Ok(LoraInit::Gaussian),
        "pissa" => Ok(LoraInit::Pissa),
        "olora" => Ok(LoraInit::Olora),
        other => Err(TuningError::Option {
            option: "lora-init",
            message: format!("`{other}` is not one of kaiming, gaussian, pissa, olora"),
        }),
    }
}

/// A rank of at least 1, or an error naming `--rank`.
pub(crate) fn check_rank(rank: usize, method: &str) -> Result<()> {
    if rank == 0 {
        return Err(TuningError::Option {
            option: "rank",
            message: format!("{method} rank must be at least 1"),
        });
    }
    Ok(())
}
