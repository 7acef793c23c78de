//! Monarch matrices (Dao et al. 2022, "Monarch: Expressive Structured Matrices for Efficient and
//! Accurate Training"; used by Fu et al. 2023, Monarch Mixer): a product of two block-diagonal
//! factors with fixed permutations between and after them, `M = P2 · B2 · P1 · B1`, following
//! `blockdiag_butterfly_multiply` of the reference code (HazyResearch/m2).
//!
//! For a square `n x n` Monarch with `k` blocks each factor holds `n²/k` numbers; with
//! `k = sqrt(n)` that is `2 n^1.5` parameters and multiply-adds per vector, against `n²` dense.
//! M2-BERT's dimension mixer uses the first factor alone ([`BlockDiagonal`]).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

use crate::error::ModelError;

/// A block-diagonal linear map: `blocks` independent `in/blocks -> out/blocks` maps side by side.
#[derive(Module, Debug)]
pub struct BlockDiagonal {
    /// `[blocks, out / blocks, in / blocks]`, as the reference code's `BlockdiagLinear.weight`.
    pub weight: Param<Tensor<3>>,
    /// Bias `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
}

/// Shape of a block-diagonal linear layer.
#[derive(Config, Debug)]
pub struct BlockDiagonalConfig {
    /// Inputs.
    pub d_input: usize,
    /// Outputs.
    pub d_output: usize,
    /// Blocks (a divisor of both).
    pub blocks: usize,
    /// Whether it has a bias.
    #[config(default = true)]
    pub bias: bool,
}

impl BlockDiagonalConfig {
    /// The layer at random initialisation.
    pub fn init(&self, device: &Device) -> crate::Result<BlockDiagonal> {
        let (blocks, d_in, d_out) = (self.blocks, self.d_input, self.d_output);
        if blocks == 0 || !d_in.is_multiple_of(blocks) || !d_out.is_multiple_of(blocks) {
            return Err(ModelError::InvalidInput(format!(
                "{blocks} blocks must divide both widths {d_in} and {d_out}"
            )));
        }
        let (p, q) = (d_in / blocks, d_out / blocks);
        // Each block initialised as a `p -> q` linear layer would be (Kaiming uniform).
        let bound = 1.0 / (p as f64).sqrt();
        let uniform = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        Ok(BlockDiagonal {
            weight: uniform.init_with([blocks, q, p], Some(p), Some(q), device),
            bias: self
                .bias
                .then(|| uniform.init_with([d_out], Some(p), Some(q), device)),
        })
    }
}

impl BlockDiagonal {
    /// Blocks.
    pub fn blocks(&self) -> usize {
        self.weight.shape().dims::<3>()[0]
    }

    /// Outputs.
    pub fn d_output(&self) -> usize {
        let [blocks, q, _] = self.weight.shape().dims::<3>();
        blocks * q
    }

    /// `[rows, in] -> [rows, out]`.
    pub fn forward_rows(&self, x: Tensor<2>) -> Tensor<2> {
        let [rows, width] = x.dims();
        let [blocks, q, p] = self.weight.shape().dims::<3>();
        debug_assert_eq!(width, blocks * p);
        // [blocks, rows, p] x [blocks, p, q] -> [blocks, rows, q]
        let x = x.reshape([rows, blocks, p]).swap_dims(0, 1);
        let out = x
            .matmul(self.weight.val().swap_dims(1, 2))
            .swap_dims(0, 1)
            .reshape([rows, blocks * q]);
        match &self.bias {
            Some(bias) => out + bias.val().unsqueeze_dim::<2>(0),
            None => out,
        }
    }

    /// Any leading shape: `[..., in] -> [..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let width = dims[D - 1];
        let rows = x.shape().num_elements() / width.max(1);
        let mut out_dims = dims;
        out_dims[D - 1] = self.d_output();
        self.forward_rows(x.reshape([rows, width]))
            .reshape(out_dims)
    }
}

/// Shape of a Monarch layer.
#[derive(Config, Debug)]
pub struct MonarchConfig {
    /// Inputs.
    pub d_input: usize,
    /// Outputs.
    pub d_output: usize,
    /// Blocks of each factor (`sqrt(n)` gives the `n^1.5` cost).
    pub blocks: usize,
    /// Whether it has a bias.
    #[config(default = true)]
    pub bias: bool,
}

/// `M = P2 · B2 · P1 · B1`: `B1` maps `k·p -> k·q` in `k` blocks, `P1` regroups the `k·q` values
/// as an `q x k` grid read by columns, `B2` maps them `k·q -> k·s` in `k` blocks, and `P2` reads
/// the `k x s` result by columns.
#[derive(Module, Debug)]
pub struct Monarch {
    /// `B1`.
    pub first: BlockDiagonal,
    /// `B2`.
    pub second: BlockDiagonal,
    /// Bias `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl MonarchConfig {
    /// The layer at random initialisation.
    pub fn init(&self, device: &Device) -> crate::Result<Monarch> {
        let k = self.blocks;
        if k == 0 || !self.d_input.is_multiple_of(k) || !self.d_output.is_multiple_of(k) {
            return Err(ModelError::InvalidInput(format!(
                "{k} blocks must divide both widths {} and {}",
                self.d_input, self.d_output
            )));
        }
        // The middle width: the larger side keeps the factors square-ish, as the reference.
        let middle = self.d_input.max(self.d_output);
        let factor = |d_in, d_out| {
            BlockDiagonalConfig::new(d_in, d_out, k)
                .with_bias(false)
                .init(device)
        };
        let bound = 1.0 / (self.d_input as f64).sqrt();
        Ok(Monarch {
            first: factor(self.d_input, middle)?,
            second: factor(middle, self.d_output)?,
            bias: self.bias.then(|| {
                Initializer::Uniform {
                    min: -bound,
                    max: bound,
                }
                .init([self.d_output], device)
            }),
        })
    }
}

impl Monarch {
    /// `[rows, in] -> [rows, out]`.
    pub fn forward_rows(&self, x: Tensor<2>) -> Tensor<2> {
        let rows = x.dims()[0];
        let k = self.first.blocks();
        let middle = self.first.d_output();
        let q = middle / k;
        // P1: the k·q values in (k, q) order are read as a (q, k) grid and transposed.
        let mixed = self
            .first
            .forward_rows(x)
            .reshape([rows, q, k])
            .swap_dims(1, 2)
            .reshape([rows, middle]);
        let out = self.second.forward_rows(mixed);
        let s = self.second.d_output() / k;
        // P2: the (k, s) result read by columns.
        let out = out
            .reshape([rows, k, s])
            .swap_dims(1, 2)
            .reshape([rows, k * s]);
        match &self.bias {
            Some(bias) => out + bias.val().unsqueeze_dim::<2>(0),
            None => out,
        }
    }

    /// `M · x` over the last axis.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let width = dims[D - 1];
        let rows = x.shape().num_elements() / width.max(1);
        let mut out_dims = dims;
        out_dims[D - 1] = self.second.d_output();
        self.forward_rows(x.reshape([rows, width]))
            .reshape(out_dims)
    }

    /// Multiplies per input row (the two factors' weights), against `d_input · d_output` for a
    /// dense layer.
    pub fn num_multiplies_per_row(&self) -> usize {
        self.first.weight.shape().num_elements() + self.second.weight.shape().num_elements()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceChoice;
    use burn::tensor::TensorData;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("floats")
    }

    /// The dense `[out, in]` matrix of a block-diagonal weight `[k, q, p]`.
    fn block_diagonal_dense(weight: &[f32], k: usize, q: usize, p: usize) -> Vec<Vec<f32>> {
        let mut dense = vec![vec![0.0; k * p]; k * q];
        for b in 0..k {
            for j in 0..q {
                for i in 0..p {
                    dense[b * q + j][b * p + i] = weight[(b * q + j) * p + i];
                }
            }
        }
        dense
    }

    /// The permutation reading `rows x cols` values (row-major) column by column.
    fn transpose_permutation(rows: usize, cols: usize) -> Vec<Vec<f32>> {
        let n = rows * cols;
        let mut perm = vec![vec![0.0; n]; n];
        for r in 0..rows {
            for c in 0..cols {
                // Output position c * rows + r takes input position r * cols + c.
                perm[c * rows + r][r * cols + c] = 1.0;
            }
        }
        perm
    }

    fn matmul(a: &[Vec<f32>], b: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let inner = b.len();
        a.iter()
            .map(|row| {
                (0..b[0].len())
                    .map(|j| (0..inner).map(|t| row[t] * b[t][j]).sum())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn monarch_equals_its_dense_reconstruction() {
        let device = DeviceChoice::Cpu.device().expect("cpu");
        // 12 -> 12 with 3 blocks (p = q = s = 4), and 8 -> 12 with 2 blocks (rectangular).
        for (d_in, d_out, k) in [(12, 12, 3), (8, 12, 2), (16, 16, 4)] {
            let monarch = MonarchConfig::new(d_in, d_out, k)
                .with_bias(false)
                .init(&device)
                .expect("monarch");
            let middle = d_in.max(d_out);
            let (p, q, s) = (d_in / k, middle / k, d_out / k);
            let b1 = block_diagonal_dense(&values(monarch.first.weight.val()), k, q, p);
            let b2 = block_diagonal_dense(&values(monarch.second.weight.val()), k, s, q);
            // M = P2 · B2 · P1 · B1, with P1 reading the k·q values as a (q, k) grid by columns
            // and P2 reading the (k, s) result by columns.
            let p1 = transpose_permutation(q, k);
            let p2 = transpose_permutation(k, s);
            let dense = matmul(&p2, &matmul(&b2, &matmul(&p1, &b1)));

            let rows = 3;
            let x: Vec<f32> = (0..rows * d_in)
                .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
                .collect();
            let input = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, d_in]), &device);
            let got = values(monarch.forward_rows(input));
            for r in 0..rows {
                for o in 0..d_out {
                    let want: f32 = (0..d_in).map(|i| dense[o][i] * x[r * d_in + i]).sum();
                    let have = got[r * d_out + o];
                    assert!(
                        (want - have).abs() < 1e-4,
                        "{d_in}->{d_out}/{k}: {want} vs {have}"
                    );
                }
            }
            // Two factors of n²/k each: 2 n^1.5 at k = sqrt(n).
            assert_eq!(monarch.num_multiplies_per_row(), k * q * p + k * s * q);
        }
    }

    #[test]
    fn block_diagonal_is_a_block_diagonal_matrix() {
        let device = DeviceChoice::Cpu.device().expect("cpu");
        let layer = BlockDiagonalConfig::new(6, 4, 2)
            .init(&device)
            .expect("layer");
        let dense = block_diagonal_dense(&values(layer.weight.val()), 2, 2, 3);
        let bias = values(layer.bias.as_ref().expect("bias").val());
        let x: Vec<f32> = (0..12).map(|i| i as f32 / 5.0 - 1.0).collect();
        let got = values(layer.forward(Tensor::<3>::from_data(
            TensorData::new(x.clone(), [2, 1, 6]),
            &device,
        )));
        for r in 0..2 {
            for o in 0..4 {
                let want: f32 = bias[o] + (0..6).map(|i| dense[o][i] * x[r * 6 + i]).sum::<f32>();
                assert!((want - got[r * 4 + o]).abs() < 1e-5);
            }
        }
        assert!(BlockDiagonalConfig::new(6, 4, 4).init(&device).is_err());
    }
}
