//! Learning-rate schedules: linear warm-up from 0, then constant, linear decay to 0, or cosine
//! decay to 0 (the schedules of HF `get_*_schedule_with_warmup`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Constant,
    Linear,
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
