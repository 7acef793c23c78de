//! MAM adapter (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer
//! Learning", "Mix-And-Match"): prefix tuning on every attention (`l` key and value rows each
//! query may attend to) plus a scaled parallel adapter beside every feed-forward block. The
//! backbone is frozen; prefixes, adapters and the head train.
//!
//! Defaults as AdapterHub's `MAMConfig` (`configuration/adapter_config.py`: a `PrefixTuningConfig`
//! with `bottleneck_size=800` and a `ParBnConfig`): `l = 30` prefix rows reparameterised while
//! training as `l` embeddings through `h → 800 → L·2·h` (tanh between; folded into plain rows
//! after training, as prefix tuning does), and a parallel adapter `m = h/2`, `s = 4`, ReLU,
//! LoRA-style initialisation (`init_weights="mam_adapter"`). These defaults are large on a small
//! model (the MLP alone is `~800·2Lh`); a smaller MAM takes `--prefix-len`, `--prefix-hidden`,
//! `--reduction-factor` or `--bottleneck`. `--prefix-hidden 0` trains the rows directly
//! (kiln's earlier variant, no reparameterisation).
//!
//! Trainable parameters while training: `l·h + (h·mid + mid) + (mid·2Lh + 2Lh)` for the
//! prefix encoder (`2·L·l·h` without one) `+ L·(2hm + m + h) + h·c + c`; after folding the
//! prefixes are `2·L·l·h`.

use serde::{Deserialize, Serialize};

use kiln_models::{Activation, AdapterInit, SequenceClassifier};

use crate::adapters::BottleneckOptions;
use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::methods::parallel::{PARALLEL_SLOTS, check_scale, scale_option};
use crate::options::MethodOption;
use crate::prompts::{prefix_hidden_option, prefix_len_option};

/// The MAM adapter's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MamConfig {
    /// The parallel adapter's shape and name.
    #[serde(flatten)]
    pub adapter: BottleneckOptions,
    /// `s`, the factor on the parallel adapter's output.
    pub scale: f64,
    /// `l`, prefix rows per attention.
    pub prefix_len: usize,
    /// `mid`, the prefix reparameterisation's hidden width (0: prefixes train directly).
    #[serde(default = "default_prefix_hidden")]
    pub prefix_hidden: usize,
}

fn default_prefix_hidden() -> usize {
    800
}

impl Default for MamConfig {
    fn default() -> Self {
        let mut adapter = BottleneckOptions::new(2, Activation::Relu, AdapterInit::Lora);
        adapter.name = "mam".into();
        Self {
            adapter,
            scale: 4.0,
            prefix_len: 30,
            prefix_hidden: default_prefix_hidden(),
        }
    }
}

impl Registered for MamConfig {
    const NAME: &'static str = "mam";
    const SUMMARY: &'static str = "prefix tuning plus a scaled parallel adapter (He et al. 2022)";

    fn options() -> Vec<MethodOption<Self>> {
        let mut options = vec![
            prefix_len_option(|c: &Self| c.prefix_len, |c| &mut c.prefix_len),
            scale_option(|c: &Self| c.scale, |c| &mut c.scale),
            prefix_hidden_option(|c: &Self| c.prefix_hidden, |c| &mut c.prefix_hidden),
        ];
        options.extend(BottleneckOptions::options(
            |c: &Self| &c.adapter,
            |c| &mut c.adapter,
        ));
        options
    }
}

impl Method for MamConfig {
    fn adapter_name(&self) -> Option<&str> {
        Some(&self.adapter.name)
    }

    fn check(&self, model: &SequenceClassifier) -> Result<()> {
        check_scale(self.scale)?;
        if self.prefix_len == 0 {
            return Err(TuningError::Option {
                option: "prefix-len",
                message: "MAM needs at least one prefix row".into(),
            });
        }
        self.adapter.check(model)
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        if self.prefix_hidden == 0 {
            let layout = self
                .adapter
                .layout(model, PARALLEL_SLOTS, self.scale, self.prefix_len);
            return Ok(model.add_adapter(&self.adapter.name, &layout)?);
        }
        let layout = self.adapter.layout(model, PARALLEL_SLOTS, self.scale, 0);
        model.add_adapter(&self.adapter.name, &layout)?;
        Ok(model.add_prefix_encoder(self.prefix_len, self.prefix_hidden)?)
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        let mut patterns = self.adapter.trainable_patterns(model);
        if self.prefix_hidden > 0 {
            patterns.push(format!("{}.prefix_encoder.*", model.backbone_name()));
        }
        patterns
    }

    fn after_fit(&self, model: &mut SequenceClassifier) -> Result<()> {
        // The encoder's prefixes join the parallel adapter: one adapter saves, loads, exports.
        if self.prefix_hidden > 0 {
            model.fold_prefix_encoder(&self.adapter.name)?;
        }
        Ok(())
    }
}
