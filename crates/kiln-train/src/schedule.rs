//! Learning-rate schedules: linear warm-up from 0, then constant, linear decay to 0, or cosine
//! decay to 0 (the schedules of HF `get_*_schedule_with_warmup`).

use burn::module::ParamGroup;
use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::optim::lr_scheduler::module_lr_scheduler::{ModuleLearningRate, ModuleLrScheduler};
use serde::{Deserialize, Serialize};

use kiln_models::SequenceClassifier;

/// How the learning rate falls after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// It stays at the peak.
    Constant,
    /// Linearly to zero at the last step.
    Linear,
    /// Along a half cosine to zero at the last step.
    Cosine,
}

impl std::str::FromStr for Decay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Decay::Constant),
            "linear" => Ok(Decay::Linear),
            "cosine" => Ok(Decay::Cosine),
            other => Err(format!(
                "unknown schedule `{other}`: expected constant, linear or cosine"
            )),
        }
    }
}

/// Learning rate for 0-based `step` of `total`, with `warmup` steps of linear warm-up.
pub fn learning_rate(base: f64, decay: Decay, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / decay_steps).min(1.0);
    match decay {
        Decay::Constant => base,
        Decay::Linear => base * (1.0 - progress),
        Decay::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// Layer-wise learning-rate decay (Howard and Ruder 2018; Clark et al. 2020): the top transformer
/// layer trains at `lr`, each layer below at `decay` times the one above, the embeddings at
/// `lr · decay^L`; the head and anything else above the layers keep `lr`. Parameters inside a
/// layer (adapters, LoRA deltas) take their layer's rate.
pub fn layer_decayed(model: &SequenceClassifier, lr: f64, decay: f64) -> ModuleLearningRate {
    let layers = model.num_layers();
    let group = |pattern: String| {
        ParamGroup::from_regex(&pattern).expect("a regular expression built from fixed parts")
    };
    let embeddings = match model.backbone_name() {
        "bert" => r"^bert\.embeddings\.",
        "m2" => r"^m2\.embeddings\.",
        _ => r"^gpt2\.(wte|wpe)\.",
    };
    let mut scheduler = ModuleLrScheduler::new(ConstantLr::from(lr)).with_group(
        group(embeddings.to_string()),
        ConstantLr::from(lr * decay.powi(layers as i32)),
    );
    for i in 0..layers {
        let path = model.layer_path(i).replace('.', r"\.");
        scheduler = scheduler.with_group(
            group(format!("^{path}\\.")),
            ConstantLr::from(lr * decay.powi((layers - 1 - i) as i32)),
        );
    }
    scheduler.step()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_then_decay() {
        let lr = |decay, step| learning_rate(1.0, decay, step, 4, 14);
        assert_eq!(lr(Decay::Linear, 0), 0.25);
        assert_eq!(lr(Decay::Linear, 3), 1.0);
        assert_eq!(lr(Decay::Linear, 4), 1.0);
        assert!((lr(Decay::Linear, 9) - 0.5).abs() < 1e-12);
        assert!((lr(Decay::Cosine, 9) - 0.5).abs() < 1e-12);
        assert!(lr(Decay::Cosine, 13) < 0.03);
        assert_eq!(lr(Decay::Constant, 13), 1.0);
    }
}
