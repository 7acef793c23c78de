//! AdaLoRA (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning"),
//! as peft's `tuners/adalora` computes it. Each targeted projection gains an update in SVD form,
//! `x ↦ x·W + b + ((dropout(x)·P) ⊙ λ)·Q·α/(r + 1e-5)`, with `P: [d_in, r]`, `λ: [r]` (the
//! "singular values", zero at the start), `Q: [r, d_out]` (`P`, `Q` normal with std 0.02; peft's
//! `lora_A`, `lora_E`, `lora_B`, transposed). Training adds `w·mean(‖PᵀP − I‖_F, ‖QQᵀ − I‖_F)` to
//! the loss (the orthogonality regulariser, `orth_reg_weight`), and after every step the rank
//! allocator scores each triplet `(P_·i, λ_i, Q_i·)` by the smoothed sensitivity `|θ·∇θ|` times its
//! uncertainty and zeroes the `λ`s of the least important until the total budget, which falls
//! cubically from `init_r` per target to `target_r` between `tinit` and `T − tfinal`
//! ([`RankAllocation`]). Trainable per target `r·(d_in + d_out + 1)` with `r = init_r`; the
//! update merges into `W`.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::tensor::{Device, Tensor, TensorData};

/// The allocator's settings (peft's `AdaLoraConfig` names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankAllocation {
    /// `target_r`: the average rank per target at the end.
    pub target_rank: usize,
    /// `tinit`: steps before the budget starts to fall.
    pub warmup_steps: usize,
    /// `tfinal`: steps at the end with the budget fixed.
    pub final_steps: usize,
    /// `deltaT`: steps between two allocations.
    pub interval: usize,
    /// `beta1`: smoothing of the sensitivity.
    pub beta1: f64,
    /// `beta2`: smoothing of the uncertainty.
    pub beta2: f64,
}

/// The smoothed importance of one parameter's entries (host values, as small as the factors).
#[derive(Debug, Clone, Default)]
pub struct Smoothed {
    sensitivity: Vec<f32>,
    uncertainty: Vec<f32>,
}

impl Smoothed {
    /// One step's `|θ·g|` into the averages (peft's `update_ipt`).
    pub fn update(&mut self, values: &[f32], grads: &[f32], beta1: f32, beta2: f32) {
        if self.sensitivity.len() != values.len() {
            self.sensitivity = vec![0.0; values.len()];
            self.uncertainty = vec![0.0; values.len()];
        }
        for (i, (v, g)) in values.iter().zip(grads).enumerate() {
            let importance = (v * g).abs();
            self.sensitivity[i] = beta1 * self.sensitivity[i] + (1.0 - beta1) * importance;
            self.uncertainty[i] = beta2 * self.uncertainty[i]
                + (1.0 - beta2) * (importance - self.sensitivity[i]).abs();
        }
    }

    /// Sensitivity times uncertainty, entry by entry (peft's `_element_score`).
    fn score(&self, i: usize) -> f32 {
        self.sensitivity.get(i).copied().unwrap_or(0.0)
            * self.uncertainty.get(i).copied().unwrap_or(0.0)
    }
}

/// AdaLoRA's update on one projection.
#[derive(Module, Debug)]
pub struct SvdDelta {
    /// `P` `[d_in, r]` (peft's `lora_A` transposed).
    pub p: Param<Tensor<2>>,
    /// `λ` `[r]` (peft's `lora_E`).
    pub lambda: Param<Tensor<1>>,
    /// `Q` `[r, d_out]` (peft's `lora_B` transposed).
    pub q: Param<Tensor<2>>,
    /// Dropout on the update's input.
    pub dropout: Dropout,
    /// `α / (r + 1e-5)` with `r` the starting rank (peft's `scaling / ranknum`).
    #[module(skip)]
    pub scale: f64,
    /// peft's `lora_alpha`.
    #[module(skip)]
    pub alpha: f64,
    /// True while the update sits inside the base weight.
    #[module(skip)]
    pub merged: bool,
    /// The last step's gradients of `P`, `λ`, `Q` (host values), kept for the allocation that
    /// follows the optimizer's step, as peft scores the stepped parameters with their gradients.
    #[module(skip)]
    pub pending: Option<[Vec<f32>; 3]>,
    /// The smoothed importance of `P`, `λ`, `Q`.
    #[module(skip)]
    pub importance: [Smoothed; 3],
    /// The allocator's settings (the same in every target).
    #[module(skip)]
    pub allocation: RankAllocation,
    /// The weight of the orthogonality regulariser.
    #[module(skip)]
    pub orth_weight: f64,
    /// The triplets kept once the budget is final (peft's `rank_pattern`).
    #[module(skip)]
    pub final_keep: Option<Vec<bool>>,
    /// The training's total steps, as the allocator last saw them (peft's `total_step`).
    #[module(skip)]
    pub total_steps: usize,
}

impl SvdDelta {
    /// peft's start for a `[d_in, d_out]` projection at rank `rank`: `λ = 0`.
    pub fn new(
        [d_in, d_out]: [usize; 2],
        rank: usize,
        alpha: f64,
        dropout: f64,
        allocation: RankAllocation,
        orth_weight: f64,
        device: &Device,
    ) -> Self {
        let normal = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        Self {
            p: normal.init([d_in, rank], device),
            lambda: Param::from_tensor(Tensor::zeros([rank], device)),
            q: normal.init([rank, d_out], device),
            dropout: DropoutConfig::new(dropout).init(),
            scale: alpha / (rank as f64 + 1e-5),
            alpha,
            merged: false,
            pending: None,
            importance: Default::default(),
            allocation,
            orth_weight,
            final_keep: None,
            total_steps: 0,
        }
    }

    /// The starting rank `r`.
    pub fn rank(&self) -> usize {
        self.p.lazy_shape().dims::<2>()[1]
    }

    /// `[rows, d_in] -> [rows, d_out]`.
    pub fn forward_rows(&self, rows: Tensor<2>) -> Tensor<2> {
        let down = kiln_kernels::matmul(kiln_kernels::dropout(&self.dropout, rows), self.p.val());
        let scaled = down * self.lambda.val().unsqueeze_dim(0);
        kiln_kernels::matmul(scaled, self.q.val()) * self.scale
    }

    /// `(P ⊙ λ)·Q·scale`, `[d_in, d_out]`: what merging adds to the weight.
    pub fn product(&self) -> Tensor<2> {
        (self.p.val() * self.lambda.val().unsqueeze_dim(0)).matmul(self.q.val()) * self.scale
    }

    /// `‖PᵀP − I‖_F + ‖QQᵀ − I‖_F`, the two terms of the orthogonality regulariser.
    pub fn orthogonality(&self) -> Tensor<1> {
        let rank = self.rank();
        let device = self.p.val().device();
        let eye = || Tensor::<2>::eye(rank, &device);
        let p = self.p.val();
        let q = self.q.val();
        let frobenius = |m: Tensor<2>| m.powi_scalar(2).sum().sqrt();
        frobenius(p.clone().transpose().matmul(p) - eye())
            + frobenius(q.clone().matmul(q.transpose()) - eye())
    }

    /// The triplets' scores: `λ_i`'s plus the mean of `P`'s column `i` plus the mean of `Q`'s
    /// row `i` (peft's `mask_to_budget`, which sums them).
    pub fn triplet_scores(&self) -> Vec<f32> {
        let rank = self.rank();
        let [d_in, _] = self.p.lazy_shape().dims::<2>();
        let d_out = self.q.lazy_shape().dims::<2>()[1];
        let [p, lambda, q] = &self.importance;
        (0..rank)
            .map(|i| {
                let column: f32 =
                    (0..d_in).map(|row| p.score(row * rank + i)).sum::<f32>() / d_in as f32;
                let row: f32 =
                    (0..d_out).map(|c| q.score(i * d_out + c)).sum::<f32>() / d_out as f32;
                lambda.score(i) + column + row
            })
            .collect()
    }

    /// Zeroes `λ_i` where `keep[i]` is false (the parameter keeps its id).
    pub fn mask(&mut self, keep: &[bool]) {
        let device = self.lambda.lazy_device();
        let values: Vec<f32> = keep.iter().map(|&k| f32::from(u8::from(k))).collect();
        let len = values.len();
        let mask = Tensor::<1>::from_data(TensorData::new(values, [len]), &device);
        // A fresh leaf, as the optimizer leaves it: the product must not join the next graph.
        self.lambda = self.lambda.clone().map(|l| {
            let tracked = l.is_require_grad();
            let masked = (l * mask).detach();
            if tracked {
                masked.require_grad()
            } else {
                masked
            }
        });
    }
}

/// peft's `budget_schedule`: the total rank budget at `step` of `total_steps`, and whether this
/// step allocates.
pub fn budget(
    allocation: &RankAllocation,
    initial: usize,
    target: usize,
    step: usize,
    total_steps: usize,
) -> (usize, bool) {
    let (tinit, tfinal) = (allocation.warmup_steps, allocation.final_steps);
    if step <= tinit {
        return (initial, false);
    }
    if step > total_steps.saturating_sub(tfinal) {
        return (target, true);
    }
    let span = total_steps
        .saturating_sub(tfinal)
        .saturating_sub(tinit)
        .max(1) as f64;
    let remaining = 1.0 - (step - tinit) as f64 / span;
    let budget = ((initial - target) as f64 * remaining.powi(3) + target as f64) as usize;
    (budget, step.is_multiple_of(allocation.interval.max(1)))
}

/// Host values of a tensor.
pub fn host<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_falls_cubically_between_the_warmups() {
        let allocation = RankAllocation {
            target_rank: 8,
            warmup_steps: 10,
            final_steps: 10,
            interval: 5,
            beta1: 0.85,
            beta2: 0.85,
        };
        // 4 targets from 12 to 8: 48 -> 32 over steps 10..90 of 100.
        assert_eq!(budget(&allocation, 48, 32, 5, 100), (48, false));
        assert_eq!(budget(&allocation, 48, 32, 50, 100), (34, true));
        assert_eq!(budget(&allocation, 48, 32, 51, 100), (33, false));
        assert_eq!(budget(&allocation, 48, 32, 95, 100), (32, true));
    }

    #[test]
    fn the_update_and_its_regulariser_follow_the_formulas() {
        let device = Device::flex();
        let allocation = RankAllocation {
            target_rank: 2,
            warmup_steps: 0,
            final_steps: 0,
            interval: 1,
            beta1: 0.85,
            beta2: 0.85,
        };
        let mut delta = SvdDelta::new([6, 5], 3, 8.0, 0.0, allocation, 0.5, &device);
        let x = Tensor::<2>::random(
            [2, 6],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        assert_eq!(
            delta
                .forward_rows(x.clone())
                .abs()
                .max()
                .into_scalar::<f32>(),
            0.0
        );
        delta.lambda = Param::from_tensor(Tensor::from_data([1.0f32, -2.0, 0.5], &device));
        let direct = delta.forward_rows(x.clone());
        let merged = x.matmul(delta.product());
        assert!((direct - merged).abs().max().into_scalar::<f32>() < 1e-6);
        // Orthonormal P and Q have no penalty.
        delta.p = Param::from_tensor(Tensor::<2>::eye(6, &device).narrow(1, 0, 3));
        delta.q = Param::from_tensor(Tensor::<2>::eye(5, &device).narrow(0, 0, 3));
        assert!(delta.orthogonality().into_scalar::<f32>().abs() < 1e-6);
        delta.mask(&[true, false, true]);
        assert_eq!(host(delta.lambda.val()), vec![1.0, 0.0, 0.5]);
    }
}
