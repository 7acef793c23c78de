//! The LoRA family's delta on one projection: LoRA (Hu et al. 2022) and the variants peft's
//! `LoraConfig` switches on, rsLoRA's scale (Kalajdzievski 2023, `use_rslora`), DoRA's
//! magnitude (Liu et al. 2024, `use_dora`), and the PiSSA (Meng et al. 2024) and OLoRA (Büyükakyüz
//! 2024) starts (`init_lora_weights`).
//!
//! - LoRA adds `dropout(x)·A·B·s` with `A: [d_in, r]`, `B: [r, d_out]`, `s = alpha / r`, or
//!   `alpha / sqrt(r)` with rsLoRA, whose updates keep their size as `r` grows.
//! - DoRA splits the adapted weight into a direction and a trained magnitude `m: [d_out]`:
//!   `W' = m ⊙ (W + s·A·B) / ‖W + s·A·B‖`, the norm per output column (over `d_in`), treated as a
//!   constant in backward as the paper's §4.3 and peft do; `m` starts at the norm, so a fresh
//!   delta changes nothing. Trainable: `r·(d_in + d_out) + d_out` per projection.
//! - PiSSA starts `A·B·s` as the top-`r` singular part of `W` and OLoRA as the first `r` columns
//!   of `W`'s QR decomposition; both take that part out of the base weight, so the model starts
//!   where the pretrained one is, and train the principal (PiSSA) or an orthonormal (OLoRA)
//!   subspace instead of a random one.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Distribution, Tensor};
use serde::{Deserialize, Serialize};

use crate::tunable::linear_rows;

/// How a fresh delta starts (peft's `init_lora_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoraInit {
    /// `A` uniform in ±1/sqrt(d_in) (peft's Kaiming-uniform default), `B` zero.
    #[default]
    Kaiming,
    /// peft's `gaussian`: `A ~ N(0, (1/r)²)`, `B` zero.
    Gaussian,
    /// The top-`r` singular triplets of `W`, taken out of `W`.
    Pissa,
    /// The first `r` columns of `W`'s QR decomposition, taken out of `W`.
    Olora,
}

impl LoraInit {
    /// Whether the start moves part of the base weight into the delta.
    pub fn mutates_base(self) -> bool {
        matches!(self, Self::Pissa | Self::Olora)
    }
}

/// Settings of one delta of the LoRA family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LowRankConfig {
    /// Rank `r`.
    pub rank: usize,
    /// The delta is scaled by `alpha / r` (rsLoRA: `alpha / sqrt(r)`).
    pub alpha: f64,
    /// Dropout on the delta's input only (peft's `lora_dropout`).
    pub dropout: f64,
    /// rsLoRA's `alpha / sqrt(r)` scale.
    pub rank_stabilized: bool,
    /// DoRA's trained magnitude over the normalised weight.
    pub dora: bool,
    /// How `A` and `B` start.
    pub init: LoraInit,
}

impl LowRankConfig {
    /// Plain LoRA: `alpha / r`, no magnitude, peft's default start.
    pub fn new(rank: usize, alpha: f64, dropout: f64) -> Self {
        Self {
            rank,
            alpha,
            dropout,
            rank_stabilized: false,
            dora: false,
            init: LoraInit::Kaiming,
        }
    }

    /// The factor `s` on `A·B`.
    pub fn scale(&self) -> f64 {
        if self.rank_stabilized {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// `dropout(x)·A·B·scale`, with DoRA's magnitude when it has one.
#[derive(Module, Debug)]
pub struct LowRankDelta {
    /// `[d_in, r]`
    pub a: Param<Tensor<2>>,
    /// `[r, d_out]`
    pub b: Param<Tensor<2>>,
    /// DoRA's magnitude `m` `[d_out]`; `None` for plain LoRA.
    pub magnitude: Option<Param<Tensor<1>>>,
    /// Dropout on the delta's input.
    pub dropout: Dropout,
    /// `alpha / r` (rsLoRA: `alpha / sqrt(r)`).
    #[module(skip)]
    pub scale: f64,
    /// Whether `scale` is rsLoRA's (what an export tells peft).
    #[module(skip)]
    pub rank_stabilized: bool,
    /// True while the delta sits inside the base weight; it then adds nothing.
    #[module(skip)]
    pub merged: bool,
    /// DoRA: the column norms `‖W + s·A·B‖` the merge divided by, to unmerge exactly.
    #[module(skip)]
    pub merged_norm: Option<Tensor<1>>,
    /// PiSSA and OLoRA: the starting `A` and `B`, whose product left the base weight. An
    /// export to a base that still holds it writes `[A, A0]`, `[B; -B0]` (peft's conversion).
    #[module(skip)]
    pub start: Option<(Tensor<2>, Tensor<2>)>,
    /// UniPELT's gate `[d_in, 1]`: the delta is scaled per text by `mean_t σ(g·x_t + c)`, which
    /// takes the place of `alpha / r` as in AdapterHub (give `alpha = r`). A gated delta depends
    /// on the input and cannot merge.
    pub gate: Option<Linear>,
}

/// peft's `kaiming_uniform_(A, a=sqrt(5))`, uniform in ±1/sqrt(fan_in): torch's gain for
/// `a = sqrt(5)` is sqrt(2 / (1 + 5)) = 1/sqrt(3), and Burn's bound is gain * sqrt(3 / fan_in).
pub fn peft_kaiming_uniform() -> Initializer {
    Initializer::KaimingUniform {
        gain: 1.0 / 3f64.sqrt(),
        fan_out_only: false,
    }
}

/// Upper bound on the QR sweeps per singular value of PiSSA's SVD (a handful suffice).
const SVD_SWEEPS: usize = 100;

impl LowRankDelta {
    /// A fresh delta for the base weight `weight` `[d_in, d_out]` of a projection. PiSSA and
    /// OLoRA return the base weight with their start taken out; the others leave it alone.
    pub fn init(weight: Tensor<2>, config: LowRankConfig) -> (Self, Option<Tensor<2>>) {
        let device = weight.device();
        let [d_in, d_out] = weight.dims();
        let rank = config.rank;
        let scale = config.scale();
        let (a, b) = match config.init {
            LoraInit::Kaiming => (
                peft_kaiming_uniform()
                    .init_with([d_in, rank], Some(d_in), None, &device)
                    .val(),
                Tensor::zeros([rank, d_out], &device),
            ),
            LoraInit::Gaussian => (
                Tensor::random(
                    [d_in, rank],
                    Distribution::Normal(0.0, 1.0 / rank as f64),
                    &device,
                ),
                Tensor::zeros([rank, d_out], &device),
            ),
            LoraInit::Pissa => on_host(weight.clone(), |w| pissa_start(w, rank, scale)),
            LoraInit::Olora => on_host(weight.clone(), |w| olora_start(w, rank)),
        };
        let residual = config
            .init
            .mutates_base()
            .then(|| weight.clone().detach() - a.clone().matmul(b.clone()) * scale);
        let start = config.init.mutates_base().then(|| (a.clone(), b.clone()));
        let mut delta = Self::from_matrices(a, b, config);
        delta.start = start;
        if config.dora {
            let base = residual.clone().unwrap_or(weight);
            delta.magnitude = Some(Param::from_tensor(delta.column_norms(base)));
        }
        (delta, residual)
    }

    /// A delta with given matrices `a` `[d_in, r]`, `b` `[r, d_out]` (an adapter read from a
    /// file), with DoRA's magnitude set to ones (its file gives the real one) when `config.dora`.
    pub fn from_matrices(a: Tensor<2>, b: Tensor<2>, config: LowRankConfig) -> Self {
        let d_out = b.dims()[1];
        let device = b.device();
        Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            magnitude: config
                .dora
                .then(|| Param::from_tensor(Tensor::ones([d_out], &device))),
            dropout: DropoutConfig::new(config.dropout).init(),
            scale: config.scale(),
            rank_stabilized: config.rank_stabilized,
            merged: false,
            merged_norm: None,
            start: None,
            gate: None,
        }
    }

    /// Rank `r`.
    pub fn rank(&self) -> usize {
        self.a.lazy_shape().dims::<2>()[1]
    }

    /// The `alpha` that gives this delta's scale at its rank, as peft's config states it.
    pub fn alpha(&self) -> f64 {
        let rank = self.rank() as f64;
        if self.rank_stabilized {
            self.scale * rank.sqrt()
        } else {
            self.scale * rank
        }
    }

    /// The same update relative to the base weight before a PiSSA or OLoRA start took its part
    /// out, as peft converts such an adapter: `[A, A0]` and `[B; -B0]`, rank `2r`, the scale
    /// kept. `None` for a delta that did not move part of the base.
    pub fn relative_to_original_base(&self) -> Option<Self> {
        let (a0, b0) = self.start.as_ref()?;
        let mut delta = self.clone();
        delta.a = Param::from_tensor(Tensor::cat(vec![self.a.val(), a0.clone()], 1));
        delta.b = Param::from_tensor(Tensor::cat(vec![self.b.val(), b0.clone().neg()], 0));
        delta.start = None;
        Some(delta)
    }

    /// `A·B·scale`, `[d_in, d_out]`: what plain LoRA's merge adds to the base weight.
    pub fn product(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()) * self.scale
    }

    /// `‖weight + A·B·scale‖` per output column, as a constant (no gradient flows through it).
    pub fn column_norms(&self, weight: Tensor<2>) -> Tensor<1> {
        (weight + self.product())
            .detach()
            .powi_scalar(2)
            .sum_dim(0)
            .sqrt()
            .squeeze_dim(0)
    }

    /// `[rows, d_in] -> [rows, d_out]`, plain LoRA's `dropout(x)·A·B·scale`.
    pub fn forward_rows(&self, rows: Tensor<2>) -> Tensor<2> {
        self.low_rank(kiln_kernels::dropout(&self.dropout, rows))
    }

    /// `x·A·B·scale` without dropout.
    fn low_rank(&self, rows: Tensor<2>) -> Tensor<2> {
        let down = kiln_kernels::matmul(rows, self.a.val());
        kiln_kernels::matmul(down, self.b.val()) * self.scale
    }

    /// What DoRA adds to the base output `base_out = x·W + bias` (`plain = x·W`), as peft's
    /// `DoraLinearLayer`: `(f - 1)·(x·W) + f·s·x·A·B` with `f = m / ‖W + s·A·B‖`; under active
    /// dropout both terms read the dropped input, the first through a second product with `W`.
    pub fn dora_rows(&self, rows: Tensor<2>, plain: Tensor<2>, weight: &Tensor<2>) -> Tensor<2> {
        let magnitude = self.magnitude.as_ref().expect("a DoRA delta").val();
        let factor = (magnitude / self.column_norms(weight.clone())).unsqueeze_dim(0);
        let (input, plain) = if kiln_kernels::dropout_active(&self.dropout, &rows) {
            let dropped = kiln_kernels::dropout(&self.dropout, rows);
            let plain = kiln_kernels::matmul(dropped.clone(), weight.clone());
            (dropped, plain)
        } else {
            (rows, plain)
        };
        plain * factor.clone().sub_scalar(1.0) + self.low_rank(input) * factor
    }

    /// The delta over `rows` `[batch·seq, d_in]` of `batch` texts, times the gate when it has
    /// one (see [`LowRankDelta::gate`]).
    pub fn forward_gated(&self, rows: Tensor<2>, batch: usize) -> Tensor<2> {
        let delta = self.forward_rows(rows.clone());
        match &self.gate {
            None => delta,
            Some(gate) => {
                let [count, _] = rows.dims();
                let per_text = count / batch.max(1);
                let gate = sigmoid(linear_rows(gate, rows))
                    .reshape([batch, per_text])
                    .mean_dim(1)
                    .expand([batch, per_text])
                    .reshape([count, 1]);
                delta * gate
            }
        }
    }

    /// The base weight with this delta folded in: `W + A·B·s`, or DoRA's `f ⊙ (W + A·B·s)`
    /// (remembering the norms, to unmerge).
    pub fn merge_into(&mut self, weight: Tensor<2>) -> Tensor<2> {
        let update = self.product().detach();
        match &self.magnitude {
            None => weight + update,
            Some(magnitude) => {
                let norms = self.column_norms(weight.clone());
                let factor = magnitude.val().detach() / norms.clone();
                self.merged_norm = Some(norms);
                (weight + update) * factor.unsqueeze_dim(0)
            }
        }
    }

    /// The base weight with this delta taken back out of the merged `weight`.
    pub fn unmerge_from(&mut self, weight: Tensor<2>) -> Tensor<2> {
        let update = self.product().detach();
        match (&self.magnitude, self.merged_norm.take()) {
            (Some(magnitude), Some(norms)) => {
                let factor = magnitude.val().detach() / norms;
                weight / factor.unsqueeze_dim(0) - update
            }
            _ => weight - update,
        }
    }
}

/// `decompose` on a copy of `weight` outside autodiff (burn-linalg's SVD and QR take no
/// tracked tensors), its factors brought back to `weight`'s device.
fn on_host(
    weight: Tensor<2>,
    decompose: impl FnOnce(Tensor<2>) -> (Tensor<2>, Tensor<2>),
) -> (Tensor<2>, Tensor<2>) {
    let device = weight.device();
    let plain = Tensor::from_data(weight.into_data(), &device.clone().inner());
    let (a, b) = decompose(plain);
    (
        Tensor::from_data(a.into_data(), &device),
        Tensor::from_data(b.into_data(), &device),
    )
}

/// PiSSA's start: with `W = U·S·Vᵀ` (kiln's `[d_in, d_out]` layout), `A = U_r·sqrt(S_r/s)` and
/// `B = sqrt(S_r/s)·V_rᵀ`, so that `A·B·s` is `W`'s top-`r` singular part.
fn pissa_start(weight: Tensor<2>, rank: usize, scale: f64) -> (Tensor<2>, Tensor<2>) {
    let (u, singular, vt) = burn::linalg::svd::<2, 1>(weight, SVD_SWEEPS);
    let root = (singular.narrow(0, 0, rank) / scale).sqrt();
    let a = u.narrow(1, 0, rank) * root.clone().unsqueeze_dim(0);
    let b = vt.narrow(0, 0, rank) * root.unsqueeze_dim(1);
    (a, b)
}

/// OLoRA's start, on PyTorch's `[d_out, d_in]` weight `Wᵀ = Q·R` as peft decomposes it:
/// `B = Q_rᵀ` and `A = R_rᵀ` in kiln's layout (no scale: peft subtracts `s·Q_r·R_r`).
fn olora_start(weight: Tensor<2>, rank: usize) -> (Tensor<2>, Tensor<2>) {
    let (q, r) = burn::linalg::qr::<2>(weight.transpose(), true);
    let b = q.narrow(1, 0, rank).transpose();
    let a = r.narrow(0, 0, rank).transpose();
    (a, b)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::tunable::TunableLinear;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32")
    }

    fn assert_close(a: &[f32], b: &[f32], tolerance: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: sizes");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() < tolerance, "{what}[{i}]: {x} vs {y}");
        }
    }

    /// A 6 -> 5 projection with a bias and a delta of `config` whose `B` (and DoRA magnitude)
    /// are random, so that every term counts.
    fn layer(config: LowRankConfig, device: &Device) -> TunableLinear {
        let mut layer = TunableLinear::new(6, 5, device);
        layer.add_lora(config);
        let delta = layer.lora.as_mut().expect("a delta");
        delta.b = Param::from_tensor(Tensor::random(
            [config.rank, 5],
            Distribution::Normal(0.0, 0.5),
            device,
        ));
        if let Some(m) = delta.magnitude.as_mut() {
            *m = Param::from_tensor(
                m.val() * Tensor::random([5], Distribution::Uniform(0.5, 1.5), device),
            );
        }
        layer
    }

    fn input(device: &Device) -> Tensor<2> {
        Tensor::random([4, 6], Distribution::Normal(0.0, 1.0), device)
    }

    #[test]
    fn rslora_scales_by_the_root_of_the_rank() {
        let plain = LowRankConfig::new(16, 8.0, 0.0);
        let stabilised = LowRankConfig {
            rank_stabilized: true,
            ..plain
        };
        assert_eq!(plain.scale(), 0.5);
        assert_eq!(stabilised.scale(), 2.0);
    }

    #[test]
    fn dora_computes_the_papers_weight_and_merges_to_it() {
        let device = Device::flex();
        let config = LowRankConfig {
            dora: true,
            ..LowRankConfig::new(3, 6.0, 0.0)
        };
        let mut layer = layer(config, &device);
        let x = input(&device);
        // W' = m ⊙ (W + s·A·B) / ‖W + s·A·B‖, the norm per output over the inputs.
        let delta = layer.lora.as_ref().expect("a delta");
        let adapted = layer.weight.val() + delta.product();
        let norms = adapted.clone().powi_scalar(2).sum_dim(0).sqrt();
        let magnitude = delta
            .magnitude
            .as_ref()
            .expect("DoRA")
            .val()
            .unsqueeze_dim(0);
        let weight = adapted / norms * magnitude;
        let bias = layer.bias.as_ref().expect("bias").val().unsqueeze_dim(0);
        let expected = values(x.clone().matmul(weight) + bias);
        let original = values(layer.weight.val());
        assert_close(
            &values(layer.forward(x.clone())),
            &expected,
            1e-5,
            "DoRA forward",
        );
        layer.merge_lora();
        assert_close(&values(layer.forward(x.clone())), &expected, 1e-5, "merged");
        layer.unmerge_lora();
        assert_close(
            &values(layer.weight.val()),
            &original,
            1e-5,
            "unmerged weight",
        );
    }

    #[test]
    fn a_fresh_dora_delta_changes_nothing() {
        let device = Device::flex();
        let mut layer = TunableLinear::new(6, 5, &device);
        let x = input(&device);
        let before = values(layer.forward(x.clone()));
        layer.add_lora(LowRankConfig {
            dora: true,
            ..LowRankConfig::new(2, 4.0, 0.0)
        });
        assert_close(&values(layer.forward(x)), &before, 1e-5, "fresh DoRA");
    }

    #[test]
    fn pissa_and_olora_move_part_of_the_weight_into_the_delta() {
        let device = Device::flex();
        for init in [LoraInit::Pissa, LoraInit::Olora] {
            let mut layer = TunableLinear::new(6, 5, &device);
            let original = layer.weight.val();
            let x = input(&device);
            let before = values(layer.forward(x.clone()));
            layer.add_lora(LowRankConfig {
                init,
                ..LowRankConfig::new(2, 4.0, 0.0)
            });
            let delta = layer.lora.as_ref().expect("a delta");
            // The residual plus the delta is the pretrained weight: the model starts unchanged.
            let restored = values(layer.weight.val() + delta.product());
            assert_close(&restored, &values(original.clone()), 1e-5, "W_res + s·A·B");
            assert_close(&values(layer.forward(x)), &before, 1e-4, "outputs");
            assert!(delta.start.is_some(), "{init:?} keeps its start for export");
            match init {
                // PiSSA: the top-2 singular part, so the residual holds the rest of the
                // spectrum: ‖W_res‖² = Σ_{i>2} σ_i², ‖s·A·B‖² = σ_1² + σ_2².
                LoraInit::Pissa => {
                    let (_, singular, _) = burn::linalg::svd::<2, 1>(original.clone(), 100);
                    let s = values(singular);
                    let top: f32 = s[..2].iter().map(|v| v * v).sum();
                    let product = values(delta.product().powi_scalar(2).sum());
                    assert!(
                        (product[0] - top).abs() < 1e-3 * top,
                        "{} vs {top}",
                        product[0]
                    );
                }
                // OLoRA: `B`'s rows are orthonormal (the first columns of Q).
                _ => {
                    let gram = values(delta.b.val().matmul(delta.b.val().transpose()));
                    assert_close(&gram, &[1.0, 0.0, 0.0, 1.0], 1e-5, "B·Bᵀ");
                }
            }
        }
    }

    #[test]
    fn a_converted_start_gives_the_same_update_on_the_original_base() {
        let device = Device::flex();
        let mut layer = TunableLinear::new(6, 5, &device);
        let original = layer.weight.val();
        layer.add_lora(LowRankConfig {
            init: LoraInit::Pissa,
            ..LowRankConfig::new(2, 4.0, 0.0)
        });
        let delta = layer.lora.as_mut().expect("a delta");
        // Training moved A and B.
        delta.b = Param::from_tensor(delta.b.val().add_scalar(0.1));
        let trained = layer.weight.val() + delta.product();
        let converted = delta.relative_to_original_base().expect("a PiSSA start");
        assert_eq!(converted.rank(), 4);
        assert_eq!(converted.alpha(), 8.0);
        assert_close(
            &values(original + converted.product()),
            &values(trained),
            1e-5,
            "W + converted update",
        );
    }

    #[test]
    fn ia3_scales_the_input_or_the_output_and_merges() {
        let device = Device::flex();
        let x = input(&device);
        for on_input in [false, true] {
            let mut layer = TunableLinear::new(6, 5, &device);
            layer.add_ia3(on_input);
            let width = if on_input { 6 } else { 5 };
            let scale = Tensor::<1>::from_data(
                TensorData::new(
                    (1..=width).map(|i| i as f32 * 0.3).collect::<Vec<_>>(),
                    [width],
                ),
                &device,
            );
            layer.ia3.as_mut().expect("IA3").scale = Param::from_tensor(scale.clone());
            let bias = layer.bias.as_ref().expect("bias").val().unsqueeze_dim(0);
            let expected = if on_input {
                (x.clone() * scale.unsqueeze_dim(0)).matmul(layer.weight.val()) + bias
            } else {
                (x.clone().matmul(layer.weight.val()) + bias) * scale.unsqueeze_dim(0)
            };
            let expected = values(expected);
            let original = values(layer.weight.val());
            assert_close(&values(layer.forward(x.clone())), &expected, 1e-5, "IA3");
            layer.merge_ia3();
            assert_close(&values(layer.forward(x.clone())), &expected, 1e-5, "merged");
            layer.unmerge_ia3();
            assert_close(&values(layer.weight.val()), &original, 1e-5, "unmerged");
        }
    }
}
