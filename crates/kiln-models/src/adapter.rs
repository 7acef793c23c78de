//! The adapter slots every transformer layer has: bottleneck adapters after attention and after
//! the feed-forward (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP";
//! Pfeiffer et al. 2021), a scaled adapter beside the feed-forward (He et al. 2022, "Towards a
//! Unified View of Parameter-Efficient Transfer Learning"), key/value prefixes for attention
//! (Li and Liang 2021), and AdapterFusion over several adapters (Pfeiffer et al. 2021,
//! "AdapterFusion: Non-Destructive Task Composition for Transfer Learning").
//!
//! A layer holds any number of adapters ([`LayerAdapters::loaded`]); at most one is active at a
//! time, or all of them through the fusion attention. Which one is active is a plain field, so
//! switching costs nothing and never touches the base weights.

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::tunable::{linear_rows, peft_kaiming_uniform};

/// How a fresh adapter's weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterInit {
    /// Both projections `N(0, 0.01²)`, zero biases: the adapter starts as almost the identity
    /// (Houlsby et al. 2019).
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
        let bottleneck = |on: bool| on.then(|| self.init_bottleneck(width, device));
        LayerAdapter {
            attention: bottleneck(self.after_attention),
            feed_forward: bottleneck(self.after_feed_forward),
            parallel: bottleneck(self.parallel),
            prefix: (self.prefix_len > 0).then(|| AttentionPrefix {
                // Small, so a fresh prefix takes little attention and adds almost nothing.
                key: prefix_init().init([self.prefix_len, width], device),
                value: prefix_init().init([self.prefix_len, width], device),
            }),
        }
    }

    fn init_bottleneck(&self, width: usize, device: &Device) -> BottleneckAdapter {
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
        }
    }
}

fn small_normal() -> Initializer {
    Initializer::Normal {
        mean: 0.0,
        std: 1e-2,
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

    /// The adapter with its own skip connection: `x + delta(x)`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        x.clone() + self.delta(x)
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

/// The per-layer fusion attention: the feed-forward output asks (query), each adapter's output
/// answers (key, value), and the softmax over adapters mixes the values.
#[derive(Module, Debug)]
pub struct AdapterFusion {
    /// Reads the feed-forward output `[h, h]`.
    pub query: Linear,
    /// Reads each adapter's output `[h, h]`.
    pub key: Linear,
    /// No bias; starts as the identity, so a fresh fusion averages the adapters' outputs.
    pub value: Linear,
}

impl AdapterFusion {
    /// Query and key `N(0, 0.02²)`, value the identity (as AdapterHub initialises them).
    pub fn new(width: usize, device: &Device) -> Self {
        let projection = || {
            LinearConfig::new(width, width)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 2e-2,
                })
                .init(device)
        };
        let mut query = projection();
        let mut key = projection();
        query.bias = Some(Initializer::Zeros.init([width], device));
        key.bias = Some(Initializer::Zeros.init([width], device));
        let value = Linear {
            weight: Param::from_tensor(Tensor::eye(width, device)),
            bias: None,
        };
        Self { query, key, value }
    }

    /// Parameters per layer: `3h² + 2h`.
    pub fn num_params(width: usize) -> usize {
        3 * width * width + 2 * width
    }

    /// `stream` `[b, s, h]` is what the adapters read; `outputs` their outputs, each `[b, s, h]`.
    pub fn forward(&self, stream: Tensor<3>, outputs: Vec<Tensor<3>>) -> Tensor<3> {
        let [batch, seq, width] = stream.dims();
        let stacked: Tensor<4> = Tensor::stack(outputs, 2);
        let query = linear_rows(&self.query, stream).unsqueeze_dim::<4>(2);
        let key = linear_rows(&self.key, stacked.clone());
        let value = linear_rows(&self.value, stacked);
        let weights = softmax((query * key).sum_dim(3), 2);
        (weights * value).sum_dim(2).reshape([batch, seq, width])
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

    /// Applied to the attention block's output, before its residual is added.
    pub fn after_attention(&self, attended: Tensor<3>) -> Tensor<3> {
        match self.active_one().and_then(|a| a.attention.as_ref()) {
            Some(adapter) => adapter.forward(attended),
            None => attended,
        }
    }

    /// Applied to the feed-forward block's output, before its residual is added.
    pub fn after_feed_forward(&self, out: Tensor<3>) -> Tensor<3> {
        if self.active == ActiveAdapter::Fusion
            && let Some(fusion) = &self.fusion
        {
            let outputs = self
                .loaded
                .iter()
                .filter_map(|a| a.feed_forward.as_ref())
                .map(|adapter| adapter.forward(out.clone()))
                .collect();
            return fusion.forward(out, outputs);
        }
        match self.active_one().and_then(|a| a.feed_forward.as_ref()) {
            Some(adapter) => adapter.forward(out),
            None => out,
        }
    }

    /// What the parallel adapter adds beside the feed-forward, from the feed-forward's input.
    pub fn beside_feed_forward(&self, input: Tensor<3>) -> Option<Tensor<3>> {
        let adapter = self.active_one()?.parallel.as_ref()?;
        Some(adapter.delta(input))
    }

    /// The feed-forward block's output `out` (for `input`) with both feed-forward slots applied:
    /// the adapter (or fusion) after it and the parallel adapter beside it.
    pub fn around_feed_forward(&self, input: Tensor<3>, out: Tensor<3>) -> Tensor<3> {
        let out = self.after_feed_forward(out);
        match self.beside_feed_forward(input) {
            Some(beside) => out + beside,
            None => out,
        }
    }
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
