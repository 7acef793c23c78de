//! What the bottleneck-adapter methods share: the adapter's options (bottleneck, non-linearity,
//! initialisation, whether layer norms train, the name it is saved under) and the step that puts
//! one into the model and names what trains.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use kiln_models::{
    Activation, AdapterConfig, AdapterInit, Composition, PhmConfig, SequenceClassifier,
};

use crate::error::{Result, TuningError};
use crate::options::{MethodOption, parse_list, show_name, show_or};

/// Options of one bottleneck adapter; each method supplies its paper's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BottleneckOptions {
    /// Bottleneck width `m`; `None` derives it as `h / reduction_factor`.
    pub bottleneck: Option<usize>,
    /// The bottleneck is the hidden size divided by this, unless `bottleneck` is given.
    pub reduction_factor: usize,
    /// The non-linearity between the down- and up-projection.
    pub activation: Activation,
    /// How the adapter's weights start.
    pub init: AdapterInit,
    /// Train every layer norm of the backbone as well (Houlsby et al. do).
    pub train_norms: bool,
    /// The name the adapter is held, saved and loaded under.
    pub name: String,
    /// Saved adapters (RUN/adapter directories) the new one is stacked on, frozen: AdapterHub's
    /// `Stack(lang, task)`, MAD-X's task adapter over a language adapter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack_on: Vec<PathBuf>,
}

impl BottleneckOptions {
    /// A method's defaults: no explicit width, norms frozen, named `adapter`.
    pub fn new(reduction_factor: usize, activation: Activation, init: AdapterInit) -> Self {
        Self {
            bottleneck: None,
            reduction_factor,
            activation,
            init,
            train_norms: false,
            name: "adapter".into(),
            stack_on: Vec::new(),
        }
    }

    /// `--stack-on`, for the methods whose adapter can be stacked (sequential bottlenecks).
    pub fn stack_option<C: 'static>(
        adapter: fn(&C) -> &Self,
        adapter_mut: fn(&mut C) -> &mut Self,
    ) -> MethodOption<C> {
        MethodOption::parsed(
            "stack-on",
            "DIR,DIR",
            "saved adapters (RUN/adapter) to stack the new one on, frozen (MAD-X)",
            move |c| {
                let dirs = &adapter(c).stack_on;
                if dirs.is_empty() {
                    "none".into()
                } else {
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                }
            },
            move |c, text| {
                adapter_mut(c).stack_on = parse_list("stack-on", text)?;
                Ok(())
            },
        )
    }

    /// Adds the adapter of `layout` under its name, stacked on the adapters loaded from
    /// `stack_on` (every other adapter the model holds) when there are any.
    pub fn add(&self, model: &mut SequenceClassifier, layout: &AdapterConfig) -> Result<()> {
        model.add_adapter(&self.name, layout)?;
        if self.stack_on.is_empty() {
            return Ok(());
        }
        let mut stack: Vec<Composition> = (0..model.adapters.len())
            .filter(|&k| model.adapters[k].name != self.name)
            .map(Composition::Adapter)
            .collect();
        stack.extend(model.adapter_index(&self.name).map(Composition::Adapter));
        Ok(model.set_composition(Composition::Stack(stack))?)
    }

    /// The options of a method whose config holds its adapter at `adapter` / `adapter_mut`.
    pub fn options<C: 'static>(
        adapter: fn(&C) -> &Self,
        adapter_mut: fn(&mut C) -> &mut Self,
    ) -> Vec<MethodOption<C>> {
        vec![
            MethodOption::new(
                "bottleneck",
                "M",
                "adapter bottleneck width (overrides --reduction-factor)",
                move |c| show_or(&adapter(c).bottleneck, "h / reduction factor"),
                move |c, v| adapter_mut(c).bottleneck = Some(v),
            ),
            MethodOption::new(
                "reduction-factor",
                "F",
                "bottleneck = hidden size / F",
                move |c| adapter(c).reduction_factor.to_string(),
                move |c, v| adapter_mut(c).reduction_factor = v,
            ),
            MethodOption::new(
                "adapter-activation",
                "relu|gelu|gelu_new|silu|tanh",
                "adapter non-linearity",
                move |c| show_name(&adapter(c).activation),
                move |c, v| adapter_mut(c).activation = v,
            ),
            MethodOption::new(
                "adapter-init",
                "near-identity|lora",
                "near-identity (Houlsby) or lora (up-projection zero)",
                move |c| show_name(&adapter(c).init),
                move |c, v| adapter_mut(c).init = v,
            ),
            MethodOption::new(
                "train-norms",
                "true|false",
                "train the backbone's layer norms with the adapter",
                move |c| adapter(c).train_norms.to_string(),
                move |c, v| adapter_mut(c).train_norms = v,
            ),
            MethodOption::new(
                "adapter-name",
                "NAME",
                "the name the adapter is held and saved under",
                move |c| adapter(c).name.clone(),
                move |c, v: String| adapter_mut(c).name = v,
            ),
        ]
    }

    /// `m` on a model of width `h`.
    pub fn width(&self, hidden: usize) -> usize {
        self.bottleneck
            .unwrap_or(hidden / self.reduction_factor.max(1))
    }

    /// Refuses a zero width, a reduction factor that leaves none, an empty name.
    pub fn check(&self, model: &SequenceClassifier) -> Result<()> {
        if self.bottleneck == Some(0) {
            return Err(TuningError::Option {
                option: "bottleneck",
                message: "an adapter bottleneck must be at least 1 wide".into(),
            });
        }
        if self.bottleneck.is_none()
            && (self.reduction_factor == 0 || self.reduction_factor > model.hidden_size())
        {
            return Err(TuningError::Option {
                option: "reduction-factor",
                message: format!(
                    "{} leaves no bottleneck on a model {} wide",
                    self.reduction_factor,
                    model.hidden_size()
                ),
            });
        }
        if self.name.is_empty() {
            return Err(TuningError::Option {
                option: "adapter-name",
                message: "an adapter needs a name".into(),
            });
        }
        Ok(())
    }

    /// The adapter's layout: which slots, at `scale`, with a prefix of `prefix_len` rows.
    pub fn layout(
        &self,
        model: &SequenceClassifier,
        slots: Slots,
        scale: f64,
        prefix_len: usize,
    ) -> AdapterConfig {
        AdapterConfig {
            after_attention: slots.after_attention,
            after_feed_forward: slots.after_feed_forward,
            parallel: slots.parallel,
            bottleneck: self.width(model.hidden_size()),
            activation: self.activation,
            scale,
            init: self.init,
            prefix_len,
            original_ln_before: slots.original_ln_before,
            phm: None,
            gated: false,
            reft: None,
        }
    }

    /// The adapter's parameters, the head, and the layer norms if they train.
    pub fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        let mut patterns = model.adapter_patterns(&self.name);
        if self.train_norms {
            patterns.extend(model.norm_patterns());
        }
        patterns.push("head.*".into());
        patterns
    }
}

/// Where in each layer an adapter sits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slots {
    /// A bottleneck on the attention block's output (Houlsby).
    pub after_attention: bool,
    /// A bottleneck on the feed-forward block's output (Houlsby, Pfeiffer).
    pub after_feed_forward: bool,
    /// A bottleneck beside the feed-forward block (He et al.).
    pub parallel: bool,
    /// The sequential adapters read the closed sub-layer `LN(h + x)` (Pfeiffer; AdapterHub's
    /// `original_ln_before`), not its output `h` (Houlsby).
    pub original_ln_before: bool,
}

/// What Compacter's methods add to a bottleneck adapter: its projections are PHM layers (see
/// [`kiln_models::phm`]) of `n` Kronecker terms of rank `r`, their rules shared by every layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhmOptions {
    /// `n`: Kronecker terms per projection and the size of the shared rules.
    pub phm_dim: usize,
    /// `r`: the rank of each term's factor.
    pub phm_rank: usize,
}

impl Default for PhmOptions {
    /// AdapterHub's `phm_dim = 4`, `phm_rank = 1`.
    fn default() -> Self {
        let phm = PhmConfig::compacter();
        Self {
            phm_dim: phm.dim,
            phm_rank: phm.rank,
        }
    }
}

impl PhmOptions {
    /// The options of a method whose config holds these at `phm` / `phm_mut`.
    pub fn options<C: 'static>(
        phm: fn(&C) -> &Self,
        phm_mut: fn(&mut C) -> &mut Self,
    ) -> Vec<MethodOption<C>> {
        vec![
            MethodOption::new(
                "phm-dim",
                "N",
                "Kronecker terms per PHM projection (the shared rules are N x N x N)",
                move |c| phm(c).phm_dim.to_string(),
                move |c, v| phm_mut(c).phm_dim = v,
            ),
            MethodOption::new(
                "phm-rank",
                "R",
                "rank of each PHM term's weight factor",
                move |c| phm(c).phm_rank.to_string(),
                move |c, v| phm_mut(c).phm_rank = v,
            ),
        ]
    }

    /// Refuses a zero `n` or `r`, and an `n` that does not divide the model's width.
    pub fn check(&self, model: &SequenceClassifier) -> Result<()> {
        if self.phm_rank == 0 {
            return Err(TuningError::Option {
                option: "phm-rank",
                message: "a PHM factor needs rank at least 1".into(),
            });
        }
        let width = model.hidden_size();
        if self.phm_dim == 0 || !width.is_multiple_of(self.phm_dim) {
            return Err(TuningError::Option {
                option: "phm-dim",
                message: format!(
                    "{} must divide the model's width {width} (PHM layers split it into N blocks)",
                    self.phm_dim
                ),
            });
        }
        Ok(())
    }

    /// `layout` with PHM projections. The bottleneck is rounded up to a multiple of `n` where
    /// it is not one (AdapterHub refuses such a width; kiln's tiny test models meet it).
    pub fn apply(&self, mut layout: AdapterConfig) -> AdapterConfig {
        let n = self.phm_dim.max(1);
        layout.bottleneck = layout.bottleneck.div_ceil(n) * n;
        layout.phm = Some(PhmConfig {
            dim: self.phm_dim,
            rank: self.phm_rank,
        });
        layout
    }
}
