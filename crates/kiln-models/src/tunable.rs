//! The projection every backbone uses: a base weight and bias, plus the slots the weight-side
//! methods fill: a delta of the LoRA family (see [`crate::low_rank`]), IA3's scaling vector, and
//! LoHa's and LoKr's full-rank updates (see [`crate::lycoris`]), VeRA's scaled shared
//! projections (see [`crate::vera`]) and OFT's rotation of the input (see [`crate::oft`]).
//!
//! With a LoRA delta the layer computes `x·W + b + dropout(x)·A·B·s`; `B` starts at zero (or
//! PiSSA/OLoRA move part of `W` into the delta), so a fresh delta leaves the model's outputs
//! unchanged. IA3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and
//! Cheaper than In-Context Learning") multiplies the output `(x·W + b) ⊙ l` or, on a feed-forward
//! layer, the input `(x ⊙ l)·W + b`, with `l` starting at ones. Both merge into `W` (and `b`) for
//! inference at the base model's cost and unmerge again, as the other slots do. Trainable
//! parameters per filled slot: LoRA `r·(d_in + d_out)` (DoRA `+ d_out`), IA3 `d_out` (on the
//! input: `d_in`); the other slots' modules give theirs.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Int, Tensor};

use crate::adalora::SvdDelta;
use crate::low_rank::{LowRankConfig, LowRankDelta};
use crate::lycoris::{HadamardDelta, KroneckerDelta};
use crate::oft::OrthogonalRotation;
use crate::vera::VeraDelta;

/// A linear projection with a slot per weight-side method. Parameter paths are `weight`, `bias`
/// (as Burn's `Linear`, so checkpoints load unchanged), then the slot's: `lora.a`, `lora.b`,
/// `lora.magnitude`, `ia3.scale`, `loha.*`, `lokr.*`, `vera.*`, `oft.weight`, `adalora.*`; LoRA deltas served
/// by name beside the base are `served.{k}.a`, `served.{k}.b`. One run fills one kind of slot.
#[derive(Module, Debug)]
pub struct TunableLinear {
    /// `[d_in, d_out]`: Burn's layout, the transpose of PyTorch's `nn.Linear`.
    pub weight: Param<Tensor<2>>,
    /// Bias `[d_out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// The trained delta of the LoRA family, if any.
    pub lora: Option<LowRankDelta>,
    /// IA3's trained scaling vector, if any.
    pub ia3: Option<ScalingVector>,
    /// LoHa's update, if any.
    pub loha: Option<HadamardDelta>,
    /// LoKr's update, if any.
    pub lokr: Option<KroneckerDelta>,
    /// VeRA's delta, if any.
    pub vera: Option<VeraDelta>,
    /// OFT's rotation of the input, if any.
    pub oft: Option<OrthogonalRotation>,
    /// AdaLoRA's update in SVD form, if any.
    pub adalora: Option<SvdDelta>,
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

/// IA3's learned vector `l` on one projection.
#[derive(Module, Debug)]
pub struct ScalingVector {
    /// `[d_out]`, or `[d_in]` on the input; starts at ones.
    pub scale: Param<Tensor<1>>,
    /// Scales the projection's input (peft's feed-forward modules) rather than its output.
    #[module(skip)]
    pub on_input: bool,
    /// True while `l` sits inside the base weight (and bias); it then scales nothing.
    #[module(skip)]
    pub merged: bool,
}

/// A token embedding table with a slot for a LoRA delta (peft's LoRA `Embedding`): the looked-up
/// rows of `A` (`[vocab, r]`) times `B` (`[r, h]`) times `s` are added to the looked-up rows of
/// the table. peft starts `A` at zero and `B` standard normal, and applies no dropout. The table
/// keeps Burn's `Embedding` path (`weight`), so checkpoints load unchanged; the delta is `lora.a`,
/// `lora.b`. Trainable per filled slot: `r·(vocab + h)`.
#[derive(Module, Debug)]
pub struct TunableEmbedding {
    /// `[vocab, h]`
    pub weight: Param<Tensor<2>>,
    /// The trained LoRA delta, if any.
    pub lora: Option<LowRankDelta>,
}

impl From<Embedding> for TunableEmbedding {
    fn from(embedding: Embedding) -> Self {
        Self {
            weight: embedding.weight,
            lora: None,
        }
    }
}

impl TunableEmbedding {
    /// `[batch, seq] -> [batch, seq, h]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let words = burn::tensor::module::embedding(self.weight.val(), ids.clone());
        match self.lora.as_ref().filter(|d| !d.merged) {
            None => words,
            Some(delta) => {
                let down = burn::tensor::module::embedding(delta.a.val(), ids);
                let [batch, seq, rank] = down.dims();
                let up = kiln_kernels::matmul(down.reshape([batch * seq, rank]), delta.b.val());
                let width = up.dims()[1];
                words + up.reshape([batch, seq, width]) * delta.scale
            }
        }
    }

    /// Fills the slot with peft's fresh embedding delta: `A` zero, `B` standard normal.
    pub fn add_lora(&mut self, config: LowRankConfig) {
        let device = self.weight.lazy_device();
        let [vocab, width] = self.weight.lazy_shape().dims::<2>();
        let a = Tensor::zeros([vocab, config.rank], &device);
        let b = Tensor::random(
            [config.rank, width],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        self.lora = Some(LowRankDelta::from_matrices(a, b, config));
    }

    /// Adds the delta into the table.
    pub fn merge_lora(&mut self) {
        let Some(delta) = self.lora.as_mut().filter(|d| !d.merged) else {
            return;
        };
        let update = delta.product().detach();
        self.weight = self.weight.clone().map(|w| w + update);
        delta.merged = true;
    }

    /// Takes a merged delta back out of the table.
    pub fn unmerge_lora(&mut self) {
        let Some(delta) = self.lora.as_mut().filter(|d| d.merged) else {
            return;
        };
        let update = delta.product().detach();
        self.weight = self.weight.clone().map(|w| w - update);
        delta.merged = false;
    }
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
    /// feed-forward's first half in one pass over its output instead of two. (IA3 on this
    /// output scales after the bias, so that case takes the plain path.)
    pub fn forward_bias_gelu<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        if self.output_scale().is_some() {
            return kiln_kernels::bias_gelu(self.forward(input), None);
        }
        let out = self.forward_with(input, None);
        kiln_kernels::bias_gelu(out, self.bias.as_ref().map(Param::val))
    }

    /// IA3's vector when it scales this projection's output and is not merged.
    fn output_scale(&self) -> Option<&ScalingVector> {
        self.ia3.as_ref().filter(|v| !v.merged && !v.on_input)
    }

    /// The projection with `bias` (the layer's own, or none).
    fn forward_with<const D: usize>(
        &self,
        input: Tensor<D>,
        bias: Option<&Param<Tensor<1>>>,
    ) -> Tensor<D> {
        let mut dims = input.dims();
        let mut rows = as_rows(input);
        if let Some(vector) = self.ia3.as_ref().filter(|v| !v.merged && v.on_input) {
            rows = rows * vector.scale.val().unsqueeze_dim(0);
        }
        if let Some(rotation) = self.oft.as_ref().filter(|r| !r.merged()) {
            rows = rotation.rotate(rows);
        }
        // kiln-kernels' product: on the CPU its output is written once, never zero-filled first.
        let plain = kiln_kernels::matmul(rows.clone(), self.weight_with_update());
        let mut out = match self.lora.as_ref().filter(|d| !d.merged) {
            Some(delta) if delta.magnitude.is_some() => {
                let dora = delta.dora_rows(rows.clone(), plain.clone(), &self.weight.val());
                with_bias(plain, bias) + dora
            }
            Some(delta) => with_bias(plain, bias) + delta.forward_gated(rows.clone(), dims[0]),
            None => with_bias(plain, bias),
        };
        if let Some(vera) = self.vera.as_ref().filter(|v| !v.merged) {
            out = out + vera.forward_rows(rows.clone());
        }
        if let Some(adalora) = self.adalora.as_ref().filter(|d| !d.merged) {
            out = out + adalora.forward_rows(rows.clone());
        }
        if self.routing != LoraRouting::Off {
            out = out + self.served_delta(rows, dims[0]);
        }
        if let Some(vector) = self.output_scale() {
            out = out * vector.scale.val().unsqueeze_dim(0);
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

    /// Fills the low-rank slot with a fresh delta (see [`LowRankDelta::init`]); PiSSA and
    /// OLoRA take their start out of the base weight.
    pub fn add_lora(&mut self, config: LowRankConfig) {
        let (delta, residual) = LowRankDelta::init(self.weight.val(), config);
        if let Some(residual) = residual {
            self.weight = self.weight.clone().map(|_| residual);
        }
        self.lora = Some(delta);
    }

    /// Adds the delta into the base weight; outputs stay the same, the delta's cost is gone.
    pub fn merge_lora(&mut self) {
        // A gated delta (UniPELT) depends on the input: it stays beside the weight.
        let Some(delta) = self.lora.as_mut().filter(|d| !d.merged && d.gate.is_none()) else {
            return;
        };
        let merged = delta.merge_into(self.weight.val().detach());
        self.weight = self.weight.clone().map(|_| merged);
        delta.merged = true;
    }

    /// Takes a merged delta back out of the base weight.
    pub fn unmerge_lora(&mut self) {
        let Some(delta) = self.lora.as_mut().filter(|d| d.merged) else {
            return;
        };
        let unmerged = delta.unmerge_from(self.weight.val().detach());
        self.weight = self.weight.clone().map(|_| unmerged);
        delta.merged = false;
    }

    /// The base weight plus an unmerged LoHa or LoKr update: one product with the input
    /// instead of two.
    fn weight_with_update(&self) -> Tensor<2> {
        let weight = self.weight.val();
        match (
            self.loha.as_ref().filter(|d| !d.merged),
            self.lokr.as_ref().filter(|d| !d.merged),
        ) {
            (Some(loha), _) => weight + loha.weight(),
            (_, Some(lokr)) => weight + lokr.weight(),
            _ => weight,
        }
    }

    /// Folds a LoHa, LoKr, VeRA or AdaLoRA update into the base weight.
    pub fn merge_update(&mut self) {
        self.fold_update(false);
    }

    /// Takes a merged LoHa, LoKr, VeRA or AdaLoRA update back out of the base weight.
    pub fn unmerge_update(&mut self) {
        self.fold_update(true);
    }

    fn fold_update(&mut self, unmerge: bool) {
        let update = match (self.loha.as_mut(), self.lokr.as_mut(), self.vera.as_mut()) {
            (Some(loha), _, _) if loha.merged == unmerge => {
                loha.merged = !unmerge;
                loha.weight().detach()
            }
            (_, Some(lokr), _) if lokr.merged == unmerge => {
                lokr.merged = !unmerge;
                lokr.weight().detach()
            }
            (_, _, Some(vera)) if vera.merged == unmerge => {
                vera.merged = !unmerge;
                vera.product().detach()
            }
            _ => match self.adalora.as_mut() {
                Some(adalora) if adalora.merged == unmerge => {
                    adalora.merged = !unmerge;
                    adalora.product().detach()
                }
                _ => return,
            },
        };
        let sign = if unmerge { -1.0 } else { 1.0 };
        self.weight = self.weight.clone().map(|w| w + update * sign);
    }

    /// Folds OFT's rotation into the weight, `R·W`, keeping `W` to unmerge exactly.
    pub fn merge_rotation(&mut self) {
        let Some(rotation) = self.oft.as_mut().filter(|r| !r.merged()) else {
            return;
        };
        let weight = self.weight.val().detach();
        let rotated = rotation.rotate_weight(weight.clone()).detach();
        rotation.unmerged_weight = Some(weight);
        self.weight = self.weight.clone().map(|_| rotated);
    }

    /// Puts back the weight a merged rotation replaced.
    pub fn unmerge_rotation(&mut self) {
        let Some(weight) = self.oft.as_mut().and_then(|r| r.unmerged_weight.take()) else {
            return;
        };
        self.weight = self.weight.clone().map(|_| weight);
    }

    /// Fills IA3's slot with a vector of ones, on the input (`on_input`) or the output.
    pub fn add_ia3(&mut self, on_input: bool) {
        let width = if on_input { self.d_in() } else { self.d_out() };
        let device = self.weight.lazy_device();
        self.ia3 = Some(ScalingVector {
            scale: Param::from_tensor(Tensor::ones([width], &device)),
            on_input,
            merged: false,
        });
    }

    /// Folds IA3's vector into the weight: its rows (input) or its columns and the bias (output).
    pub fn merge_ia3(&mut self) {
        self.rescale_by_ia3(false);
    }

    /// Divides a merged IA3 vector back out.
    pub fn unmerge_ia3(&mut self) {
        self.rescale_by_ia3(true);
    }

    fn rescale_by_ia3(&mut self, unmerge: bool) {
        let Some(vector) = self.ia3.as_mut().filter(|v| v.merged == unmerge) else {
            return;
        };
        let mut scale = vector.scale.val().detach();
        if unmerge {
            scale = scale.recip();
        }
        if vector.on_input {
            let rows = scale.unsqueeze_dim(1);
            self.weight = self.weight.clone().map(|w| w * rows);
        } else {
            let columns = scale.clone().unsqueeze_dim(0);
            self.weight = self.weight.clone().map(|w| w * columns);
            self.bias = self.bias.take().map(|b| b.map(|b| b * scale));
        }
        vector.merged = !unmerge;
    }
}

impl From<Linear> for TunableLinear {
    fn from(linear: Linear) -> Self {
        Self {
            weight: linear.weight,
            bias: linear.bias,
            lora: None,
            ia3: None,
            loha: None,
            lokr: None,
            vera: None,
            oft: None,
            adalora: None,
            served: Vec::new(),
            routing: LoraRouting::Off,
        }
    }
}

/// Burn's `Linear` with every leading dimension folded into rows (see `affine_rows`).
pub fn linear_rows<const D: usize>(layer: &Linear, input: Tensor<D>) -> Tensor<D> {
    let mut dims = input.dims();
    dims[D - 1] = layer.weight.lazy_shape().dims::<2>()[1];
    affine_rows(as_rows(input), layer.weight.val(), layer.bias.as_ref()).reshape(dims)
}

/// `x·W + b` as one matrix product over rows. Burn's `linear` keeps a `[batch, seq, d]` input
/// batched when `seq` is a multiple of 32, and the weight's gradient then goes through a
/// `[batch, d_in, d_out]` temporary summed over the batch: slower, and the largest buffer of a
/// training step.
pub fn affine_rows(
    rows: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<&Param<Tensor<1>>>,
) -> Tensor<2> {
    with_bias(kiln_kernels::matmul(rows, weight), bias)
}

/// `out + b`, the bias broadcast over rows.
fn with_bias(out: Tensor<2>, bias: Option<&Param<Tensor<1>>>) -> Tensor<2> {
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
        layer.add_lora(LowRankConfig::new(8, 8.0, 0.0));
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
