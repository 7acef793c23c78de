//! VeRA (Kopiczko, Blankevoort and Asano 2024, "VeRA: Vector-based Random Matrix Adaptation"):
//! one pair of frozen random matrices shared by every targeted projection, `A: [d_in_max, r]` and
//! `B: [r, d_out_max]`, each projection using their first `d_in` rows and `d_out` columns, and two
//! trained vectors per projection: `x ↦ x·W + b + λ_b ⊙ ((dropout(x)·A) ⊙ λ_d)·B` (peft's
//! `tuners/vera/layer.py`). `λ_b` starts at zero, so a fresh delta changes nothing, and `λ_d` at
//! `d_initial` (0.1). Trainable per target `r + d_out`; the update `(A ⊙ λ_d)·B ⊙ λ_b` merges.
//!
//! The shared matrices are Kaiming-uniform as peft draws them (bound `1/sqrt(fan_in)`), from a
//! generator of kiln's own seeded by the projection seed (peft's `projection_prng_key`): the same
//! seed gives the same matrices on every rebuild of a run, but not torch's numbers, so an export
//! carries them (peft's `save_projection`, its default).

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Tensor, TensorData};

/// VeRA's delta on one projection.
#[derive(Module, Debug)]
pub struct VeraDelta {
    /// `[d_in, r]`: the shared `A`'s first `d_in` rows (frozen).
    pub a: Param<Tensor<2>>,
    /// `[r, d_out]`: the shared `B`'s first `d_out` columns (frozen).
    pub b: Param<Tensor<2>>,
    /// `λ_d` `[r]`.
    pub lambda_d: Param<Tensor<1>>,
    /// `λ_b` `[d_out]`.
    pub lambda_b: Param<Tensor<1>>,
    /// Dropout on the delta's input.
    pub dropout: Dropout,
    /// The seed the shared pair was drawn from (what an export records).
    #[module(skip)]
    pub projection_seed: u64,
    /// True while the update sits inside the base weight.
    #[module(skip)]
    pub merged: bool,
}

/// The shared pair, kiln's orientation: `a` `[d_in_max, r]`, `b` `[r, d_out_max]` (peft's
/// `vera_A` and `vera_B` transposed).
#[derive(Debug, Clone)]
pub struct VeraProjections {
    /// `[d_in_max, r]`
    pub a: Tensor<2>,
    /// `[r, d_out_max]`
    pub b: Tensor<2>,
    /// The seed they were drawn from.
    pub seed: u64,
}

/// SplitMix64 (Steele, Lea and Flood 2014): a small generator whose numbers depend on the seed
/// alone, on every machine.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-bound, bound)`.
    fn uniform(&mut self, bound: f32) -> f32 {
        let unit = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * unit - 1.0) * bound
    }
}

impl VeraProjections {
    /// The pair for projections up to `d_in_max` inputs and `d_out_max` outputs, from `seed`:
    /// peft's `vera_A` `[r, d_in_max]` has fan-in `d_in_max`, `vera_B` `[d_out_max, r]` has `r`.
    pub fn new(d_in_max: usize, d_out_max: usize, rank: usize, seed: u64, device: &Device) -> Self {
        let mut rng = SplitMix(seed);
        let mut draw = |count: usize, fan_in: usize| -> Vec<f32> {
            let bound = 1.0 / (fan_in as f32).sqrt();
            (0..count).map(|_| rng.uniform(bound)).collect()
        };
        let a = draw(d_in_max * rank, d_in_max);
        let b = draw(rank * d_out_max, rank);
        Self {
            a: Tensor::from_data(TensorData::new(a, [d_in_max, rank]), device),
            b: Tensor::from_data(TensorData::new(b, [rank, d_out_max]), device),
            seed,
        }
    }

    /// A fresh delta for a `[d_in, d_out]` projection: `λ_b = 0`, `λ_d = d_initial`.
    pub fn delta(&self, d_in: usize, d_out: usize, d_initial: f64, dropout: f64) -> VeraDelta {
        let rank = self.a.dims()[1];
        let device = self.a.device();
        VeraDelta {
            a: Param::from_tensor(self.a.clone().narrow(0, 0, d_in)),
            b: Param::from_tensor(self.b.clone().narrow(1, 0, d_out)),
            lambda_d: Param::from_tensor(Tensor::full([rank], d_initial, &device)),
            lambda_b: Param::from_tensor(Tensor::zeros([d_out], &device)),
            dropout: DropoutConfig::new(dropout).init(),
            projection_seed: self.seed,
            merged: false,
        }
    }
}

impl VeraDelta {
    /// Rank `r`.
    pub fn rank(&self) -> usize {
        self.a.lazy_shape().dims::<2>()[1]
    }

    /// `[rows, d_in] -> [rows, d_out]`: `λ_b ⊙ ((dropout(x)·A) ⊙ λ_d)·B`.
    pub fn forward_rows(&self, rows: Tensor<2>) -> Tensor<2> {
        let down = kiln_kernels::matmul(kiln_kernels::dropout(&self.dropout, rows), self.a.val());
        let scaled = down * self.lambda_d.val().unsqueeze_dim(0);
        kiln_kernels::matmul(scaled, self.b.val()) * self.lambda_b.val().unsqueeze_dim(0)
    }

    /// `(A ⊙ λ_d)·B ⊙ λ_b`, `[d_in, d_out]`: what merging adds to the base weight.
    pub fn product(&self) -> Tensor<2> {
        let a = self.a.val() * self.lambda_d.val().unsqueeze_dim(0);
        a.matmul(self.b.val()) * self.lambda_b.val().unsqueeze_dim(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projections_depend_on_the_seed_alone_and_keep_pefts_bound() {
        let device = Device::flex();
        let one = VeraProjections::new(8, 6, 4, 0, &device);
        let again = VeraProjections::new(8, 6, 4, 0, &device);
        let other = VeraProjections::new(8, 6, 4, 1, &device);
        let values = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().expect("f32");
        assert_eq!(values(one.a.clone()), values(again.a.clone()));
        assert_ne!(values(one.a.clone()), values(other.a));
        let a = values(one.a);
        assert!(a.iter().all(|v| v.abs() <= 1.0 / 8f32.sqrt()));
        assert!(values(one.b).iter().all(|v| v.abs() <= 0.5));
    }

    #[test]
    fn a_fresh_delta_adds_nothing_and_its_product_is_the_forward() {
        let device = Device::flex();
        let shared = VeraProjections::new(8, 6, 4, 0, &device);
        let mut delta = shared.delta(5, 3, 0.1, 0.0);
        let x = Tensor::<2>::random(
            [2, 5],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let fresh = delta
            .forward_rows(x.clone())
            .abs()
            .max()
            .into_scalar::<f32>();
        assert_eq!(fresh, 0.0);
        delta.lambda_b = Param::from_tensor(Tensor::from_data([0.5f32, -1.0, 2.0], &device));
        let direct = delta.forward_rows(x.clone());
        let merged = x.matmul(delta.product());
        let diff = (direct - merged).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "{diff}");
    }
}
