//! AdapterFusion (Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition for
//! Transfer Learning"), the second of its two stages: adapters trained on other tasks (stage
//! one, e.g. `pfeiffer` runs) are loaded frozen, and a fusion attention per layer learns to mix
//! their outputs for the target task.
//!
//! Semantics as AdapterHub's default `DynamicAdapterFusionConfig` (`methods/modeling.py`
//! `BertFusion`, `methods/bottleneck.py` `compose_fuse`): with the feed-forward output `h`, its
//! residual `x` and the adapters' input `z = LN(h + x)` (Pfeiffer adapters), each adapter gives
//! `up_i = f_i(z)`; the query is `Q·z`, the keys `K·up_i`, the values `V·up_i`, and the layer
//! ends in `LN(h + Σ_i softmax_i(dropout(q·k_i)) · V·up_i + x)`. Query and key start as
//! `N(0, 0.02²)`, `V` as the identity, so a fresh fusion adds the mean of the `up_i`.
//! Score dropout is the backbone's attention dropout; the training loss adds
//! `0.01·Σ_layers ‖I - V‖²` (AdapterHub adds its gradient after each step, which differs by one
//! step's lag). AdapterHub's optional temperature annealing is off by default there and left out.
//!
//! The backbone and the adapters are frozen; the fusion layers and the head train. Trainable
//! parameters: `L·(3h² + 2h) + h·c + c`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use kiln_models::SequenceClassifier;

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::options::{MethodOption, parse_list, show_or};

/// AdapterFusion's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusionConfig {
    /// Directories of the saved adapters to fuse (each with `adapter_config.json`); the caller
    /// loads them into the model before the method applies.
    pub adapters: Vec<PathBuf>,
    /// Dropout on the fusion scores; `None` takes the backbone's attention dropout.
    #[serde(default)]
    pub score_dropout: Option<f64>,
    /// Weight of the value regulariser `‖I - V‖²` in the training loss.
    #[serde(default = "default_value_regularization")]
    pub value_regularization: f64,
}

fn default_value_regularization() -> f64 {
    0.01
}

impl Default for FusionConfig {
    fn default() -> Self {
        Self {
            adapters: Vec::new(),
            score_dropout: None,
            value_regularization: default_value_regularization(),
        }
    }
}

impl Registered for FusionConfig {
    const NAME: &'static str = "fusion";
    const SUMMARY: &'static str =
        "AdapterFusion: attention over frozen trained adapters (Pfeiffer et al. 2021)";
    const NEEDS: Option<&'static str> = Some("trained adapters (--adapters)");

    fn options() -> Vec<MethodOption<Self>> {
        vec![
            MethodOption::parsed(
                "adapters",
                "DIR,DIR",
                "fusion: directories of saved adapters (RUN/adapter), comma-separated",
                |_: &Self| "none".into(),
                |c, text| {
                    c.adapters = parse_list("adapters", text)?;
                    Ok(())
                },
            ),
            MethodOption::new(
                "score-dropout",
                "P",
                "dropout on the fusion scores",
                |c: &Self| show_or(&c.score_dropout, "the backbone's attention dropout"),
                |c, p| c.score_dropout = Some(p),
            ),
            MethodOption::new(
                "value-regularization",
                "W",
                "weight of ||I - V||^2 in the loss (0: off)",
                |c: &Self| c.value_regularization.to_string(),
                |c, w| c.value_regularization = w,
            ),
        ]
    }
}

impl Method for FusionConfig {
    fn saved_adapters(&self) -> &[PathBuf] {
        &self.adapters
    }

    fn check(&self, model: &SequenceClassifier) -> Result<()> {
        if let Some(p) = self.score_dropout
            && !(0.0..1.0).contains(&p)
        {
            return Err(TuningError::Option {
                option: "score-dropout",
                message: format!("{p} is not a dropout rate in [0, 1)"),
            });
        }
        if !(self.value_regularization >= 0.0 && self.value_regularization.is_finite()) {
            return Err(TuningError::Option {
                option: "value-regularization",
                message: format!("{} is not a weight >= 0", self.value_regularization),
            });
        }
        if model.adapters.len() < 2 {
            return Err(TuningError::Option {
                option: "adapters",
                message: format!(
                    "AdapterFusion mixes two or more trained adapters; {} loaded (give their \
                     directories, comma-separated)",
                    model.adapters.len()
                ),
            });
        }
        Ok(())
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        Ok(model.add_fusion(self.score_dropout, self.value_regularization)?)
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        let mut patterns = model.fusion_patterns();
        patterns.push("head.*".into());
        patterns
    }
}
