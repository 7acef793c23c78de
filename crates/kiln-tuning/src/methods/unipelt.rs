//! UniPELT (Mao et al. 2022, "UniPELT: A Unified Framework for Parameter-Efficient Language Model
//! Tuning"): LoRA on the attention's query and value, prefix tuning, and a Pfeiffer-placed
//! bottleneck adapter in every layer, each scaled per text by its own learned gate
//! `mean_t σ(g·x_t + c)`, so the model learns which submodule to rely on. The backbone is frozen.
//!
//! As AdapterHub's `UniPELTConfig` computes it (`methods/lora.py`, `prefix_tuning.py`,
//! `modeling.py` with `use_gating`): LoRA `r = 8` with the gate in place of `alpha / r`, reading
//! the projection's input; `l = 10` prefix rows through an `h → 512 → L·2·h` MLP while training
//! (folded into plain rows after), the gate reading the attention's input and scaling the
//! prefix's keys and values; an adapter `m = h/16` (ReLU) reading `LN(h + x)`, its gate reading
//! the same. Every gate averages over all positions, padding included, as AdapterHub does.
//!
//! Trainable parameters while training: `L·(t·(2rh + h + 1) + 2hm + m + h + (h + 1) + (h + 1))`
//! (`t` LoRA targets per layer: 2 on BERT) `+ l·h + (h·mid + mid) + (mid·2Lh + 2Lh) + h·c + c`;
//! after folding (or with `--prefix-hidden 0`, rows trained directly) the prefixes are `2·L·l·h`.

use serde::{Deserialize, Serialize};

use kiln_models::{Activation, AdapterInit, GateBias, LowRankConfig, SequenceClassifier, gate};

use crate::adapters::BottleneckOptions;
use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::methods::lora::check_rank;
use crate::methods::pfeiffer::PFEIFFER_SLOTS;
use crate::options::MethodOption;
use crate::prompts::{prefix_hidden_option, prefix_len_option};
use crate::targets::fill_targets;

/// UniPELT's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UniPeltConfig {
    /// The gated adapter's shape and the name of the whole.
    #[serde(flatten)]
    pub adapter: BottleneckOptions,
    /// `r` of the gated LoRA deltas.
    pub rank: usize,
    /// `l`, prefix rows per attention.
    pub prefix_len: usize,
    /// `mid`, the prefix reparameterisation's hidden width (0: the rows train directly).
    pub prefix_hidden: usize,
}

impl Default for UniPeltConfig {
    fn default() -> Self {
        let mut adapter = BottleneckOptions::new(16, Activation::Relu, AdapterInit::NearIdentity);
        adapter.name = "unipelt".into();
        Self {
            adapter,
            rank: 8,
            prefix_len: 10,
            prefix_hidden: 512,
        }
    }
}

impl Registered for UniPeltConfig {
    const NAME: &'static str = "unipelt";
    const SUMMARY: &'static str = "gated LoRA + prefix tuning + adapter, each gate learned \
                                   (Mao et al. 2022)";

    fn options() -> Vec<MethodOption<Self>> {
        let mut options = vec![
            MethodOption::new(
                "rank",
                "R",
                "LoRA rank",
                |c: &Self| c.rank.to_string(),
                |c, v| c.rank = v,
            ),
            prefix_len_option(|c: &Self| c.prefix_len, |c| &mut c.prefix_len),
            prefix_hidden_option(|c: &Self| c.prefix_hidden, |c| &mut c.prefix_hidden),
        ];
        options.extend(BottleneckOptions::options(
            |c: &Self| &c.adapter,
            |c| &mut c.adapter,
        ));
        options
    }
}

impl Method for UniPeltConfig {
    fn adapter_name(&self) -> Option<&str> {
        Some(&self.adapter.name)
    }

    // Its LoRA deltas sit on the projections, outside the adapter slots kiln's adapter
    // directory holds; the run and AdapterHub's format hold all of it.
    fn saves_adapter(&self) -> bool {
        false
    }

    fn check(&self, model: &SequenceClassifier) -> Result<()> {
        check_rank(self.rank, "UniPELT's LoRA")?;
        if self.prefix_len == 0 {
            return Err(TuningError::Option {
                option: "prefix-len",
                message: "UniPELT's prefix needs at least one row".into(),
            });
        }
        if !model.backbone().has_attention() {
            return Err(TuningError::Option {
                option: "method",
                message: format!(
                    "UniPELT's prefix and LoRA act on attention; {} has none",
                    model.backbone_name()
                ),
            });
        }
        self.adapter.check(model)
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let direct = if self.prefix_hidden == 0 { self.prefix_len } else { 0 };
        let mut layout = self.adapter.layout(model, PFEIFFER_SLOTS, 1.0, direct);
        layout.gated = true;
        model.add_adapter(&self.adapter.name, &layout)?;
        if self.prefix_hidden > 0 {
            model.add_prefix_encoder(self.prefix_len, self.prefix_hidden)?;
        }
        // The gate takes the place of `alpha / r`: alpha = r leaves the delta unscaled.
        let delta = LowRankConfig::new(self.rank, self.rank as f64, 0.0);
        let targets = model.backbone().default_lora_targets();
        fill_targets(model, &targets, "method", |projection| {
            projection.add_lora(delta);
            let width = projection.d_in();
            let device = projection.weight.lazy_device();
            if let Some(lora) = projection.lora.as_mut() {
                lora.gate = Some(gate(width, GateBias::Uniform, &device));
            }
        })
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        let mut patterns = self.adapter.trainable_patterns(model);
        patterns.push("*.lora.*".into());
        if self.prefix_hidden > 0 {
            patterns.push(format!("{}.prefix_encoder.*", model.backbone_name()));
        }
        patterns
    }

    fn after_fit(&self, model: &mut SequenceClassifier) -> Result<()> {
        // The encoder's prefixes join the gated adapter, as AdapterHub's `eject_prefix_tuning`.
        if self.prefix_hidden > 0 {
            model.fold_prefix_encoder(&self.adapter.name)?;
        }
        Ok(())
    }
}
