//! Parallel adapters (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer
//! Learning"): a bottleneck adapter beside every feed-forward block, reading its input and adding
//! `s·up(f(down(x)))` to its output. With `s = 4` this is the paper's scaled parallel adapter,
//! its best placement for a feed-forward budget; `--scale 1` is the unscaled variant.
//!
//! Defaults as the paper and AdapterHub's `ParBnConfig`: `m = h/2`, ReLU, LoRA-style
//! initialisation (down Kaiming-uniform, up zero, so training starts from the backbone exactly),
//! `s = 4`. Trainable parameters: `L·(2hm + m + h) + [2h·(2L+1) with --train-norms] + h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::{Activation, AdapterInit, SequenceClassifier};

use crate::adapters::{BottleneckOptions, Slots};
use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::options::MethodOption;

/// Parallel adapters' settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParallelConfig {
    /// The adapter's shape and name.
    #[serde(flatten)]
    pub adapter: BottleneckOptions,
    /// `s`, the factor on the adapter's output.
    pub scale: f64,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        let mut adapter = BottleneckOptions::new(2, Activation::Relu, AdapterInit::Lora);
        adapter.name = "parallel".into();
        Self {
            adapter,
            scale: 4.0,
        }
    }
}

/// `--scale`, the factor on a parallel adapter's output (parallel and MAM).
pub(crate) fn scale_option<C: 'static>(
    scale: fn(&C) -> f64,
    scale_mut: fn(&mut C) -> &mut f64,
) -> MethodOption<C> {
    MethodOption::new(
        "scale",
        "S",
        "parallel / MAM adapter output scale s",
        move |c| scale(c).to_string(),
        move |c, s| *scale_mut(c) = s,
    )
}

impl Registered for ParallelConfig {
    const NAME: &'static str = "parallel";
    const SUMMARY: &'static str =
        "scaled adapter beside each feed-forward (He et al. 2022); --scale 1 is unscaled";

    fn options() -> Vec<MethodOption<Self>> {
        let mut options = vec![scale_option(|c: &Self| c.scale, |c| &mut c.scale)];
        options.extend(BottleneckOptions::options(
            |c: &Self| &c.adapter,
            |c| &mut c.adapter,
        ));
        options
    }
}

/// The parallel placement: beside the feed-forward only.
pub(crate) const PARALLEL_SLOTS: Slots = Slots {
    after_attention: false,
    after_feed_forward: false,
    parallel: true,
    original_ln_before: false,
};

pub(crate) fn check_scale(scale: f64) -> Result<()> {
    if !scale.is_finite() || scale <= 0.0 {
        return Err(TuningError::Option {
            option: "scale",
            message: format!("{scale} is not a positive scale"),
        });
    }
    Ok(())
}

impl Method for ParallelConfig {
    fn label(&self) -> Option<String> {
        Some(format!("parallel-s{}", self.scale))
    }

    fn adapter_name(&self) -> Option<&str> {
        Some(&self.adapter.name)
    }

    fn check(&self, model: &SequenceClassifier) -> Result<()> {
        check_scale(self.scale)?;
        self.adapter.check(model)
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let layout = self.adapter.layout(model, PARALLEL_SLOTS, self.scale, 0);
        Ok(model.add_adapter(&self.adapter.name, &layout)?)
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        self.adapter.trainable_patterns(model)
    }
}
