//! The projection every backbone uses: a base weight and bias, plus a slot for a low-rank delta
//! (LoRA, Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models").
//!
//! With the slot filled the layer computes `x·W + b + dropout(x)·A·B·(alpha/r)`. `A` is
//! `[d_in, r]` and starts random, `B` is `[r, d_out]` and starts at zero, so a fresh delta leaves
//! the model's outputs unchanged. Merging folds `A·B·(alpha/r)` into `W` for inference at the
//! base model's cost; unmerging subtracts it again. Trainable parameters per filled slot:
//! `r·(d_in + d_out)`.

use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig,
};
use burn::tensor::{Device, Tensor};

/// A linear projection with an optional low-rank delta. Parameter paths are `weight`, `bias`
/// (as Burn's `Linear`, so checkpoints load unchanged) and `lora.a`, `lora.b`; deltas served
/// by name beside the base are `served.{k}.a`, `served.{k}.b`.
#[derive(Module, Debug)]
pub struct TunableLinear {
    /// `[d_in, d_out]`: Burn's layout, the transpose of PyTorch's `nn.Linear`.
    pub weight: Param<Tensor<2>>,
    /// Bias `[d_out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// The trained LoRA delta, if any.
    pub lora: Option<LowRankDelta>,
    /// Named LoRA adapters served on one base (index `k` is the classifier's
    /// `lora_adapters[k]`); `None` where adapter `k` leaves this projection alone.
    pub served: Vec<Option<LowRankDelta>>,
    /// Which served delta applies, to the whole batch or per example.
    #[module(skip)]
    pub routing: LoraRouting,
}

/// Which served LoRA adapter a forward pass uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LoraRouting {
    /// None: the base (with its trained `lora` slot, if any).
    #[default]
    Off,
    /// Adapter `k` for every example.
    All(usize),
    /// Adapter per example of the batch (`None`: the base for that example).
    PerExample(Vec<Option<usize>>),
}

/// peft's `kaiming_uniform_(A, a=sqrt(5))`, uniform in ±1/sqrt(fan_in): torch's gain for
/// `a = sqrt(5)` is sqrt(2 / (1 + 5)) = 1/sqrt(3), and Burn's bound is gain * sqrt(3 / fan_in).
pub fn peft_kaiming_uniform() -> Initializer {
    Initializer::KaimingUniform {
        gain: 1.0 / 3f64.sqrt(),
        fan_out_only: false,
    }
}

/// Settings of one LoRA delta.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LowRankConfig {
    /// Rank `r`.
    pub rank: usize,
    /// The delta is scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the delta's input only (peft's `lora_dropout`).
    pub dropout: f64,
}

/// `dropout(x)·A·B·scale` with `scale = alpha / rank`.
#[derive(Module, Debug)]
pub struct LowRankDelta {
    /// `[d_in, r]`
    pub a: Param<Tensor<2>>,
    /// `[r, d_out]`
    pub b: Param<Tensor<2>>,
    /// Dropout on the delta's input.
    pub dropout: Dropout,
    /// `alpha / r`.
    #[module(skip)]
    pub scale: f64,
    /// True while `A·B·scale` sits inside the base weight; the delta then adds nothing.
    #[module(skip)]
    pub merged: bool,
}

/// HF's initialisation of a fresh embedding table: `N(0, std²)`.
pub fn normal_embedding(rows: usize, width: usize, std: f64, device: &Device) -> Embedding {
    EmbeddingConfig::new(rows, width)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

impl TunableLinear {
    /// A randomly initialised projection, initialised as Burn's `Linear`.
    pub fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        Self::from(LinearConfig::new(d_in, d_out).init(device))
    }

    /// HF's initialisation of a fresh projection: weights `N(0, std²)`, bias zero.
    pub fn normal(d_in: usize, d_out: usize, std: f64, device: &Device) -> Self {
        let mut linear = LinearConfig::new(d_in, d_out)
            .with_initializer(Initializer::Normal { mean: 0.0, std })
            .with_bias(false)
            .init(device);
        linear.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
        Self::from(linear)
    }

    /// Inputs.
    pub fn d_in(&self) -> usize {
        self.weight.lazy_shape().dims::<2>()[0]
    }

    /// Outputs.
    pub fn d_out(&self) -> usize {
        self.weight.lazy_shape().dims::<2>()[1]
    }

    /// `input` `[batch, ..., d_in]`: with per-example routing its first axis is the batch.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        self.forward_with(input, self.bias.as_ref())
    }

    /// Exact GELU of the projection, its bias added inside the fused kernel (kiln-kernels): the
    /// feed-forward's first half in one pass over its output instead of two.
    pub fn forward_bias_gelu<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let out = self.forward_with(input, None);
        kiln_kernels::bias_gelu(out, self.bias.as_ref().map(Param::val))
    }

    /// The projection with `bias` (the layer's own, or none).
    fn forward_with<const D: usize>(
        &self,
        input: Tensor<D>,
        bias: Option<&Param<Tensor<1>>>,
    ) -> Tensor<D> {
        let mut dims = input.dims();
        let rows = as_rows(input);
        let mut out = affine_rows(rows.clone(), &self.weight, bias);
        if let Some(delta) = self.lora.as_ref().filter(|d| !d.merged) {
            out = out + delta.forward_rows(rows.clone());
        }
        if self.routing != LoraRouting::Off {
            out = out + self.served_delta(rows, dims[0]);
        }
        dims[D - 1] = self.d_out();
        out.reshape(dims)
    }

    /// The routed adapters' contribution `[rows, d_out]` (zeros when none applies). Per example,
    /// each adapter in use runs on every row and a 0/1 row mask keeps its examples' rows.
    fn served_delta(&self, rows: Tensor<2>, batch: usize) -> Tensor<2> {
        let [count, _] = rows.dims();
        let device = rows.device();
        let zeros = || Tensor::zeros([count, self.d_out()], &device);
        let served = |k: usize| self.served.get(k).and_then(Option::as_ref);
        match &self.routing {
            LoraRouting::Off => zeros(),
            LoraRouting::All(k) => served(*k).map_or_else(zeros, |d| d.forward_rows(rows)),
            LoraRouting::PerExample(choice) => {
                let per_example = count / batch.max(1);
                let mut out = zeros();
                let mut used: Vec<usize> = choice.iter().flatten().copied().collect();
                used.sort_unstable();
                used.dedup();
                for k in used {
                    let Some(delta) = served(k) else { continue };
                    let mask: Vec<f32> = (0..count)
                        .map(|r| f32::from(u8::from(choice.get(r / per_example) == Some(&Some(k)))))
                        .collect();
                    let mask = Tensor::<2>::from_data(
                        burn::tensor::TensorData::new(mask, [count, 1]),
                        &device,
                    );
                    out = out + delta.forward_rows(rows.clone()) * mask;
                }
                out
            }
        }
    }

    /// Fills the low-rank slot with a fresh delta (`A` uniform in ±1/sqrt(d_in) as peft's
    /// Kaiming-uniform, `B` zero).
    pub fn add_lora(&mut self, config: LowRankConfig) {
        let device = self.weight.lazy_device();
        let (d_in, d_out) = (self.d_in(), self.d_out());
        let a = peft_kaiming_uniform().init_with([d_in, config.rank], Some(d_in), None, &device);
        let b = Initializer::Zeros.init([config.rank, d_out], &device);
        self.lora = Some(LowRankDelta {
            a,
            b,
            dropout: DropoutConfig::new(config.dropout).init(),
            scale: config.alpha / config.rank as f64,
            merged: false,
        });
    }

    /// Adds the delta into the base weight; outputs stay the same, the delta's cost is gone.
    pub fn merge_lora(&mut self) {
        let Some(delta) = self.lora.as_mut() else {
            return;
        };
        if delta.merged {
            return;
        }
        let update = delta.product().detach();
        self.weight = self.weight.clone().map(|w| w + update);
        delta.merged = true;
    }

    /// Takes a merged delta back out of the base weight.
    pub fn unmerge_lora(&mut self) {
        let Some(delta) = self.lora.as_mut() else {
            return;
        };
        if !delta.merged {
            return;
        }
        let update = delta.product().detach();
        self.weight = self.weight.clone().map(|w| w - update);
        delta.merged = false;
    }
}

impl From<Linear> for TunableLinear {
    fn from(linear: Linear) -> Self {
        Self {
            weight: linear.weight,
            bias: linear.bias,
            lora: None,
            served: Vec::new(),
            routing: LoraRouting::Off,
        }
    }
}

impl LowRankDelta {
    /// A delta with given matrices `a` `[d_in, r]`, `b` `[r, d_out]` (an adapter read from a file).
    pub fn from_matrices(a: Tensor<2>, b: Tensor<2>, config: LowRankConfig) -> Self {
        Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            dropout: DropoutConfig::new(config.dropout).init(),
            scale: config.alpha / config.rank as f64,
            merged: false,
        }
    }

    /// Rank `r`.
    pub fn rank(&self) -> usize {
        self.a.lazy_shape().dims::<2>()[1]
    }

    /// `A·B·scale`, `[d_in, d_out]`: what merging adds to the base weight.
    pub fn product(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()) * self.scale
    }

    /// `[rows, d_in] -> [rows, d_out]`.
    pub fn forward_rows(&self, rows: Tensor<2>) -> Tensor<2> {
        let down = kiln_kernels::matmul(kiln_kernels::dropout(&self.dropout, rows), self.a.val());
        kiln_kernels::matmul(down, self.b.val()) * self.scale
    }
}

/// Burn's `Linear` with every leading dimension folded into rows (see `affine_rows`).
pub fn linear_rows<const D: usize>(layer: &Linear, input: Tensor<D>) -> Tensor<D> {
    let mut dims = input.dims();
    dims[D - 1] = layer.weight.lazy_shape().dims::<2>()[1];
    affine_rows(as_rows(input), &layer.weight, layer.bias.as_ref()).reshape(dims)
}

/// `x·W + b` as one matrix product over rows. Burn's `linear` keeps a `[batch, seq, d]` input
/// batched when `seq` is a multiple of 32, and the weight's gradient then goes through a
/// `[batch, d_in, d_out]` temporary summed over the batch: slower, and the largest buffer of a
/// training step.
fn affine_rows(
    rows: Tensor<2>,
    weight: &Param<Tensor<2>>,
    bias: Option<&Param<Tensor<1>>>,
) -> Tensor<2> {
    // kiln-kernels' product: on the CPU its output is written once, never zero-filled first.
    let out = kiln_kernels::matmul(rows, weight.val());
    match bias {
        Some(bias) => out + bias.val().unsqueeze_dim(0),
        None => out,
    }
}

/// Every leading dimension folded into rows, `[..., d] -> [rows, d]`.
fn as_rows<const D: usize>(input: Tensor<D>) -> Tensor<2> {
    let dims = input.dims();
    let width = dims[D - 1];
    let rows = dims[..D - 1].iter().product();
    input.reshape([rows, width])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_a_is_uniform_within_peft_bound() {
        let device = Device::flex();
        let mut layer = TunableLinear::new(768, 64, &device);
        layer.add_lora(LowRankConfig {
            rank: 8,
            alpha: 8.0,
            dropout: 0.0,
        });
        let a = layer.lora.as_ref().expect("a delta").a.val();
        let values = a
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32");
        let bound = 1.0 / 768f32.sqrt();
        let largest = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        // 6144 uniform draws: the largest lies within 1% of the bound, never beyond it.
        assert!(
            largest <= bound && largest > 0.99 * bound,
            "{largest} vs {bound}"
        );
    }
}
