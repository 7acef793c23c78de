//! AdapterFusion (Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition for
//! Transfer Learning"), the second of its two stages: adapters trained on other tasks (stage
//! one, e.g. `pfeiffer` runs) are loaded frozen, and a fusion attention per layer learns to mix
//! their outputs for the target task. The feed-forward output is the query, each adapter's output
//! gives a key and a value, and a softmax over the adapters weighs the values. Query and key
//! start small and the value as the identity, so a fresh fusion averages the adapters.
//!
//! The backbone and the adapters are frozen; the fusion layers and the head train (the
//! temperature annealing of AdapterHub's implementation is left out: `T = 1`). Trainable
//! parameters: `L·(3h² + 2h) + h·c + c`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use kiln_models::SequenceClassifier;

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::options::{MethodOption, parse_list};

/// AdapterFusion's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FusionConfig {
    /// Directories of the saved adapters to fuse (each with `adapter_config.json`); the caller
    /// loads them into the model before the method applies.
    pub adapters: Vec<PathBuf>,
}

impl Registered for FusionConfig {
    const NAME: &'static str = "fusion";
    const SUMMARY: &'static str =
        "AdapterFusion: attention over frozen trained adapters (Pfeiffer et al. 2021)";
    const NEEDS: Option<&'static str> = Some("trained adapters (--adapters)");

    fn options() -> Vec<MethodOption<Self>> {
        vec![MethodOption::parsed(
            "adapters",
            "DIR,DIR",
            "fusion: directories of saved adapters (RUN/adapter), comma-separated",
            |_: &Self| "none".into(),
            |c, text| {
                c.adapters = parse_list("adapters", text)?;
                Ok(())
            },
        )]
    }
}

impl Method for FusionConfig {
    fn saved_adapters(&self) -> &[PathBuf] {
        &self.adapters
    }

    fn check(&self, model: &SequenceClassifier) -> Result<()> {
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
        Ok(model.add_fusion()?)
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        let mut patterns = model.fusion_patterns();
        patterns.push("head.*".into());
        patterns
    }
}
