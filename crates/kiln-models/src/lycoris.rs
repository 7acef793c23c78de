//! LoHa and LoKr, the LyCORIS deltas peft carries (Yeh et al. 2024, "Navigating
//! Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation"; LoHa's Hadamard
//! product of two low-rank matrices is FedPara's, Hyeon-Woo et al. 2022). Both build a full-rank
//! update from few parameters and add it to the projection's weight, `x·(W + ΔW) + b`, so the
//! forward costs the base product (the delta's own products are over `r`), and merging is
//! `W + ΔW`.
//!
//! - LoHa: `ΔW = (U1·V1) ⊙ (U2·V2)·alpha/r`, `U: [d_in, r]`, `V: [r, d_out]`; its rank reaches
//!   `r²`. peft's start (`init_weights=True`): every factor Kaiming-uniform but `U2` (peft's
//!   `hada_w2_b`) zero, so `ΔW` starts at zero. Trainable per target `2·r·(d_in + d_out)`.
//! - LoKr: `ΔW = (W1 ⊗ W2)·alpha/r` with `d_in = m·n`, `d_out = l·k` factored as peft's
//!   `factorization` does (nearest to the square root, or `decompose_factor`), `W1: [m, l]` full
//!   and `W2: [n, k]` full or `W2_in·W2_out` of rank `r` when `r < max(n, k)/2`. peft's start: `W1`
//!   zero, the rest Kaiming-uniform. Trainable per target `m·l + n·k` or `m·l + r·(n + k)`.
//!
//! Factors are kept in kiln's `[d_in, d_out]` orientation, the transposes of peft's; the peft
//! format code transposes them.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::low_rank::peft_kaiming_uniform;

/// `[rows, cols]` Kaiming-uniform as torch draws it for a `[cols, rows]` peft parameter, whose
/// fan-in is `rows` (torch's fan-in of a matrix is its second dimension).
fn kaiming(rows: usize, cols: usize, device: &Device) -> Param<Tensor<2>> {
    peft_kaiming_uniform().init_with([rows, cols], Some(rows), None, device)
}

/// LoHa's update `(U1·V1) ⊙ (U2·V2)·scale`.
#[derive(Module, Debug)]
pub struct HadamardDelta {
    /// `[d_in, r]` (peft's `hada_w1_b` transposed).
    pub u1: Param<Tensor<2>>,
    /// `[r, d_out]` (peft's `hada_w1_a` transposed).
    pub v1: Param<Tensor<2>>,
    /// `[d_in, r]` (peft's `hada_w2_b` transposed; starts at zero).
    pub u2: Param<Tensor<2>>,
    /// `[r, d_out]` (peft's `hada_w2_a` transposed).
    pub v2: Param<Tensor<2>>,
    /// `alpha / r`.
    #[module(skip)]
    pub scale: f64,
    /// True while the update sits inside the base weight.
    #[module(skip)]
    pub merged: bool,
}

impl HadamardDelta {
    /// peft's start for a `[d_in, d_out]` projection: `ΔW = 0`.
    pub fn new(d_in: usize, d_out: usize, rank: usize, alpha: f64, device: &Device) -> Self {
        Self {
            // peft's `hada_w1_b` `[r, d_in]` has fan-in `d_in`; `hada_w1_a` `[d_out, r]` has `r`.
            u1: peft_kaiming_uniform().init_with([d_in, rank], Some(d_in), None, device),
            v1: kaiming(rank, d_out, device),
            u2: Param::from_tensor(Tensor::zeros([d_in, rank], device)),
            v2: kaiming(rank, d_out, device),
            scale: alpha / rank as f64,
            merged: false,
        }
    }

    /// Rank `r` of each factor pair.
    pub fn rank(&self) -> usize {
        self.u1.lazy_shape().dims::<2>()[1]
    }

    /// `ΔW`, `[d_in, d_out]`.
    pub fn weight(&self) -> Tensor<2> {
        let first = self.u1.val().matmul(self.v1.val());
        let second = self.u2.val().matmul(self.v2.val());
        first * second * self.scale
    }
}

/// LoKr's update `(W1 ⊗ W2)·scale`, `W2` full or `W2_in·W2_out`.
#[derive(Module, Debug)]
pub struct KroneckerDelta {
    /// `[m, l]` (peft's `lokr_w1` transposed; starts at zero).
    pub w1: Param<Tensor<2>>,
    /// `[n, k]` (peft's `lokr_w2` transposed), when `W2` is full.
    pub w2: Option<Param<Tensor<2>>>,
    /// `[n, r]` (peft's `lokr_w2_b` transposed), when `W2` is factored.
    pub w2_in: Option<Param<Tensor<2>>>,
    /// `[r, k]` (peft's `lokr_w2_a` transposed), when `W2` is factored.
    pub w2_out: Option<Param<Tensor<2>>>,
    /// The method's `r` (a full `W2` does not show it).
    #[module(skip)]
    pub rank: usize,
    /// peft's `decompose_factor` the widths were factored with.
    #[module(skip)]
    pub decompose_factor: i64,
    /// `alpha / r`.
    #[module(skip)]
    pub scale: f64,
    /// True while the update sits inside the base weight.
    #[module(skip)]
    pub merged: bool,
}

/// peft's `factorization(dimension, factor)`: `(m, n)` with `m·n = dimension`, `m <= n`; with
/// `factor > 0` dividing it, `(factor, dimension/factor)`; else the pair nearest the square root
/// whose first number is at most `factor` (any with `-1`).
pub fn factorization(dimension: usize, factor: i64) -> (usize, usize) {
    if factor > 0 && dimension.is_multiple_of(factor as usize) {
        let m = factor as usize;
        return (m, dimension / m);
    }
    let limit = if factor == -1 {
        dimension
    } else {
        factor.max(0) as usize
    };
    let (mut m, mut n) = (1, dimension);
    // peft compares with the first pair's sum throughout, never the current one's.
    let length = 1 + dimension;
    while m < n {
        let mut next = m + 1;
        while !dimension.is_multiple_of(next) {
            next += 1;
        }
        let pair = dimension / next;
        if next + pair > length || next > limit {
            break;
        }
        (m, n) = (next, pair);
    }
    if m > n { (n, m) } else { (m, n) }
}

impl KroneckerDelta {
    /// peft's start for a `[d_in, d_out]` projection (`decompose_both=False`): `ΔW = 0`.
    pub fn new(
        d_in: usize,
        d_out: usize,
        rank: usize,
        alpha: f64,
        factor: i64,
        device: &Device,
    ) -> Self {
        let (m, n) = factorization(d_in, factor);
        let (l, k) = factorization(d_out, factor);
        // peft: `use_w2 = not (r < max(out_k, in_n) / 2)`.
        let full_w2 = 2 * rank >= k.max(n);
        let (w2, w2_in, w2_out) = if full_w2 {
            (Some(kaiming(n, k, device)), None, None)
        } else {
            // peft's `lokr_w2_b` `[r, n]` has fan-in `n`; `lokr_w2_a` `[k, r]` has `r`.
            (
                None,
                Some(peft_kaiming_uniform().init_with([n, rank], Some(n), None, device)),
                Some(kaiming(rank, k, device)),
            )
        };
        Self {
            w1: Param::from_tensor(Tensor::zeros([m, l], device)),
            w2,
            w2_in,
            w2_out,
            rank,
            decompose_factor: factor,
            scale: alpha / rank as f64,
            merged: false,
        }
    }

    /// `W2`, `[n, k]`.
    pub fn second(&self) -> Tensor<2> {
        match (&self.w2, &self.w2_in, &self.w2_out) {
            (Some(w2), _, _) => w2.val(),
            (None, Some(a), Some(b)) => a.val().matmul(b.val()),
            _ => unreachable!("a LoKr delta holds W2 or both of its factors"),
        }
    }

    /// `ΔW = (W1 ⊗ W2)·scale`, `[m·n, l·k] = [d_in, d_out]`.
    pub fn weight(&self) -> Tensor<2> {
        let w1 = self.w1.val();
        let w2 = self.second();
        let ([m, l], [n, k]) = (w1.dims(), w2.dims());
        let product = w1.reshape([m, 1, l, 1]) * w2.reshape([1, n, 1, k]);
        product.reshape([m * n, l * k]) * self.scale
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;

    use super::*;

    #[test]
    fn factorization_is_pefts() {
        // The examples of peft's docstring, and MiniLM's widths.
        assert_eq!(factorization(256, -1), (16, 16));
        assert_eq!(factorization(128, -1), (8, 16));
        assert_eq!(factorization(127, -1), (1, 127));
        assert_eq!(factorization(128, 4), (4, 32));
        assert_eq!(factorization(384, -1), (16, 24));
        assert_eq!(factorization(1536, -1), (32, 48));
    }

    #[test]
    fn the_kronecker_update_is_the_kronecker_product() {
        let device = Device::flex();
        let mut delta = KroneckerDelta::new(4, 6, 8, 8.0, -1, &device);
        // d_in 4 = 2 x 2, d_out 6 = 2 x 3.
        let w1 = [1.0f32, 2.0, 3.0, 4.0];
        delta.w1 = Param::from_tensor(Tensor::from_data(
            TensorData::new(w1.to_vec(), [2, 2]),
            &device,
        ));
        let w2: Vec<f32> = (0..6).map(|i| i as f32).collect();
        delta.w2 = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(w2.clone(), [2, 3]),
            &device,
        )));
        let got = delta.weight().into_data().try_to_vec::<f32>().expect("f32");
        for (row, values) in got.chunks(6).enumerate() {
            for (col, value) in values.iter().enumerate() {
                let expected = w1[(row / 2) * 2 + col / 3] * w2[(row % 2) * 3 + col % 3];
                assert_eq!(*value, expected, "[{row}, {col}]");
            }
        }
    }

    #[test]
    fn fresh_updates_are_zero() {
        let device = Device::flex();
        let loha = HadamardDelta::new(6, 5, 2, 4.0, &device).weight();
        let lokr = KroneckerDelta::new(6, 4, 1, 1.0, -1, &device).weight();
        for weight in [loha, lokr] {
            assert_eq!(weight.abs().max().into_scalar::<f32>(), 0.0);
        }
    }
}
