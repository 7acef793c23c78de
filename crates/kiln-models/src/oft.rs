//! OFT (Qiu et al. 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning"), as
//! peft 0.21's `OFTRotationModule` computes it: the projection's input is rotated by a
//! block-diagonal matrix `R = diag(R_1, ..., R_n)` before the frozen weight, `x ↦ (x·R)·W + b`.
//! Each block `R_i` (`b × b`, `n = d_in / b`) is the Cayley transform of a skew-symmetric `Q_i`,
//! `R = (I + Q)(I − Q)⁻¹`, taken as peft's default Neumann series `I + 2Q + 2Q² + ... + Qᵗ⁻¹`
//! (`num_cayley_neumann_terms`, 5), so only products are needed. `Q_i` is kept as its
//! `b(b−1)/2` upper-triangle entries (peft's `oft_R.weight`), starting at zero: `R = I` and the
//! model starts unchanged. Trainable per target `n·b(b−1)/2`. Merging writes `R·W`.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};

/// OFT's rotation on one projection's input.
#[derive(Module, Debug)]
pub struct OrthogonalRotation {
    /// `[blocks, b(b−1)/2]`: each block's skew-symmetric `Q` by its upper triangle, row by row.
    pub weight: Param<Tensor<2>>,
    /// `b`.
    #[module(skip)]
    pub block_size: usize,
    /// Terms of the Neumann series for the Cayley transform.
    #[module(skip)]
    pub neumann_terms: usize,
    /// The base weight before merging, to unmerge exactly (the truncated series is only
    /// nearly orthogonal, so `Rᵀ` would not undo it).
    #[module(skip)]
    pub unmerged_weight: Option<Tensor<2>>,
}

impl OrthogonalRotation {
    /// `R = I` for a projection of `d_in` inputs in blocks of `block_size`.
    pub fn new(d_in: usize, block_size: usize, neumann_terms: usize, device: &Device) -> Self {
        let blocks = d_in / block_size;
        let entries = block_size * (block_size - 1) / 2;
        Self {
            weight: Param::from_tensor(Tensor::zeros([blocks, entries], device)),
            block_size,
            neumann_terms,
            unmerged_weight: None,
        }
    }

    /// Whether the rotation is folded into the weight.
    pub fn merged(&self) -> bool {
        self.unmerged_weight.is_some()
    }

    /// Each block's `Q` `[blocks, b, b]`: `Q[i][j] = v`, `Q[j][i] = −v` for the upper-triangle
    /// entries in order, as a product with a constant ±1 selection so gradients flow.
    fn skew(&self) -> Tensor<3> {
        let b = self.block_size;
        let weight = self.weight.val();
        let [blocks, entries] = weight.dims();
        let mut selection = vec![0.0f32; entries * b * b];
        let mut k = 0;
        for i in 0..b {
            for j in i + 1..b {
                selection[k * b * b + i * b + j] = 1.0;
                selection[k * b * b + j * b + i] = -1.0;
                k += 1;
            }
        }
        let selection = Tensor::<2>::from_data(
            TensorData::new(selection, [entries, b * b]),
            &weight.device(),
        );
        weight.matmul(selection).reshape([blocks, b, b])
    }

    /// The blocks `R_i` `[blocks, b, b]`, by peft's `_cayley_batch` series.
    pub fn blocks(&self) -> Tensor<3> {
        let q = self.skew();
        let [blocks, b, _] = q.dims();
        let identity: Tensor<3> = Tensor::<2>::eye(b, &q.device())
            .unsqueeze_dim::<3>(0)
            .expand([blocks, b, b]);
        let terms = self.neumann_terms;
        let mut r = identity;
        if terms > 1 {
            r = r + q.clone() * 2.0;
            if terms > 2 {
                let squared = q.clone().matmul(q.clone());
                r = r + squared.clone() * 2.0;
                let mut power = squared;
                for _ in 3..terms - 1 {
                    power = power.matmul(q.clone());
                    r = r + power.clone() * 2.0;
                }
                power = power.matmul(q);
                r = r + power;
            }
        }
        r
    }

    /// `[rows, d_in] -> [rows, d_in]`: each block of the input times its `R_i`.
    pub fn rotate(&self, rows: Tensor<2>) -> Tensor<2> {
        let [count, d_in] = rows.dims();
        let b = self.block_size;
        let blocked = rows.reshape([count, d_in / b, b]).swap_dims(0, 1);
        blocked
            .matmul(self.blocks())
            .swap_dims(0, 1)
            .reshape([count, d_in])
    }

    /// `R·W` for the `[d_in, d_out]` weight.
    pub fn rotate_weight(&self, weight: Tensor<2>) -> Tensor<2> {
        let [d_in, d_out] = weight.dims();
        let b = self.block_size;
        self.blocks()
            .matmul(weight.reshape([d_in / b, b, d_out]))
            .reshape([d_in, d_out])
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    #[test]
    fn blocks_are_the_cayley_series_of_a_skew_matrix_and_nearly_orthogonal() {
        let device = Device::flex();
        let mut rotation = OrthogonalRotation::new(8, 4, 5, &device);
        rotation.weight = Param::from_tensor(Tensor::random(
            [2, 6],
            Distribution::Normal(0.0, 0.05),
            &device,
        ));
        let q = rotation.skew();
        let antisymmetry = (q.clone() + q.clone().swap_dims(1, 2)).abs().max();
        assert_eq!(antisymmetry.into_scalar::<f32>(), 0.0);
        // I + 2Q + 2Q² + 2Q³ + Q⁴ by hand.
        let q2 = q.clone().matmul(q.clone());
        let q3 = q2.clone().matmul(q.clone());
        let q4 = q3.clone().matmul(q.clone());
        let eye: Tensor<3> = Tensor::<2>::eye(4, &device)
            .unsqueeze_dim::<3>(0)
            .expand([2, 4, 4]);
        let series = eye.clone() + q * 2.0 + q2 * 2.0 + q3 * 2.0 + q4;
        let r = rotation.blocks();
        let diff = (r.clone() - series).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "{diff}");
        // Small Q: R·Rᵀ is I up to the series' truncation.
        let gram = r.clone().matmul(r.swap_dims(1, 2));
        let off = (gram - eye).abs().max().into_scalar::<f32>();
        assert!(off < 1e-3, "{off}");
    }

    #[test]
    fn rotating_the_input_is_rotating_the_weight() {
        let device = Device::flex();
        let mut rotation = OrthogonalRotation::new(8, 4, 5, &device);
        rotation.weight = Param::from_tensor(Tensor::random(
            [2, 6],
            Distribution::Normal(0.0, 0.3),
            &device,
        ));
        let x = Tensor::<2>::random([3, 8], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([8, 5], Distribution::Normal(0.0, 1.0), &device);
        let by_input = rotation.rotate(x.clone()).matmul(w.clone());
        let by_weight = x.matmul(rotation.rotate_weight(w));
        let diff = (by_input - by_weight).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "{diff}");
    }
}
