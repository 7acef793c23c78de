//! M2-BERT (Fu et al. 2023, "Monarch Mixer: A Simple Sub-Quadratic GEMM-Based Architecture";
//! reference code HazyResearch/m2, `bert/src/bert_layers.py` and `bert/src/mm/`): BERT's
//! embeddings and pooler around layers that mix along the sequence with a gated bidirectional
//! long convolution, whose kernels a small MLP computes from positions (Hyena's implicit
//! filters), and along the width with a block-diagonal (Monarch) GLU MLP. The convolutions run
//! through the four-step DFT ([`crate::long_conv`]) in `O(L^1.5)` per channel.
//!
//! As the reference, a layer is `MLP(Mixer(x))` with no residual around the mixer (its skip
//! paths are the `D` term and the residual long convolution), and the mixer does not look at
//! the attention mask: padded positions take part in the convolutions, so the reference pads
//! every input to `max_position_embeddings` and so should a user who wants its outputs.

use std::f64::consts::PI;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::adapter::{AdapterContext, AdapterDropState, LayerAdapters, SubLayer};
use crate::backbone::OptimizerGroup;
use crate::backbone::{TunableBackbone, encoder_slots};
use crate::bert::{BertConfig, BertEmbeddings, BertPooler};
use crate::config::read_json;
use crate::long_conv::long_conv;
use crate::monarch::{BlockDiagonal, BlockDiagonalConfig};
use crate::states::{BertInput, Readout, TokenStates, first_token, mean_pool};
use crate::tunable::{TunableEmbedding, TunableLinear};
use crate::weights::{KeyMapping, KeyTable, Layout, WeightFile};

/// A HF M2-BERT `config.json`: BERT's fields and the Monarch Mixer ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct M2BertConfig {
    /// BERT's fields.
    #[serde(flatten)]
    pub bert: BertConfig,
    /// Filters run both ways (forward and reverse kernels).
    #[serde(default = "yes")]
    pub bidirectional: bool,
    /// A second long convolution straight on the mixer's input, added to its output.
    #[serde(default = "yes")]
    pub residual_long_conv: bool,
    /// Width of the positional features the filter MLP reads (odd, at least 3).
    #[serde(default = "default_emb_dim")]
    pub hyena_emb_dim: usize,
    /// Hidden width of the filter MLP.
    #[serde(default = "default_order")]
    pub hyena_filter_order: usize,
    /// Initial frequency of the filter MLP's sine activations.
    #[serde(default = "default_w")]
    pub hyena_w: f64,
    /// The factor on the filter MLP's sine frequency: `sin(w_mod · freq · x)`.
    #[serde(default = "one")]
    pub hyena_w_mod: f64,
    /// A layer norm (eps 1e-5) before the mixer, as the 80M GLUE checkpoint has.
    #[serde(default)]
    pub hyena_training_additions: bool,
    /// A gated (GLU) dimension mixer.
    #[serde(default = "yes")]
    pub use_glu_mlp: bool,
    /// Block-diagonal (Monarch) projections in the dimension mixer.
    #[serde(default = "yes")]
    pub use_monarch_mlp: bool,
    /// Blocks of those projections.
    #[serde(default = "default_blocks")]
    pub monarch_mlp_nblocks: usize,
    /// Length of the filters' position table; defaults to `max_position_embeddings`.
    #[serde(default)]
    pub long_conv_l_max: Option<usize>,
    /// Peak learning rate of the filter MLPs (the reference's `hyena_kernel_lr`).
    #[serde(default = "default_kernel_lr")]
    pub long_conv_kernel_learning_rate: f64,
    /// Peak learning rate of the filters' positional features.
    #[serde(default = "default_pos_emb_lr")]
    pub hyena_lr_pos_emb: f64,
    /// Weight decay of the filter MLPs.
    #[serde(default = "default_filter_wd")]
    pub hyena_wd: f64,
}

fn default_kernel_lr() -> f64 {
    1e-3
}
fn default_pos_emb_lr() -> f64 {
    1e-5
}
fn default_filter_wd() -> f64 {
    0.1
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn default_emb_dim() -> usize {
    5
}
fn default_order() -> usize {
    128
}
fn default_w() -> f64 {
    10.0
}
fn default_blocks() -> usize {
    4
}

impl M2BertConfig {
    /// Reads and checks a `config.json` (BERT's checks on its BERT fields).
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        let config: Self = read_json(path)?;
        config.bert.validate(path)?;
        Ok(config)
    }

    /// Length of the filters' position table.
    pub fn l_max(&self) -> usize {
        self.long_conv_l_max
            .unwrap_or(self.bert.max_position_embeddings)
    }

    fn mlp_blocks(&self) -> usize {
        if self.use_monarch_mlp {
            self.monarch_mlp_nblocks
        } else {
            1
        }
    }

    /// A randomly initialised M2-BERT of this shape, with pooler.
    pub fn init(&self, device: &Device) -> crate::Result<M2Bert> {
        let (h, i) = (self.bert.hidden_size, self.bert.intermediate_size);
        let blocks = self.mlp_blocks();
        if self.hyena_emb_dim < 3 || self.hyena_emb_dim.is_multiple_of(2) {
            return Err(crate::ModelError::InvalidInput(format!(
                "hyena_emb_dim {} must be odd and at least 3",
                self.hyena_emb_dim
            )));
        }
        let std = self.bert.initializer_range;
        let layers = (0..self.bert.num_hidden_layers)
            .map(|_| {
                let gated_width = if self.use_glu_mlp { 2 * i } else { i };
                Ok(M2Layer {
                    mixer: M2SequenceMixer {
                        norm: self
                            .hyena_training_additions
                            .then(|| LayerNormConfig::new(h).with_epsilon(1e-5).init(device)),
                        in_linear: TunableLinear::normal(h, 3 * h, std, device),
                        short_weight: conv_init([3 * h, 1, 3], device),
                        short_bias: conv_init([3 * h], device),
                        filter: self.init_filter(device),
                        residual_filter: self.residual_long_conv.then(|| self.init_filter(device)),
                        out_linear: TunableLinear::normal(h, h, std, device),
                    },
                    mlp: M2Mlp {
                        gated: BlockDiagonalConfig::new(h, gated_width, blocks)
                            .with_bias(false)
                            .init(device)?,
                        output: BlockDiagonalConfig::new(i, h, blocks).init(device)?,
                        norm: LayerNormConfig::new(h)
                            .with_epsilon(self.bert.layer_norm_eps)
                            .init(device),
                        dropout: DropoutConfig::new(self.bert.hidden_dropout_prob).init(),
                        glu: self.use_glu_mlp,
                    },
                    adapters: None,
                })
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(M2Bert {
            embeddings: self.bert.init_embeddings(device),
            layers,
            pooler: Some(BertPooler {
                dense: TunableLinear::normal(h, h, std, device),
            }),
            adapter_drop: AdapterDropState::default(),
            filter_optim: FilterOptim {
                kernel_lr: self.long_conv_kernel_learning_rate,
                pos_emb_lr: self.hyena_lr_pos_emb,
                weight_decay: self.hyena_wd,
            },
        })
    }

    fn init_filter(&self, device: &Device) -> HyenaFilter {
        let (h, order) = (self.bert.hidden_size, self.hyena_filter_order);
        HyenaFilter {
            z: Param::from_tensor(positional_features(
                self.l_max(),
                self.hyena_emb_dim,
                device,
            )),
            forward: ImplicitMlp::init(self.hyena_emb_dim, order, h, device),
            reverse: self
                .bidirectional
                .then(|| ImplicitMlp::init(self.hyena_emb_dim, order, h, device)),
            freq: Initializer::Constant {
                value: self.hyena_w,
            }
            .init([1, order], device),
            bias: Initializer::Normal {
                mean: 0.0,
                std: 1.0,
            }
            .init([h], device),
            w_mod: self.hyena_w_mod,
        }
    }
}

/// PyTorch's default for a `Conv1d` with fan-in 3: uniform in `±1/sqrt(3)`.
fn conv_init<const D: usize>(shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    let bound = 1.0 / 3f64.sqrt();
    Initializer::Uniform {
        min: -bound,
        max: bound,
    }
    .init(shape, device)
}

/// The filters' positional features `[1, l_max, e]`: `t = j / (l_max − 1)`, then `cos(f·w_j)`
/// and `−sin(f·w_j)` for `(e − 1) / 2` frequencies `f` from 1e-4 to `bands − 1`, with
/// `w_j = 2π j / l_max`.
fn positional_features(l_max: usize, emb_dim: usize, device: &Device) -> Tensor<3> {
    let bands = (emb_dim - 1) / 2;
    let freqs: Vec<f64> = (0..bands)
        .map(|b| {
            if bands == 1 {
                1e-4
            } else {
                1e-4 + (bands as f64 - 1.0 - 1e-4) * b as f64 / (bands as f64 - 1.0)
            }
        })
        .collect();
    let mut values = Vec::with_capacity(l_max * emb_dim);
    for j in 0..l_max {
        let t = if l_max > 1 {
            j as f64 / (l_max - 1) as f64
        } else {
            0.0
        };
        let w = 2.0 * PI * j as f64 / l_max as f64;
        values.push(t as f32);
        values.extend(freqs.iter().map(|f| (f * w).cos() as f32));
        values.extend(freqs.iter().map(|f| -(f * w).sin() as f32));
    }
    Tensor::from_data(TensorData::new(values, [1, l_max, emb_dim]), device)
}

/// `emb → order → order → order → width`, sine activations between (Hyena's implicit filter).
#[derive(Module, Debug)]
pub struct ImplicitMlp {
    /// The linear layers, sine activations between them.
    pub layers: Vec<Linear>,
}

impl ImplicitMlp {
    fn init(emb_dim: usize, order: usize, width: usize, device: &Device) -> Self {
        Self {
            layers: vec![
                LinearConfig::new(emb_dim, order).init(device),
                LinearConfig::new(order, order).init(device),
                LinearConfig::new(order, order).init(device),
                LinearConfig::new(order, width)
                    .with_bias(false)
                    .init(device),
            ],
        }
    }

    /// `[L, e] -> [L, width]`, with `sin(w_mod · freq · x)` after every layer but the last.
    fn forward(&self, mut x: Tensor<2>, freq: &Tensor<2>, w_mod: f64) -> Tensor<2> {
        let last = self.layers.len() - 1;
        for (k, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if k < last {
                x = (x * freq.clone() * w_mod).sin();
            }
        }
        x
    }
}

/// Hyena's implicit long filter with its exponential decay, and the `D` skip term.
#[derive(Module, Debug)]
pub struct HyenaFilter {
    /// Positional features `[1, l_max, e]` (trained, as the reference).
    pub z: Param<Tensor<3>>,
    /// The forward kernel's MLP.
    pub forward: ImplicitMlp,
    /// The reverse kernel's MLP, when bidirectional.
    pub reverse: Option<ImplicitMlp>,
    /// The sine frequency, shared by every activation of both MLPs `[1, order]`.
    pub freq: Param<Tensor<2>>,
    /// `D`: each channel's input, scaled, added to its convolution `[width]`.
    pub bias: Param<Tensor<1>>,
    /// The factor on the sine frequency: `sin(w_mod · freq · x)`.
    pub w_mod: f64,
}

impl HyenaFilter {
    /// Forward and reverse kernels `[width, len]`.
    pub fn kernels(&self, len: usize) -> (Tensor<2>, Option<Tensor<2>>) {
        let z = self.z.val();
        let [_, l_max, emb] = z.dims();
        assert!(
            len <= l_max,
            "sequence of {len} beyond the filters' {l_max} positions"
        );
        let z = z.narrow(1, 0, len).reshape([len, emb]);
        let freq = self.freq.val();
        let kernel_forward = self.forward.forward(z.clone(), &freq, self.w_mod);
        let width = kernel_forward.dims()[1];
        let decay = decay(len, l_max, width, &z.device());
        let kernel = |k: Tensor<2>| (k * decay.clone()).transpose();
        let reverse = self
            .reverse
            .as_ref()
            .map(|mlp| kernel(mlp.forward(z, &freq, self.w_mod)));
        (kernel(kernel_forward), reverse)
    }

    /// `[batch, len, width]` convolved channel by channel, plus `D · x`.
    pub fn convolve(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, len, width] = x.dims();
        let (forward, reverse) = self.kernels(len);
        let rows = |t: Tensor<3>| t.reshape([batch * width, len]);
        let per_row = |k: Tensor<2>| rows(k.unsqueeze_dim::<3>(0).expand([batch, width, len]));
        let channels = x.swap_dims(1, 2); // [batch, width, len]
        let y = long_conv(
            rows(channels.clone()),
            per_row(forward),
            reverse.map(per_row),
        )
        .reshape([batch, width, len]);
        let skip = channels * self.bias.val().reshape([1, width, 1]);
        (y + skip).swap_dims(1, 2)
    }
}

/// `exp(−t·|δ_c|)` `[len, width]`: `t` from 0 to 1 over the filters' `l_max` positions, `δ`
/// from ln(0.01)/1.5 (slow) to ln(0.01)/0.3 (fast) across channels.
fn decay(len: usize, l_max: usize, width: usize, device: &Device) -> Tensor<2> {
    let (slow, fast) = (0.01f64.ln() / 1.5, 0.01f64.ln() / 0.3);
    let mut values = Vec::with_capacity(len * width);
    for j in 0..len {
        let t = if l_max > 1 {
            j as f64 / (l_max - 1) as f64
        } else {
            0.0
        };
        for c in 0..width {
            let delta = if width > 1 {
                slow + (fast - slow) * c as f64 / (width - 1) as f64
            } else {
                slow
            };
            values.push((-t * delta.abs()).exp() as f32);
        }
    }
    Tensor::from_data(TensorData::new(values, [len, width]), device)
}

/// The sequence mixer: project to three streams, a short causal depthwise convolution, then
/// `x2 ⊙ (longconv(x1 ⊙ v) + D·(x1 ⊙ v))`, plus a residual long convolution of the input.
#[derive(Module, Debug)]
pub struct M2SequenceMixer {
    /// Layer norm before the mixer, if the checkpoint has one.
    pub norm: Option<LayerNorm>,
    /// Projection to the three streams.
    pub in_linear: TunableLinear,
    /// Depthwise kernel `[3·width, 1, 3]`, as the reference's `Conv1d` weight.
    pub short_weight: Param<Tensor<3>>,
    /// Bias of the short convolution.
    pub short_bias: Param<Tensor<1>>,
    /// The long-convolution filter.
    pub filter: HyenaFilter,
    /// The residual long convolution's filter.
    pub residual_filter: Option<HyenaFilter>,
    /// Projection back to the width.
    pub out_linear: TunableLinear,
}

impl M2SequenceMixer {
    /// The mixer over `x` `[batch, seq, h]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = match &self.norm {
            Some(norm) => norm.forward(x),
            None => x,
        };
        let [batch, len, width] = x.dims();
        let projected = self.in_linear.forward(x.clone());
        let streams = self.short_conv(projected);
        let x1 = streams.clone().narrow(2, 0, width);
        let x2 = streams.clone().narrow(2, width, width);
        let v = streams.narrow(2, 2 * width, width) * x1;
        let mut y = self.filter.convolve(v) * x2;
        if let Some(residual) = &self.residual_filter {
            y = y + residual.convolve(x);
        }
        debug_assert_eq!(y.dims(), [batch, len, width]);
        self.out_linear.forward(y)
    }

    /// `c[n] = b + w₀·p[n−2] + w₁·p[n−1] + w₂·p[n]` per channel, zeros before the start.
    fn short_conv(&self, p: Tensor<3>) -> Tensor<3> {
        let [batch, len, channels] = p.dims();
        let taps = self.short_weight.val().reshape([channels, 3]);
        let tap = |k: usize| taps.clone().narrow(1, k, 1).reshape([1, 1, channels]);
        let shifted = |s: usize| {
            if s >= len {
                return p.zeros_like();
            }
            Tensor::cat(
                vec![
                    Tensor::zeros([batch, s, channels], &p.device()),
                    p.clone().narrow(1, 0, len - s),
                ],
                1,
            )
        };
        p.clone() * tap(2)
            + shifted(1) * tap(1)
            + shifted(2) * tap(0)
            + self.short_bias.val().reshape([1, 1, channels])
    }
}

/// The dimension mixer: block-diagonal GLU (`gelu(a) ⊙ b` of the two halves), block-diagonal
/// output, then the residual and a layer norm.
#[derive(Module, Debug)]
pub struct M2Mlp {
    /// The gated up-projection.
    pub gated: BlockDiagonal,
    /// The down-projection.
    pub output: BlockDiagonal,
    /// Layer norm after the residual.
    pub norm: LayerNorm,
    /// Dropout on the output.
    pub dropout: Dropout,
    /// Gated (GLU) rather than plain GELU.
    pub glu: bool,
}

impl M2Mlp {
    /// The dimension mixer over `z`, with the layer's adapters.
    pub fn forward(
        &self,
        z: Tensor<3>,
        adapters: Option<&LayerAdapters>,
        context: &AdapterContext,
    ) -> Tensor<3> {
        let g = self.gated.forward(z.clone());
        let inner = if self.glu {
            let half = g.dims()[2] / 2;
            gelu(g.clone().narrow(2, 0, half)) * g.narrow(2, half, half)
        } else {
            gelu(g)
        };
        let out = self
            .output
            .forward(kiln_kernels::dropout(&self.dropout, inner));
        match adapters {
            Some(adapters) => {
                let feed_forward = SubLayer::FeedForward { input: z.clone() };
                let close = |a: Tensor<3>, b: Tensor<3>| self.norm.forward(a + b);
                adapters.close_sub_layer(feed_forward, out, z, close, context)
            }
            None => self.norm.forward(out + z),
        }
    }
}

/// One M2-BERT layer: sequence mixer, then dimension mixer.
#[derive(Module, Debug)]
pub struct M2Layer {
    /// The sequence mixer.
    pub mixer: M2SequenceMixer,
    /// The dimension mixer.
    pub mlp: M2Mlp,
    /// Adapter slots (see [`crate::adapter`]): after the mixer, and around the MLP as BERT's
    /// feed-forward; `None` for a plain layer.
    pub adapters: Option<LayerAdapters>,
}

impl M2Layer {
    /// With `adapters_on` false the layer runs as the plain backbone (AdapterDrop).
    pub fn forward(&self, x: Tensor<3>, adapters_on: bool, context: &AdapterContext) -> Tensor<3> {
        let adapters = self.adapters.as_ref().filter(|_| adapters_on);
        let mut mixed = self.mixer.forward(x);
        if let Some(adapters) = adapters {
            mixed = adapters.after_attention(mixed, context);
        }
        let out = self.mlp.forward(mixed, adapters, context);
        match adapters {
            Some(adapters) => adapters.after_layer(out, context),
            None => out,
        }
    }
}

/// M2-BERT (Monarch Mixer BERT) with kiln's tuning slots.
#[derive(Module, Debug)]
pub struct M2Bert {
    /// BERT's embeddings.
    pub embeddings: BertEmbeddings,
    /// The layers, bottom to top.
    pub layers: Vec<M2Layer>,
    /// BERT's pooler, if the checkpoint has one.
    pub pooler: Option<BertPooler>,
    /// AdapterDrop: how many of the lowest layers run without adapters.
    #[module(skip)]
    pub adapter_drop: AdapterDropState,
    /// How the reference optimises the long-convolution filters.
    #[module(skip)]
    pub filter_optim: FilterOptim,
}

/// The M2 reference's optimiser settings of the filters (`hyena_utils.py` registers them on the
/// parameters, `create_param_groups.py` makes the groups): the forward filter MLP and the sine
/// frequencies at `kernel_lr` with `weight_decay`; the positional features `z` at `pos_emb_lr`
/// without decay; everything else (the reverse MLP included, which the reference leaves
/// unregistered) at the run's rate and decay.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FilterOptim {
    /// Peak learning rate of the filter MLPs.
    pub kernel_lr: f64,
    /// Peak learning rate of the positional features.
    pub pos_emb_lr: f64,
    /// Weight decay of the filter MLPs.
    pub weight_decay: f64,
}

impl M2Bert {
    /// Last hidden state `[batch, seq, hidden]`. The mixers read every position; the attention
    /// mask only tells LoReFT which tokens are real.
    pub fn forward(&self, input: BertInput) -> Tensor<3> {
        let mut hidden = self
            .embeddings
            .forward(input.input_ids, input.token_type_ids);
        let skipped = self.adapter_drop.skipped_layers(&hidden.device());
        let first = self.layers.first().and_then(|l| l.adapters.as_ref());
        let context = AdapterContext::new(first, &input.attention_mask);
        for (i, layer) in self.layers.iter().enumerate() {
            hidden = layer.forward(hidden, i >= skipped, &context);
        }
        hidden
    }

    /// Width `h` of the token states.
    pub fn hidden_size(&self) -> usize {
        self.embeddings.word.weight.shape().dims::<2>()[1]
    }

    /// Loads a M2-BERT directory (the reference's `config.json` and its state dict, as
    /// safetensors or `pytorch_model.bin`, with or without the `bert.` / `model.bert.` prefix).
    /// Buffers the reference keeps in its checkpoints (`pos_emb.t`, `modulation.deltas`,
    /// `position_ids`, FlashFFTConv's) are recomputed or unused, and heads are skipped.
    pub fn from_pretrained(dir: &Path, device: &Device) -> crate::Result<(Self, M2BertConfig)> {
        let config = M2BertConfig::from_file(&dir.join("config.json"))?;
        let mut weights = WeightFile::from_dir(dir)?;
        weights.strip_prefix("model.");
        weights.strip_prefix("bert.");
        if !config.use_monarch_mlp {
            // A dense MLP is the one-block case: `[out, in]` becomes `[1, out, in]`.
            for i in 0..config.bert.num_hidden_layers {
                for name in ["gated_layers", "wo"] {
                    weights.add_leading_axis(&format!("encoder.layer.{i}.mlp.{name}.weight"));
                }
            }
        }
        let mut model = config.init(device)?;
        if !weights.contains("pooler.dense.weight") {
            model.pooler = None;
        }
        let model = weights.load_into(model, m2_keys())?;
        Ok((model, config))
    }

    /// Every projection with its parameter path (`layers.3.mixer.in_linear`, `pooler.dense`).
    pub fn projections_mut(&mut self) -> Vec<(String, &mut TunableLinear)> {
        let mut found = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let mixer = &mut layer.mixer;
            found.push((format!("layers.{i}.mixer.in_linear"), &mut mixer.in_linear));
            found.push((
                format!("layers.{i}.mixer.out_linear"),
                &mut mixer.out_linear,
            ));
        }
        if let Some(pooler) = self.pooler.as_mut() {
            found.push(("pooler.dense".to_string(), &mut pooler.dense));
        }
        found
    }
}

/// kiln parameter path → M2-BERT state-dict name (after the `bert.` prefix).
pub fn m2_keys() -> KeyTable {
    static TABLE: OnceLock<Vec<KeyMapping>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut rows: Vec<(String, String, Layout)> = Vec::new();
        let mut row = |kiln: &str, hf: &str, layout| rows.push((kiln.into(), hf.into(), layout));
        for (kiln, hf) in [
            ("word", "word_embeddings"),
            ("position", "position_embeddings"),
            ("token_type", "token_type_embeddings"),
        ] {
            row(
                &format!("embeddings.{kiln}.weight"),
                &format!("embeddings.{hf}.weight"),
                Layout::Same,
            );
        }
        row(
            "embeddings.norm.gamma",
            "embeddings.LayerNorm.weight",
            Layout::Same,
        );
        row(
            "embeddings.norm.beta",
            "embeddings.LayerNorm.bias",
            Layout::Same,
        );
        row(
            "pooler.dense.weight",
            "pooler.dense.weight",
            Layout::Transposed,
        );
        row("pooler.dense.bias", "pooler.dense.bias", Layout::Same);
        let layer = |part: &str| format!("layers.{{i}}.{part}");
        let hf_layer = |part: &str| format!("encoder.layer.{{i}}.{part}");
        for (kiln, hf) in [
            ("mixer.norm", "attention.layernorm"),
            ("mlp.norm", "mlp.layernorm"),
        ] {
            row(
                &layer(&format!("{kiln}.gamma")),
                &hf_layer(&format!("{hf}.weight")),
                Layout::Same,
            );
            row(
                &layer(&format!("{kiln}.beta")),
                &hf_layer(&format!("{hf}.bias")),
                Layout::Same,
            );
        }
        for (kiln, hf) in [("in_linear", "in_linear"), ("out_linear", "out_linear")] {
            row(
                &layer(&format!("mixer.{kiln}.weight")),
                &hf_layer(&format!("attention.{hf}.weight")),
                Layout::Transposed,
            );
            row(
                &layer(&format!("mixer.{kiln}.bias")),
                &hf_layer(&format!("attention.{hf}.bias")),
                Layout::Same,
            );
        }
        row(
            &layer("mixer.short_weight"),
            &hf_layer("attention.short_filter.weight"),
            Layout::Same,
        );
        row(
            &layer("mixer.short_bias"),
            &hf_layer("attention.short_filter.bias"),
            Layout::Same,
        );
        for (kiln, hf) in [("filter", "filter_fn"), ("residual_filter", "filter_fn2")] {
            let k = |part: &str| layer(&format!("mixer.{kiln}.{part}"));
            let h = |part: &str| hf_layer(&format!("attention.{hf}.{part}"));
            row(&k("z"), &h("pos_emb.z"), Layout::Same);
            row(&k("freq"), &h("implicit_filter.1.freq"), Layout::Same);
            row(&k("bias"), &h("bias"), Layout::Same);
            for (mlp, hf_mlp) in [
                ("forward", "implicit_filter"),
                ("reverse", "implicit_filter_rev"),
            ] {
                // The reference's Sequential interleaves Sin modules: Linear k sits at 2k.
                for index in 0..4 {
                    let at = |p: &str| k(&format!("{mlp}.layers.{index}.{p}"));
                    let hf_at = |p: &str| h(&format!("{hf_mlp}.{}.{p}", 2 * index));
                    row(&at("weight"), &hf_at("weight"), Layout::Transposed);
                    if index < 3 {
                        row(&at("bias"), &hf_at("bias"), Layout::Same);
                    }
                }
            }
        }
        row(
            &layer("mlp.gated.weight"),
            &hf_layer("mlp.gated_layers.weight"),
            Layout::Same,
        );
        row(
            &layer("mlp.output.weight"),
            &hf_layer("mlp.wo.weight"),
            Layout::Same,
        );
        row(
            &layer("mlp.output.bias"),
            &hf_layer("mlp.wo.bias"),
            Layout::Same,
        );
        rows.into_iter()
            .map(|(kiln, hf, layout)| KeyMapping {
                kiln: kiln.leak(),
                hf: hf.leak(),
                layout,
            })
            .collect()
    })
}

impl TunableBackbone for M2Bert {
    fn name(&self) -> &'static str {
        "m2"
    }

    fn optimizer_groups(&self) -> Vec<OptimizerGroup> {
        let filters = r"^m2\.layers\.\d+\.mixer\.(filter|residual_filter)\.";
        let optim = self.filter_optim;
        vec![
            OptimizerGroup {
                pattern: format!(r"{filters}(forward\..*|freq)$"),
                lr: optim.kernel_lr,
                weight_decay: optim.weight_decay,
            },
            OptimizerGroup {
                pattern: format!("{filters}z$"),
                lr: optim.pos_emb_lr,
                weight_decay: 0.0,
            },
        ]
    }

    fn hidden_size(&self) -> usize {
        M2Bert::hidden_size(self)
    }

    encoder_slots!();

    // The mixer's projections, the places attention's would be.
    fn default_lora_targets(&self) -> Vec<String> {
        vec!["in_linear".into(), "out_linear".into()]
    }

    fn default_ia3_targets(&self) -> (Vec<String>, Vec<String>) {
        // No attention: the mixer's input projection (its value and gate branches) on its
        // output, and its output projection on its input.
        (
            vec!["in_linear".into(), "out_linear".into()],
            vec!["out_linear".into()],
        )
    }

    fn attention_patterns(&self, i: usize) -> Vec<String> {
        vec![format!("layers.{i}.mixer.*")]
    }

    fn feed_forward_patterns(&self, i: usize) -> Vec<String> {
        vec![format!("layers.{i}.mlp.*")]
    }

    fn projections_mut(&mut self) -> Vec<(String, &mut TunableLinear)> {
        M2Bert::projections_mut(self)
    }

    fn has_attention(&self) -> bool {
        false
    }

    // The mixer reads padded positions: states depend on the batch they were computed in.
    fn can_be_cut(&self) -> bool {
        false
    }

    fn encode(&self, _input: BertInput, _layers: Range<usize>) -> Option<TokenStates> {
        None
    }

    fn read_out_above(&self, _states: TokenStates, _layer: usize, _readout: Readout) -> Tensor<2> {
        unreachable!("M2-BERT is never cut: encode gives no states")
    }

    fn read_out(&self, input: BertInput, readout: Readout) -> Tensor<2> {
        let attention_mask = input.attention_mask.clone();
        let hidden = self.forward(input);
        match (readout, &self.pooler) {
            (Readout::Pooler, Some(pooler)) => pooler.forward(hidden),
            (Readout::Mean, _) => mean_pool(hidden, attention_mask),
            (_, _) => first_token(hidden),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceChoice;
    use burn::tensor::Int;

    fn tiny(width: usize, l_max: usize) -> M2BertConfig {
        let mut config: M2BertConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 16, "hidden_size": width, "num_hidden_layers": 2,
            "num_attention_heads": 1, "intermediate_size": 2 * width,
            "max_position_embeddings": l_max, "hyena_filter_order": 8,
            "monarch_mlp_nblocks": 2, "hyena_training_additions": true
        }))
        .expect("config");
        config.bert.hidden_dropout_prob = 0.0;
        config
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("floats")
    }

    #[test]
    fn filter_convolution_is_the_direct_sum_plus_the_skip() {
        let device = DeviceChoice::Cpu.device().expect("cpu");
        let (width, len, batch) = (4, 7, 2);
        let config = tiny(width, 9);
        let filter = config.init_filter(&device);
        let x: Vec<f32> = (0..batch * len * width)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let input =
            Tensor::<3>::from_data(TensorData::new(x.clone(), [batch, len, width]), &device);
        let got = values(filter.convolve(input));
        let (kf, kr) = filter.kernels(len);
        let (kf, kr) = (values(kf), values(kr.expect("bidirectional")));
        let d = values(filter.bias.val());
        let at = |b: usize, n: usize, c: usize| x[(b * len + n) * width + c];
        for b in 0..batch {
            for n in 0..len {
                for c in 0..width {
                    let forward: f32 = (0..=n).map(|m| at(b, m, c) * kf[c * len + n - m]).sum();
                    let backward: f32 = (1..len - n)
                        .map(|s| at(b, n + s, c) * kr[c * len + s - 1])
                        .sum();
                    let want = forward + backward + d[c] * at(b, n, c);
                    let have = got[(b * len + n) * width + c];
                    assert!((want - have).abs() < 1e-3, "{want} vs {have}");
                }
            }
        }
    }

    #[test]
    fn positional_features_and_decay_follow_the_reference() {
        let device = DeviceChoice::Cpu.device().expect("cpu");
        let z = values(positional_features(4, 5, &device));
        // j = 0: t 0, cos 1 1, −sin 0 0; j = 1: t 1/3, w = π/2, f = (1e-4, 1).
        assert_eq!(&z[..5], &[0.0, 1.0, 1.0, 0.0, 0.0]);
        assert!((z[5] - 1.0 / 3.0).abs() < 1e-6);
        assert!((z[7] - 0.0).abs() < 1e-6 && (z[9] + 1.0).abs() < 1e-6);
        let decay = values(decay(4, 4, 2, &device));
        assert_eq!(&decay[..2], &[1.0, 1.0]);
        // The last position, t = 1: the slow channel keeps 0.01^(1/1.5), the fast 0.01^(1/0.3).
        assert!((decay[6] - 0.01f32.powf(1.0 / 1.5)).abs() < 1e-6);
        assert!((decay[7] - 0.01f32.powf(1.0 / 0.3)).abs() < 1e-6);
    }

    #[test]
    fn m2_bert_runs_and_counts_its_parameters() {
        let device = DeviceChoice::Cpu.device().expect("cpu");
        let (width, l_max) = (8, 16);
        let config = tiny(width, l_max);
        let model = config.init(&device).expect("model");
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new((0..2 * l_max as i64).map(|i| i % 16).collect(), [2, l_max]),
            &device,
        );
        let hidden = model.forward(BertInput {
            input_ids: ids.clone(),
            attention_mask: ids.ones_like(),
            token_type_ids: ids.zeros_like(),
        });
        assert_eq!(hidden.dims(), [2, l_max, width]);
        assert!(values(hidden).iter().all(|v| v.is_finite()));
        // Per layer, as the reference's modules (h 8, I 16, order 8, e 5, 2 blocks):
        let (h, i, o, e, nb) = (width, 2 * width, 8, 5, 2);
        let mlp = (e * o + o) + 2 * (o * o + o) + o * h;
        let filter = 2 * mlp + o + h + l_max * e;
        let mixer = 2 * h + (3 * h * h + 3 * h) + 3 * h * 3 + 3 * h + 2 * filter + (h * h + h);
        let dims = (h * 2 * i) / nb + (i * h) / nb + h + 2 * h;
        assert_eq!(model.layers[0].num_params(), mixer + dims);
    }
}
