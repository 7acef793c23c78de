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
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::low_rank::peft_kaiming_uniform;
use crate::tunable::linear_rows;

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
        }
    }

    /// Parameters per layer on a model of width `h`: `(2hm + m + h)` per bottleneck adapter and
    /// `2·l·h` for the prefix.
    pub fn params_per_layer(&self, width: usize) -> usize {
        self.bottlenecks() * (2 * width * self.bottleneck + self.bottleneck + width)
            + 2 * self.prefix_len * width
    }

    /// Bottleneck adapters per layer (after attention, after and beside the feed-forward).
    pub fn bottlenecks(&self) -> usize {
        [self.after_attention, self.after_feed_forward, self.parallel]
            .iter()
            .filter(|&&on| on)
            .count()
    }

    /// One layer's share of this adapter, randomly initialised.
    pub fn init_layer(&self, width: usize, device: &Device) -> LayerAdapter {
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
        let linear = |d_in, d_out, init: Initializer| {
            let mut layer = LinearConfig::new(d_in, d_out)
                .with_initializer(init)
                .init(device);
            layer.bias = Some(Initializer::Zeros.init([d_out], device));
            layer
        };
        BottleneckAdapter {
            down: linear(width, m, down),
            up: linear(m, width, up),
            activation: self.activation,
            scale: self.scale,
            original_ln_before,
        }
    }
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

/// `x ↦ scale · up(f(down(x)))`: what a bottleneck adapter adds to the stream it sits on.
#[derive(Module, Debug)]
pub struct BottleneckAdapter {
    /// `[h, m]`
    pub down: Linear,
    /// `[m, h]`
    pub up: Linear,
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
    /// `scale · up(f(down(x)))`, what the adapter adds to its input.
    pub fn delta(&self, x: Tensor<3>) -> Tensor<3> {
        let down = linear_rows(&self.down, x);
        let out = linear_rows(&self.up, self.activation.forward(down));
        if self.scale == 1.0 {
            out
        } else {
            out * self.scale
        }
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActiveAdapter {
    /// None: the plain backbone.
    #[default]
    Off,
    /// The adapter at this index of [`LayerAdapters::loaded`].
    One(usize),
    /// All of them, mixed by the fusion layer.
    Fusion,
}

/// Every adapter of one layer, the optional fusion over them, and which are active.
#[derive(Module, Debug)]
pub struct LayerAdapters {
    /// Every loaded adapter, in the classifier's order.
    pub loaded: Vec<LayerAdapter>,
    /// AdapterFusion over them, if added.
    pub fusion: Option<AdapterFusion>,
    /// Which adapters run: none, one, or the fusion.
    #[module(skip)]
    pub active: ActiveAdapter,
}

impl LayerAdapters {
    /// The active adapter's modules in this layer (none when off or fused).
    pub fn active_one(&self) -> Option<&LayerAdapter> {
        match self.active {
            ActiveAdapter::One(index) => self.loaded.get(index),
            _ => None,
        }
    }

    /// The active adapter's attention prefix: key and value rows `[l, h]`.
    pub fn prefix(&self) -> Option<(Tensor<2>, Tensor<2>)> {
        let prefix = self.active_one()?.prefix.as_ref()?;
        Some((prefix.key.val(), prefix.value.val()))
    }

    /// Whether any adapter of this layer acts at the end of `sub_layer`.
    pub fn acts_on(&self, sub_layer: &SubLayer) -> bool {
        if matches!(sub_layer, SubLayer::FeedForward { .. }) && self.fused().is_some() {
            return true;
        }
        self.active_one().is_some_and(|a| match sub_layer {
            SubLayer::Attention => a.attention.is_some(),
            SubLayer::FeedForward { .. } => a.feed_forward.is_some() || a.parallel.is_some(),
        })
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
    /// place of `h + f(z)`.
    pub fn close_sub_layer(
        &self,
        sub_layer: SubLayer,
        out: Tensor<3>,
        residual: Tensor<3>,
        close: impl Fn(Tensor<3>, Tensor<3>) -> Tensor<3>,
    ) -> Tensor<3> {
        let adapter_input = |reads_closed: bool| {
            if reads_closed {
                close(out.clone(), residual.clone())
            } else {
                out.clone()
            }
        };
        let active = self.active_one();
        let adapted = match sub_layer {
            SubLayer::Attention => match active.and_then(|a| a.attention.as_ref()) {
                Some(adapter) => {
                    out.clone() + adapter.delta(adapter_input(adapter.original_ln_before))
                }
                None => out.clone(),
            },
            SubLayer::FeedForward { input } => match self.fused() {
                Some(fusion) => {
                    let adapters: Vec<&BottleneckAdapter> = self
                        .loaded
                        .iter()
                        .filter_map(|a| a.feed_forward.as_ref())
                        .collect();
                    // As AdapterHub: the last fused adapter's settings decide what they read.
                    let reads_closed = adapters.last().is_some_and(|a| a.original_ln_before);
                    let stream = adapter_input(reads_closed);
                    let outputs = adapters.iter().map(|a| a.delta(stream.clone())).collect();
                    out.clone() + fusion.forward(stream, outputs)
                }
                None => {
                    let mut adapted = out.clone();
                    if let Some(adapter) = active.and_then(|a| a.feed_forward.as_ref()) {
                        adapted =
                            adapted + adapter.delta(adapter_input(adapter.original_ln_before));
                    }
                    if let Some(parallel) = active.and_then(|a| a.parallel.as_ref()) {
                        adapted = adapted + parallel.delta(input);
                    }
                    adapted
                }
            },
        };
        close(adapted, residual)
    }

    /// Applied to an already closed sub-layer's output (M2-BERT's sequence mixer, which joins
    /// its residual inside): `y + f(y)` with the active adapter's attention-slot adapter.
    pub fn after_attention(&self, closed: Tensor<3>) -> Tensor<3> {
        match self.active_one().and_then(|a| a.attention.as_ref()) {
            Some(adapter) => closed.clone() + adapter.delta(closed),
            None => closed,
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
