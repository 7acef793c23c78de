//! The adapter slots every transformer layer has: bottleneck adapters after attention and after
//! the feed-forward (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP";
//! Pfeiffer et al. 2021), a scaled adapter beside the feed-forward (He et al. 2022, "Towards a
//! Unified View of Parameter-Efficient Transfer Learning"), key/value prefixes for attention
//! (Li and Liang 2021), and AdapterFusion over several adapters (Pfeiffer et al. 2021,
//! "AdapterFusion: Non-Destructive Task Composition for Transfer Learning").
//!
//! Each slot follows the reference implementation, AdapterHub's `adapters` library
//! (`methods/modeling.py`: `Adapter.pre_forward`, `forward`, `post_forward`, `ParallelAdapter`,
//! `BertFusion`; `methods/bottleneck.py`: `compose_fuse`): see [`LayerAdapters::close_sub_layer`].
//!
//! A layer holds any number of adapters ([`LayerAdapters::loaded`]); at most one is active at a
//! time, or all of them through the fusion attention. Which one is active is a plain field, so
//! switching costs nothing and never touches the base weights.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::attention::Prefix;
use crate::low_rank::peft_kaiming_uniform;
use crate::phm::{PhmConfig, PhmWeight};
use crate::reft::{ReftConfig, ReftIntervention, ReftPositions};
use crate::tunable::{affine_rows, linear_rows};

/// How a fresh adapter's weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterInit {
    /// Both projections `N(0, 0.02²)`, zero biases: the adapter starts as almost the identity
    /// (Houlsby et al. 2019; AdapterHub's default `init_weights="bert"`).
    NearIdentity,
    /// Down-projection Kaiming-uniform, up-projection zero: the adapter starts as exactly the
    /// identity, as LoRA's deltas and He et al.'s parallel adapters do.
    Lora,
}

impl std::str::FromStr for AdapterInit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "near-identity" => Ok(Self::NearIdentity),
            "lora" => Ok(Self::Lora),
            other => Err(format!(
                "unknown adapter init `{other}`: expected near-identity or lora"
            )),
        }
    }
}

/// The shape of one adapter in every layer; what an adapter's JSON config records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// A bottleneck adapter on the attention block's output (Houlsby).
    pub after_attention: bool,
    /// A bottleneck adapter on the feed-forward block's output (Houlsby, Pfeiffer).
    pub after_feed_forward: bool,
    /// A bottleneck adapter beside the feed-forward, reading its input (parallel, MAM).
    pub parallel: bool,
    /// Width `m` of the bottleneck.
    pub bottleneck: usize,
    /// The non-linearity between the projections.
    pub activation: Activation,
    /// Factor on the adapter's output (`s` of the scaled parallel adapter; 1 otherwise).
    pub scale: f64,
    /// How fresh weights start.
    pub init: AdapterInit,
    /// Key and value rows prepended to every attention (0: none).
    pub prefix_len: usize,
    /// The sequential adapters read the sub-layer as the plain backbone closes it, `LN(h + x)`,
    /// not its raw output `h` (AdapterHub's `original_ln_before`: true for Pfeiffer, false for
    /// Houlsby). Absent in adapters saved before it existed, which read `h`.
    #[serde(default)]
    pub original_ln_before: bool,
    /// The bottlenecks' projections are Compacter's PHM layers with these settings, their rules
    /// shared by every layer (`None`: dense projections).
    #[serde(default)]
    pub phm: Option<PhmConfig>,
    /// Each bottleneck's output is scaled by a learned gate (UniPELT).
    #[serde(default)]
    pub gated: bool,
    /// LoReFT's edits of every layer's output (`None`: none).
    #[serde(default)]
    pub reft: Option<ReftConfig>,
}

impl AdapterConfig {
    /// Prefix rows only, no bottleneck adapters: prefix tuning's folded prefixes, deep prompts.
    pub fn prefix_only(prefix_len: usize) -> Self {
        Self {
            after_attention: false,
            after_feed_forward: false,
            parallel: false,
            bottleneck: 0,
            activation: Activation::Relu,
            scale: 1.0,
            init: AdapterInit::Lora,
            prefix_len,
            original_ln_before: false,
            phm: None,
            gated: false,
            reft: None,
        }
    }

    /// Parameters per layer on a model of width `h`, per bottleneck adapter `2hm + m + h` (PHM:
    /// `2r(h + m) + m + h`; with a gate `+ h + 1`), `2·l·h` for the prefix and LoReFT's units;
    /// Compacter's shared rules come once, see [`AdapterConfig::shared_params`].
    pub fn params_per_layer(&self, width: usize) -> usize {
        let (h, m) = (width, self.bottleneck);
        let projections = match self.phm {
            Some(phm) => 2 * phm.factor_params(h, m),
            None => 2 * h * m,
        };
        let gate = if self.gated { h + 1 } else { 0 };
        self.bottlenecks() * (projections + m + h + gate)
            + gate // the prefix's gate
            + 2 * self.prefix_len * h
            + self.reft.map_or(0, |reft| reft.params_per_layer(h))
    }

    /// Parameters the layers share: Compacter's rules, `n³`.
    pub fn shared_params(&self) -> usize {
        self.phm.map_or(0, |phm| phm.dim.pow(3))
    }

    /// Bottleneck adapters per layer (after attention, after and beside the feed-forward).
    pub fn bottlenecks(&self) -> usize {
        [self.after_attention, self.after_feed_forward, self.parallel]
            .iter()
            .filter(|&&on| on)
            .count()
    }

    /// One layer's share of this adapter, randomly initialised. The first layer also holds what
    /// every layer shares (Compacter's rules).
    pub fn init_layer(&self, width: usize, first: bool, device: &Device) -> LayerAdapter {
        let bottleneck = |on: bool, reads_closed: bool| {
            on.then(|| self.init_bottleneck(width, reads_closed, device))
        };
        let sequential = self.original_ln_before;
        LayerAdapter {
            attention: bottleneck(self.after_attention, sequential),
            feed_forward: bottleneck(self.after_feed_forward, sequential),
            parallel: bottleneck(self.parallel, false),
            prefix: (self.prefix_len > 0).then(|| AttentionPrefix {
                // Small, so a fresh prefix takes little attention and adds almost nothing.
                key: prefix_init().init([self.prefix_len, width], device),
                value: prefix_init().init([self.prefix_len, width], device),
            }),
            prefix_gate: self.gated.then(|| gate(width, GateBias::Uniform, device)),
            phm_rule: self
                .phm
                .filter(|_| first && self.bottlenecks() > 0)
                .map(|phm| phm.init_rule(device)),
            reft: self.reft.map(|reft| reft.init(width, device)),
        }
    }

    fn init_bottleneck(
        &self,
        width: usize,
        original_ln_before: bool,
        device: &Device,
    ) -> BottleneckAdapter {
        let m = self.bottleneck;
        let (down, up) = match self.init {
            AdapterInit::NearIdentity => (small_normal(), small_normal()),
            AdapterInit::Lora => (peft_kaiming_uniform(), Initializer::Zeros),
        };
        let projection = |d_in, d_out, init: Initializer| match self.phm {
            // PHM layers start as AdapterHub's, whatever `init` says (its "bert" init skips them).
            Some(phm) => AdapterProjection {
                weight: None,
                phm: Some(PhmWeight::init(d_in, d_out, phm, device)),
                bias: Some(Initializer::Zeros.init([d_out], device)),
            },
            None => {
                let mut layer = LinearConfig::new(d_in, d_out)
                    .with_initializer(init)
                    .init(device);
                layer.bias = Some(Initializer::Zeros.init([d_out], device));
                AdapterProjection::from(layer)
            }
        };
        BottleneckAdapter {
            down: projection(width, m, down),
            up: projection(m, width, up),
            gate: self.gated.then(|| gate(width, GateBias::Zero, device)),
            activation: self.activation,
            scale: self.scale,
            original_ln_before,
        }
    }
}

/// A bottleneck adapter's down- or up-projection: a dense weight (paths `weight`, `bias`, as
/// Burn's `Linear`, so adapters saved before PHM existed load unchanged) or Compacter's PHM
/// factors (`phm.left`, `phm.right`; see [`crate::phm`]), whose rules come from the layer's
/// [`AdapterContext`].
#[derive(Module, Debug)]
pub struct AdapterProjection {
    /// The dense weight `[d_in, d_out]`, if dense.
    pub weight: Option<Param<Tensor<2>>>,
    /// The PHM factors, if a PHM layer.
    pub phm: Option<PhmWeight>,
    /// Bias `[d_out]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl From<Linear> for AdapterProjection {
    fn from(linear: Linear) -> Self {
        Self {
            weight: Some(linear.weight),
            phm: None,
            bias: linear.bias,
        }
    }
}

impl AdapterProjection {
    /// The weight `[d_in, d_out]`: the dense one, or the PHM layer's `Σ_k rule_k ⊗ W_k`.
    pub fn weight(&self, rule: Option<&Tensor<3>>) -> Tensor<2> {
        match (&self.weight, &self.phm, rule) {
            (Some(weight), _, _) => weight.val(),
            (None, Some(phm), Some(rule)) => phm.weight(rule.clone()),
            // `LayerAdapter::phm_rule` of the first layer is filled with the factors.
            (None, Some(_), None) => unreachable!("a PHM projection without its adapter's rules"),
            (None, None, _) => unreachable!("an adapter projection holds a dense or a PHM weight"),
        }
    }

    /// `[d_in, d_out]`.
    pub fn dims(&self) -> [usize; 2] {
        match (&self.weight, &self.phm) {
            (Some(weight), _) => weight.lazy_shape().dims::<2>(),
            (None, Some(phm)) => phm.dims(),
            (None, None) => [0, 0],
        }
    }

    /// `x·W + b` over the last axis of `x`.
    pub fn forward(&self, x: Tensor<3>, rule: Option<&Tensor<3>>) -> Tensor<3> {
        let [batch, seq, width] = x.dims();
        let weight = self.weight(rule);
        let d_out = weight.dims()[1];
        affine_rows(x.reshape([batch * seq, width]), weight, self.bias.as_ref())
            .reshape([batch, seq, d_out])
    }
}

/// How a UniPELT gate's bias starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateBias {
    /// Zero: a bottleneck adapter's gate (AdapterHub's "bert" init).
    Zero,
    /// torch's `nn.Linear` default, uniform in `±1/sqrt(h)`: the LoRA and prefix gates, which
    /// AdapterHub leaves at it.
    Uniform,
}

/// A fresh UniPELT gate `[h, 1]`: weight `N(0, 0.02²)`, as AdapterHub initialises all three.
pub fn gate(width: usize, bias: GateBias, device: &Device) -> Linear {
    let mut gate = LinearConfig::new(width, 1)
        .with_initializer(small_normal())
        .init(device);
    gate.bias = Some(match bias {
        GateBias::Zero => Initializer::Zeros.init([1], device),
        GateBias::Uniform => peft_kaiming_uniform().init_with([1], Some(width), Some(1), device),
    });
    gate
}

/// AdapterHub's `init_bert_weights`, `N(0, 0.02²)`.
fn small_normal() -> Initializer {
    Initializer::Normal {
        mean: 0.0,
        std: 2e-2,
    }
}

fn prefix_init() -> Initializer {
    Initializer::Normal {
        mean: 0.0,
        std: 2e-2,
    }
}

/// `x ↦ scale · up(f(down(x)))`: what a bottleneck adapter adds to the stream it sits on (times
/// UniPELT's gate `mean_t σ(g·x_t)` when it has one).
#[derive(Module, Debug)]
pub struct BottleneckAdapter {
    /// `[h, m]`
    pub down: AdapterProjection,
    /// `[m, h]`
    pub up: AdapterProjection,
    /// UniPELT's gate `[h, 1]`, if gated.
    pub gate: Option<Linear>,
    /// The non-linearity between the projections.
    #[module(skip)]
    pub activation: Activation,
    /// Factor on the output (`s`; 1 for a plain adapter).
    #[module(skip)]
    pub scale: f64,
    /// Reads `LN(h + x)` rather than `h` (see [`AdapterConfig::original_ln_before`]).
    #[module(skip)]
    pub original_ln_before: bool,
}

impl BottleneckAdapter {
    /// `scale · up(f(down(x)))`, what the adapter adds to its input; `rule` is the adapter's
    /// shared PHM rules when its projections are PHM layers.
    pub fn delta(&self, x: Tensor<3>, rule: Option<&Tensor<3>>) -> Tensor<3> {
        let down = self.down.forward(x.clone(), rule);
        let mut out = self.up.forward(self.activation.forward(down), rule);
        if self.scale != 1.0 {
            out = out * self.scale;
        }
        match &self.gate {
            Some(gate) => out * sequence_gate(gate, x),
            None => out,
        }
    }
}

/// UniPELT's gate of a sub-module reading `x` `[batch, seq, h]`: `mean_t σ(g·x_t + c)`, one number
/// per text `[batch, 1, 1]`. As AdapterHub computes it, the mean runs over every position, padding
/// included.
pub fn sequence_gate(gate: &Linear, x: Tensor<3>) -> Tensor<3> {
    burn::tensor::activation::sigmoid(linear_rows(gate, x)).mean_dim(1)
}

/// Key and value rows `[l, h]` that every query of the layer may attend to, before the real ones.
#[derive(Module, Debug)]
pub struct AttentionPrefix {
    /// Key rows `[l, h]`.
    pub key: Param<Tensor<2>>,
    /// Value rows `[l, h]`.
    pub value: Param<Tensor<2>>,
}

impl AttentionPrefix {
    /// Rows `l`.
    pub fn len(&self) -> usize {
        self.key.lazy_shape().dims::<2>()[0]
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One adapter's modules in one layer.
#[derive(Module, Debug)]
pub struct LayerAdapter {
    /// After the attention block (Houlsby).
    pub attention: Option<BottleneckAdapter>,
    /// After the feed-forward block (Houlsby, Pfeiffer).
    pub feed_forward: Option<BottleneckAdapter>,
    /// Beside the feed-forward block (He et al.).
    pub parallel: Option<BottleneckAdapter>,
    /// Key and value rows before every attention (prefix tuning, MAM).
    pub prefix: Option<AttentionPrefix>,
    /// UniPELT's gate `[h, 1]` on the attention's prefix, read from the attention's input.
    pub prefix_gate: Option<Linear>,
    /// Compacter's rules `[n, n, n]`, shared by every layer's PHM projections of this adapter:
    /// held by the first layer only.
    pub phm_rule: Option<Param<Tensor<3>>>,
    /// LoReFT's edits of the layer's output.
    pub reft: Option<ReftIntervention>,
}

/// What the adapters of every layer read besides their own weights, gathered once per forward
/// pass by the backbone: Compacter's shared rules, and the positions LoReFT edits.
#[derive(Debug, Clone, Default)]
pub struct AdapterContext {
    /// Rows of the batch the pass started with (a Parallel composition repeats them).
    pub batch: usize,
    /// The PHM rules by adapter index (`None` for an adapter without).
    pub phm_rules: Vec<Option<Tensor<3>>>,
    /// LoReFT's positions by adapter index (`None` for an adapter without).
    pub reft_positions: Vec<Option<ReftPositions>>,
}

impl AdapterContext {
    /// The context of a pass whose attention mask is `attention_mask` `[batch, seq]`, from the
    /// first layer's adapters (`None`: the model holds no adapters).
    pub fn new(first_layer: Option<&LayerAdapters>, attention_mask: &Tensor<2, Int>) -> Self {
        let batch = attention_mask.dims()[0];
        let Some(first) = first_layer else {
            return Self {
                batch,
                ..Self::default()
            };
        };
        Self {
            batch,
            phm_rules: first
                .loaded
                .iter()
                .map(|a| a.phm_rule.as_ref().map(Param::val))
                .collect(),
            reft_positions: first
                .loaded
                .iter()
                .map(|a| {
                    a.reft
                        .as_ref()
                        .map(|reft| ReftPositions::new(&reft.config, attention_mask))
                })
                .collect(),
        }
    }

    /// The context of the last `rows` positions only (LoReFT's positions cut to them): the new
    /// tokens of a generation step, counted on the whole sequence.
    pub fn last_positions(mut self, rows: usize) -> Self {
        let cut = |mask: Tensor<2, burn::tensor::Bool>| {
            let total = mask.dims()[1];
            mask.narrow(1, total - rows, rows)
        };
        for positions in self.reft_positions.iter_mut().flatten() {
            positions.prefix = positions.prefix.take().map(cut);
            positions.suffix = positions.suffix.take().map(cut);
        }
        self
    }

    /// Adapter `index`'s PHM rules, if it has them.
    pub fn phm_rule(&self, index: usize) -> Option<&Tensor<3>> {
        self.phm_rules.get(index).and_then(Option::as_ref)
    }
}

/// The per-layer fusion attention over the adapters after the feed-forward, as AdapterHub's
/// `BertFusion` with its default `DynamicAdapterFusionConfig`: the adapters' input asks (query,
/// the post-norm stream), each adapter's output `up_i` answers (key; value `V·up_i`), and the
/// sub-layer output is added after the mix: `h + Σ_i softmax(dropout(q·k_i)) · V·up_i`.
#[derive(Module, Debug)]
pub struct AdapterFusion {
    /// Reads the adapters' input `[h, h]`.
    pub query: Linear,
    /// Reads each adapter's output `[h, h]`.
    pub key: Linear,
    /// No bias; starts as the identity, so a fresh fusion averages the adapters' outputs.
    pub value: Linear,
    /// Dropout on the scores before the softmax (the backbone's attention dropout).
    pub score_dropout: Dropout,
    /// Weight `λ` of the value regulariser `λ·‖I - V‖²` added to the training loss (AdapterHub:
    /// 0.01; 0 turns it off).
    #[module(skip)]
    pub value_regularization: f64,
}

impl AdapterFusion {
    /// Query and key `N(0, 0.02²)` with zero biases, value the identity with `1e-6` off the
    /// diagonal (as AdapterHub initialises them); `score_dropout` the dropout rate on the scores,
    /// `value_regularization` the weight of [`AdapterFusion::regularization`].
    pub fn new(
        width: usize,
        score_dropout: f64,
        value_regularization: f64,
        device: &Device,
    ) -> Self {
        let projection = || {
            let mut layer = LinearConfig::new(width, width)
                .with_initializer(small_normal())
                .init(device);
            layer.bias = Some(Initializer::Zeros.init([width], device));
            layer
        };
        let off_diagonal = 1e-6;
        let identity: Tensor<2> = Tensor::eye(width, device);
        let value = Linear {
            weight: Param::from_tensor(identity * (1.0 - off_diagonal) + off_diagonal),
            bias: None,
        };
        Self {
            query: projection(),
            key: projection(),
            value,
            score_dropout: DropoutConfig::new(score_dropout).init(),
            value_regularization,
        }
    }

    /// Parameters per layer: `3h² + 2h`.
    pub fn num_params(width: usize) -> usize {
        3 * width * width + 2 * width
    }

    /// `query` `[b, s, h]` is what the adapters read; `outputs` what each adds (`up_i`, `[b, s,
    /// h]`). The mix of the values, without the residual.
    pub fn forward(&self, query: Tensor<3>, outputs: Vec<Tensor<3>>) -> Tensor<3> {
        let [batch, seq, width] = query.dims();
        let stacked: Tensor<4> = Tensor::stack(outputs, 2);
        let query = linear_rows(&self.query, query).unsqueeze_dim::<4>(2);
        let key = linear_rows(&self.key, stacked.clone());
        let value = linear_rows(&self.value, stacked);
        let scores = kiln_kernels::dropout(&self.score_dropout, (query * key).sum_dim(3));
        let weights = softmax(scores, 2);
        (weights * value).sum_dim(2).reshape([batch, seq, width])
    }

    /// AdapterHub's value regulariser `λ·‖I - V‖²` (squares summed over entries), which keeps
    /// `V` near the identity (`get_fusion_regularization_loss`); `None` when `λ` is 0.
    pub fn regularization(&self) -> Option<Tensor<1>> {
        if self.value_regularization == 0.0 {
            return None;
        }
        let weight = self.value.weight.val();
        let width = weight.dims()[0];
        let identity: Tensor<2> = Tensor::eye(width, &weight.device());
        Some((identity - weight).powi_scalar(2).sum() * self.value_regularization)
    }
}

/// Which of a layer's adapters run.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ActiveAdapter {
    /// None: the plain backbone.
    #[default]
    Off,
    /// The adapter at this index of [`LayerAdapters::loaded`].
    One(usize),
    /// All of them, mixed by the fusion layer.
    Fusion,
    /// Several, composed as AdapterHub's composition blocks (see [`Composition`]).
    Composed(Composition),
}

/// How several bottleneck adapters act together, as AdapterHub's composition blocks
/// (`adapters/composition.py`, computed as `methods/bottleneck.py` does for sequential adapters).
/// At a sub-layer whose output is `h` and residual `x`, an adapter `A` "pre-blocks" the state
/// (its residual becomes the current `h`; its input `close(h, x)` when it reads the closed
/// sub-layer) and adds `A(input) + residual`; the sub-layer then closes as `close(h, x)`.
#[derive(Debug, Clone, PartialEq)]
pub enum Composition {
    /// The adapter at this index of [`LayerAdapters::loaded`].
    Adapter(usize),
    /// Each child reads what the one before produced (MAD-X's language then task adapter).
    Stack(Vec<Composition>),
    /// Every child on its own copy of the batch: the batch is repeated `N` times (whole batch
    /// after whole batch) at the first sub-layer where an adapter acts, so everything below is
    /// computed once; rows `i·B..(i+1)·B` of the output are child `i`'s.
    Parallel(Vec<usize>),
    /// Child `i` on its own consecutive rows of the batch, `sizes[i]` of them.
    BatchSplit(Vec<usize>, Vec<usize>),
    /// The children's outputs weighted, `Σ_i w_i·(A_i(z) + h)`: their average for weights that
    /// sum to 1. (AdapterHub 1.3's `Average` divides this once more by the number of children,
    /// which also scales the residual `h`; weights `w_i / N` give its numbers.)
    Average(Vec<usize>, Vec<f64>),
}

impl Composition {
    /// Every adapter index the composition uses, in order.
    pub fn adapters(&self) -> Vec<usize> {
        match self {
            Self::Adapter(k) => vec![*k],
            Self::Stack(children) => children.iter().flat_map(Self::adapters).collect(),
            Self::Parallel(children)
            | Self::BatchSplit(children, _)
            | Self::Average(children, _) => children.clone(),
        }
    }

    /// Copies of the batch the composition makes (the Parallel's children; 1 without one).
    pub fn parallel_channels(&self) -> usize {
        match self {
            Self::Parallel(children) => children.len(),
            Self::Stack(children) => children
                .iter()
                .map(Self::parallel_channels)
                .max()
                .unwrap_or(1),
            _ => 1,
        }
    }
}

/// Every adapter of one layer, the optional fusion over them, and which are active.
#[derive(Module, Debug)]
pub struct LayerAdapters {
    /// Every loaded adapter, in the classifier's order.
    pub loaded: Vec<LayerAdapter>,
    /// AdapterFusion over them, if added.
    pub fusion: Option<AdapterFusion>,
    /// Which adapters run: none, one, the fusion, or a composition.
    #[module(skip)]
    pub active: ActiveAdapter,
}

/// The stream at the end of a sub-layer while adapters act on it: AdapterHub's
/// `BottleneckState` (`hidden_states`, `input_tensor`, `adapter_residual`).
#[derive(Clone)]
struct Stream {
    /// What the next adapter reads (or, after one, what it produced).
    hidden: Tensor<3>,
    /// The sub-layer's residual `x`, which closes it.
    input: Tensor<3>,
    /// What the next adapter adds its output to.
    residual: Tensor<3>,
}

impl Stream {
    /// Rows `rows` of every part.
    fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        Self {
            hidden: self.hidden.clone().slice_dim(0, rows.clone()),
            input: self.input.clone().slice_dim(0, rows.clone()),
            residual: self.residual.clone().slice_dim(0, rows),
        }
    }

    /// Every part repeated `times`, whole batch after whole batch.
    fn repeat(self, times: usize) -> Self {
        let tile = |t: Tensor<3>| Tensor::cat(vec![t; times], 0);
        Self {
            hidden: tile(self.hidden),
            input: tile(self.input),
            residual: tile(self.residual),
        }
    }

    /// The parts of `streams` joined along the batch.
    fn cat(streams: Vec<Self>) -> Self {
        let part = |get: fn(&Self) -> Tensor<3>| Tensor::cat(streams.iter().map(get).collect(), 0);
        Self {
            hidden: part(|s| s.hidden.clone()),
            input: part(|s| s.input.clone()),
            residual: part(|s| s.residual.clone()),
        }
    }
}

impl LayerAdapters {
    /// The active adapter's index and modules in this layer (none when off, fused or composed).
    pub fn active_one(&self) -> Option<(usize, &LayerAdapter)> {
        match self.active {
            ActiveAdapter::One(index) => self.loaded.get(index).map(|a| (index, a)),
            _ => None,
        }
    }

    /// The active adapter's attention prefix: key and value rows `[l, h]`.
    pub fn prefix(&self) -> Option<(Tensor<2>, Tensor<2>)> {
        let prefix = self.active_one()?.1.prefix.as_ref()?;
        Some((prefix.key.val(), prefix.value.val()))
    }

    /// What a layer's attention over `input` attends to before the real tokens: `encoded`
    /// (a prefix encoder's rows for this layer) or else the active adapter's prefix, scaled by
    /// the active adapter's gate when it has one (UniPELT).
    pub fn gated_prefix(
        adapters: Option<&Self>,
        encoded: Option<(Tensor<2>, Tensor<2>)>,
        input: &Tensor<3>,
    ) -> Option<Prefix> {
        let rows = encoded.or_else(|| adapters.and_then(Self::prefix))?;
        let gate = adapters
            .and_then(|a| a.active_one())
            .and_then(|(_, a)| a.prefix_gate.as_ref())
            .map(|gate| sequence_gate(gate, input.clone()));
        Some(Prefix {
            gate,
            ..Prefix::new(rows)
        })
    }

    /// Adapter `index`'s bottleneck at the end of `sub_layer`, if it has one there.
    fn slot(&self, index: usize, sub_layer: &SubLayer) -> Option<&BottleneckAdapter> {
        let adapter = self.loaded.get(index)?;
        match sub_layer {
            SubLayer::Attention => adapter.attention.as_ref(),
            SubLayer::FeedForward { .. } => adapter.feed_forward.as_ref(),
        }
    }

    /// Whether any adapter of this layer acts at the end of `sub_layer`.
    pub fn acts_on(&self, sub_layer: &SubLayer) -> bool {
        match &self.active {
            ActiveAdapter::Off => false,
            ActiveAdapter::Fusion => matches!(sub_layer, SubLayer::FeedForward { .. }),
            ActiveAdapter::One(_) => self.active_one().is_some_and(|(_, a)| match sub_layer {
                SubLayer::Attention => a.attention.is_some(),
                SubLayer::FeedForward { .. } => a.feed_forward.is_some() || a.parallel.is_some(),
            }),
            ActiveAdapter::Composed(composition) => composition
                .adapters()
                .into_iter()
                .any(|k| self.slot(k, sub_layer).is_some()),
        }
    }

    fn fused(&self) -> Option<&AdapterFusion> {
        self.fusion
            .as_ref()
            .filter(|_| self.active == ActiveAdapter::Fusion)
    }

    /// The end of a sub-layer with its adapters, as AdapterHub's `bottleneck_layer_forward`.
    /// `out` is the sub-layer's output `h` (after its dropout), `residual` its input `x`, and
    /// `close(a, b)` how the plain backbone joins them: `LN(a + b)` in a post-LN layer (BERT),
    /// `a + b` in a pre-LN one (GPT-2). With a sequential adapter `f` reading `z` (`h`, or
    /// `close(h, x)` when it has `original_ln_before`) and a parallel one `g` reading the
    /// feed-forward's input `u`, the result is `close(h + f(z) + s·g(u), x)`. Under fusion the
    /// adapters after the feed-forward all read `z` and `h + fusion(z, [f_i(z)])` takes the
    /// place of `h + f(z)`; compositions are [`Composition`]'s.
    pub fn close_sub_layer(
        &self,
        sub_layer: SubLayer,
        out: Tensor<3>,
        residual: Tensor<3>,
        close: impl Fn(Tensor<3>, Tensor<3>) -> Tensor<3>,
        context: &AdapterContext,
    ) -> Tensor<3> {
        if let ActiveAdapter::Composed(composition) = &self.active {
            let stream = Stream {
                hidden: out,
                input: residual.clone(),
                residual,
            };
            let stream = self.compose(composition, stream, &sub_layer, &close, context);
            return close(stream.hidden, stream.input);
        }
        let adapter_input = |reads_closed: bool| {
            if reads_closed {
                close(out.clone(), residual.clone())
            } else {
                out.clone()
            }
        };
        let active = self.active_one();
        let rule = |k: usize| context.phm_rule(k);
        let adapted = match sub_layer {
            SubLayer::Attention => match active.and_then(|(k, a)| Some((k, a.attention.as_ref()?)))
            {
                Some((k, adapter)) => {
                    out.clone() + adapter.delta(adapter_input(adapter.original_ln_before), rule(k))
                }
                None => out.clone(),
            },
            SubLayer::FeedForward { input } => match self.fused() {
                Some(fusion) => {
                    let adapters: Vec<(usize, &BottleneckAdapter)> = self
                        .loaded
                        .iter()
                        .enumerate()
                        .filter_map(|(k, a)| Some((k, a.feed_forward.as_ref()?)))
                        .collect();
                    // As AdapterHub: the last fused adapter's settings decide what they read.
                    let reads_closed = adapters.last().is_some_and(|(_, a)| a.original_ln_before);
                    let stream = adapter_input(reads_closed);
                    let outputs = adapters
                        .iter()
                        .map(|(k, a)| a.delta(stream.clone(), rule(*k)))
                        .collect();
                    out.clone() + fusion.forward(stream, outputs)
                }
                None => {
                    let mut adapted = out.clone();
                    if let Some((k, adapter)) =
                        active.and_then(|(k, a)| Some((k, a.feed_forward.as_ref()?)))
                    {
                        adapted = adapted
                            + adapter.delta(adapter_input(adapter.original_ln_before), rule(k));
                    }
                    if let Some((k, parallel)) =
                        active.and_then(|(k, a)| Some((k, a.parallel.as_ref()?)))
                    {
                        adapted = adapted + parallel.delta(input, rule(k));
                    }
                    adapted
                }
            },
        };
        close(adapted, residual)
    }

    /// `composition` over `stream` at the end of `sub_layer` (AdapterHub's `compose_stack`,
    /// `compose_parallel`, `compose_batch_split`, `compose_average`).
    fn compose(
        &self,
        composition: &Composition,
        stream: Stream,
        sub_layer: &SubLayer,
        close: &impl Fn(Tensor<3>, Tensor<3>) -> Tensor<3>,
        context: &AdapterContext,
    ) -> Stream {
        // An adapter takes the stream as it is left and adds its output to its residual.
        let single = |k: usize, stream: Stream| match self.slot(k, sub_layer) {
            Some(adapter) => Stream {
                hidden: adapter.delta(stream.hidden, context.phm_rule(k)) + stream.residual.clone(),
                ..stream
            },
            None => stream,
        };
        // Before a block (or a stacked adapter) the current output becomes the residual, and the
        // first adapter's setting decides whether it reads the closed sub-layer.
        let pre_block = |first: usize, stream: Stream| {
            let reads_closed = self
                .slot(first, sub_layer)
                .is_some_and(|a| a.original_ln_before);
            let hidden = if reads_closed {
                close(stream.hidden.clone(), stream.input.clone())
            } else {
                stream.hidden.clone()
            };
            Stream {
                residual: stream.hidden,
                hidden,
                input: stream.input,
            }
        };
        match composition {
            Composition::Adapter(k) => {
                if self.slot(*k, sub_layer).is_some() {
                    single(*k, pre_block(*k, stream))
                } else {
                    stream
                }
            }
            Composition::Stack(children) => children.iter().fold(stream, |stream, child| {
                self.compose(child, stream, sub_layer, close, context)
            }),
            Composition::Parallel(children) => {
                let channels = children.len();
                let batch = stream.hidden.dims()[0];
                // The first sub-layer the block acts on repeats the batch; later ones find it
                // repeated already.
                let (stream, rows) = if batch == context.batch {
                    (stream.repeat(channels), batch)
                } else {
                    (stream, batch / channels)
                };
                let stream = pre_block(children[0], stream);
                let parts = children
                    .iter()
                    .enumerate()
                    .map(|(i, &k)| single(k, stream.rows(i * rows..(i + 1) * rows)))
                    .collect();
                Stream::cat(parts)
            }
            Composition::BatchSplit(children, sizes) => {
                let stream = pre_block(children[0], stream);
                let mut start = 0;
                let parts = children
                    .iter()
                    .zip(sizes)
                    .map(|(&k, &size)| {
                        let part = single(k, stream.rows(start..start + size));
                        start += size;
                        part
                    })
                    .collect();
                Stream::cat(parts)
            }
            Composition::Average(children, weights) => {
                let stream = pre_block(children[0], stream);
                let hidden = children
                    .iter()
                    .zip(weights)
                    .map(|(&k, &w)| single(k, stream.clone()).hidden * w)
                    .reduce(|a, b| a + b)
                    .unwrap_or_else(|| stream.hidden.clone());
                Stream { hidden, ..stream }
            }
        }
    }

    /// Applied to an already closed sub-layer's output (M2-BERT's sequence mixer, which joins
    /// its residual inside): `y + f(y)` with the active adapter's attention-slot adapter.
    pub fn after_attention(&self, closed: Tensor<3>, context: &AdapterContext) -> Tensor<3> {
        match self
            .active_one()
            .and_then(|(k, a)| Some((k, a.attention.as_ref()?)))
        {
            Some((k, adapter)) => closed.clone() + adapter.delta(closed, context.phm_rule(k)),
            None => closed,
        }
    }

    /// The layer's output `hidden` after the active adapter's LoReFT edits, if it has them.
    pub fn after_layer(&self, hidden: Tensor<3>, context: &AdapterContext) -> Tensor<3> {
        let edits = self
            .active_one()
            .and_then(|(k, a)| Some((a.reft.as_ref()?, context.reft_positions.get(k)?.as_ref()?)));
        match edits {
            Some((reft, positions)) => reft.forward(hidden, positions),
            None => hidden,
        }
    }

    /// This layer's fusion regulariser when the fusion is active (see
    /// [`AdapterFusion::regularization`]).
    pub fn fusion_regularization(&self) -> Option<Tensor<1>> {
        self.fused().and_then(AdapterFusion::regularization)
    }
}

/// The sub-layer whose end an adapter slot sits at.
// Built and consumed once per layer call: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum SubLayer {
    /// The attention (or sequence-mixing) block.
    Attention,
    /// The feed-forward block; `input` is what it reads (and a parallel adapter beside it).
    FeedForward {
        /// The feed-forward block's input `[b, s, h]`.
        input: Tensor<3>,
    },
}

/// AdapterDrop (Rücklé et al. 2021): adapters of the lowest layers do not run. Set per training
/// step by the trainer (robust training samples it); a fixed count at inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdapterDropState {
    /// Layers without adapters in the current training step.
    pub training: usize,
    /// Layers without adapters at inference.
    pub inference: usize,
}

impl AdapterDropState {
    /// How many of the lowest layers skip their adapters for a pass on `device`: training
    /// passes run on an autodiff device, inference passes do not.
    pub fn skipped_layers(&self, device: &Device) -> usize {
        if device.is_autodiff() {
            self.training
        } else {
            self.inference
        }
    }
}
