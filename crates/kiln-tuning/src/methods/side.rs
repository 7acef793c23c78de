//! Side-tuning (Zhang et al. 2020, "Side-Tuning: A Baseline for Network Adaptation via Additive
//! Side Networks"): the backbone stays frozen and untouched; a small side network learns beside
//! it, and the head reads the blend `alpha·base + (1 - alpha)·side` of their features. By
//! default `alpha = sigmoid(a)` is trained (`a` from 0), as the authors' `Alpha` merge does;
//! `--side-alpha` fixes it instead, or starts a linear curriculum to `--side-alpha-end` over
//! training (the end value is used at inference).
//!
//! The side network is kiln's lightweight variant, a two-layer MLP `h → w → h` on the mean of the
//! input's (frozen) token embeddings (see `kiln_models::side`), not the paper's whole smaller
//! network. Defaults: `w = h`, trained `alpha`. Trainable parameters:
//! `2hw + w + h [+ 1 trained alpha] + h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::{SequenceClassifier, SideConfig};

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::options::{MethodOption, show_or};

/// Side-tuning's settings (default: `w = h`, a trained alpha).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SideTuningConfig {
    /// Hidden width `w` of the side MLP; `None` is the backbone's width.
    pub width: Option<usize>,
    /// Weight of the backbone's features in the blend (at the start of training); `None`
    /// trains it.
    pub alpha: Option<f64>,
    /// Final `alpha` of the curriculum; `None` keeps `alpha` fixed.
    pub alpha_end: Option<f64>,
}


impl Registered for SideTuningConfig {
    const NAME: &'static str = "side";
    const SUMMARY: &'static str = "side-tuning: frozen backbone blended with a small side network \
                                   (Zhang et al. 2020)";

    fn options() -> Vec<MethodOption<Self>> {
        vec![
            MethodOption::new(
                "side-width",
                "W",
                "side: hidden width of the side network",
                |c: &Self| show_or(&c.width, "h"),
                |c, w| c.width = Some(w),
            ),
            MethodOption::new(
                "side-alpha",
                "A",
                "side: fixed weight of the backbone's features (at the start of training)",
                |c: &Self| show_or(&c.alpha, "trained, sigmoid(a) from a = 0"),
                |c, a| c.alpha = Some(a),
            ),
            MethodOption::new(
                "side-alpha-end",
                "A",
                "side: weight at the end of training and at inference (a linear curriculum)",
                |c: &Self| show_or(&c.alpha_end, "fixed"),
                |c, a| c.alpha_end = Some(a),
            ),
        ]
    }
}

impl SideTuningConfig {
    /// The side network these settings give on `model`.
    pub fn network(&self, model: &SequenceClassifier) -> SideConfig {
        SideConfig {
            width: self.width.unwrap_or(model.hidden_size()),
            alpha: self.alpha,
            alpha_end: self.alpha_end.or(self.alpha).unwrap_or(0.5),
        }
    }
}

impl Method for SideTuningConfig {
    // A head on MiniLM's small features beside a side network moves slowly at adapter rates
    // (BBC News, one epoch: 72.6% at 1e-3, 95.5% at 1e-2).
    fn default_lr(&self) -> f64 {
        1e-2
    }

    fn check(&self, _model: &SequenceClassifier) -> Result<()> {
        if self.width == Some(0) {
            return Err(TuningError::Option {
                option: "side-width",
                message: "the side network needs a hidden layer at least 1 wide".into(),
            });
        }
        if self.alpha_end.is_some() && self.alpha.is_none() {
            return Err(TuningError::Option {
                option: "side-alpha-end",
                message: "a curriculum needs its start, --side-alpha, too (a trained alpha has \
                          no schedule)"
                    .into(),
            });
        }
        for (option, alpha) in [
            ("side-alpha", self.alpha),
            ("side-alpha-end", self.alpha_end),
        ] {
            if let Some(alpha) = alpha
                && !(0.0..=1.0).contains(&alpha)
            {
                return Err(TuningError::Option {
                    option,
                    message: format!("{alpha} is not a blend weight in [0, 1]"),
                });
            }
        }
        Ok(())
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let network = self.network(model);
        model.add_side_network(&network);
        Ok(())
    }

    fn trainable_patterns(&self, _model: &SequenceClassifier) -> Vec<String> {
        vec!["side.*".into(), "head.*".into()]
    }
}
