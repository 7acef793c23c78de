//! IA3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
//! In-Context Learning"): learned vectors rescale the attention's keys and values and the
//! feed-forward's inner activation, `k ⊙ l_k`, `v ⊙ l_v`, `(l_ff ⊙ gelu(x·W_1))·W_2`; the vectors
//! start at ones, so training starts at the pretrained model. As peft's `IA3Config`, a target
//! scales its projection's output, or its input when it is one of the feed-forward modules;
//! both merge into the weight (and bias), so inference costs what the base model costs.
//!
//! Default targets: BERT `key`, `value`, `layers.*.output` (the last on its input, i.e. the
//! paper's feed-forward activation); GPT-2 peft's `c_attn`, `mlp.c_proj` (on its input). Trainable
//! parameters: `Σ_output targets d_out + Σ_input targets d_in + h·c + c`; for BERT
//! `L·(h + h + f) + h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::SequenceClassifier;

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::options::{MethodOption, parse_list};
use crate::targets::projections_named;

/// IA3's settings (peft's `IA3Config` names: `target_modules`, `feedforward_modules`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ia3Config {
    /// Projection names; `None` picks the backbone's default.
    pub targets: Option<Vec<String>>,
    /// Those of the targets scaled on their input; `None` picks the backbone's default.
    pub feedforward: Option<Vec<String>>,
}

impl Ia3Config {
    /// The targets and feed-forward names for `model`: the given ones or its backbone's.
    pub fn targets_for(&self, model: &SequenceClassifier) -> (Vec<String>, Vec<String>) {
        let (targets, feedforward) = model.backbone().default_ia3_targets();
        (
            self.targets.clone().unwrap_or(targets),
            self.feedforward.clone().unwrap_or(feedforward),
        )
    }
}

impl Registered for Ia3Config {
    const NAME: &'static str = "ia3";
    const SUMMARY: &'static str =
        "learned vectors rescale keys, values and the feed-forward activation, mergeable (Liu et al. 2022)";

    fn options() -> Vec<MethodOption<Self>> {
        vec![
            MethodOption::parsed(
                "targets",
                "a,b",
                "Target projections, comma-separated, matched as peft matches target_modules (query,value; c_attn; attention.output; layers.*.output)",
                |_: &Self| "key,value,layers.*.output | c_attn,mlp.c_proj".into(),
                |c, text| {
                    c.targets = Some(parse_list("targets", text)?);
                    Ok(())
                },
            ),
            MethodOption::parsed(
                "feedforward",
                "a,b",
                "the IA3 targets scaled on their input (peft's feedforward_modules)",
                |_: &Self| "layers.*.output | mlp.c_proj".into(),
                |c, text| {
                    c.feedforward = Some(parse_list("feedforward", text)?);
                    Ok(())
                },
            ),
        ]
    }
}

impl Method for Ia3Config {
    /// T-Few's rate for IA3 (Liu et al. 2022, §3.3): the vectors start at one and move little.
    fn default_lr(&self) -> f64 {
        3e-3
    }

    fn peft_type(&self) -> Option<&'static str> {
        Some("IA3")
    }

    fn check(&self, model: &SequenceClassifier) -> Result<()> {
        let (targets, feedforward) = self.targets_for(model);
        let mut model = model.clone();
        let paths = projections_named(&mut model, &targets, "targets")?;
        let on_input = projections_named(&mut model, &feedforward, "feedforward")?;
        if let Some(stray) = on_input.iter().find(|p| !paths.contains(p)) {
            return Err(TuningError::Option {
                option: "feedforward",
                message: format!(
                    "`{stray}` is not among the targets ({}): as in peft, the feed-forward \
                     modules are a subset of the targets",
                    targets.join(",")
                ),
            });
        }
        Ok(())
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let (targets, feedforward) = self.targets_for(model);
        let paths = projections_named(model, &targets, "targets")?;
        let on_input = projections_named(model, &feedforward, "feedforward")?;
        for (path, projection) in model.projections_mut() {
            if paths.contains(&path) {
                projection.add_ia3(on_input.contains(&path));
            }
        }
        Ok(())
    }

    fn trainable_patterns(&self, _model: &SequenceClassifier) -> Vec<String> {
        vec!["*.ia3.*".into(), "head.*".into()]
    }
}
