//! Parameterised hypercomplex multiplication (PHM) layers, the projections of Compacter
//! (Karimi Mahabadi et al. 2021, "Compacter: Efficient Low-Rank Hypercomplex Adapter Layers"), as
//! AdapterHub's `PHMLayer` computes them (`adapters/methods/modeling.py`, Compacter++'s defaults:
//! factorised weights, one rule shared by every layer).
//!
//! A `[d_in, d_out]` weight is a sum of `n` Kronecker products, `H = Σ_k S_k ⊗ W_k`, with small
//! "rule" matrices `S_k: [n, n]` (the outer factor) and `W_k = L_k·R_k: [d_in/n, d_out/n]` of rank
//! `r` (`L_k: [d_in/n, r]`, `R_k: [r, d_out/n]`); the layer computes `x·H + b`. The rules are one
//! `[n, n, n]` tensor per adapter, shared by the down- and up-projection of every layer, so a
//! projection itself trains only `r·(d_in + d_out)` numbers (plus its bias).

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// The shape of a PHM projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhmConfig {
    /// `n`: the number of Kronecker terms and the rules' size (AdapterHub's `phm_dim`).
    pub dim: usize,
    /// `r`: the rank of each `W_k` (AdapterHub's `phm_rank`).
    pub rank: usize,
}

impl PhmConfig {
    /// Compacter++'s defaults: `n = 4`, `r = 1`.
    pub fn compacter() -> Self {
        Self { dim: 4, rank: 1 }
    }

    /// The shared rules `[n, n, n]`, `N(0, 1e-4²)` as AdapterHub's `phm_init_range`: small, so a
    /// fresh adapter adds almost nothing.
    pub fn init_rule(&self, device: &Device) -> Param<Tensor<3>> {
        Initializer::Normal {
            mean: 0.0,
            std: 1e-4,
        }
        .init([self.dim, self.dim, self.dim], device)
    }

    /// Whether a `[d_in, d_out]` projection splits into `n` blocks each way.
    pub fn fits(&self, d_in: usize, d_out: usize) -> bool {
        self.dim > 0 && d_in.is_multiple_of(self.dim) && d_out.is_multiple_of(self.dim)
    }

    /// Trained numbers of one projection's factors: `r·(d_in + d_out)`.
    pub fn factor_params(&self, d_in: usize, d_out: usize) -> usize {
        self.rank * (d_in + d_out)
    }
}

/// The factors `L: [n, d_in/n, r]` and `R: [n, r, d_out/n]` of one PHM projection's `W_k = L_k·R_k`.
#[derive(Module, Debug)]
pub struct PhmWeight {
    /// `L` `[n, d_in/n, r]` (AdapterHub's `W_left`).
    pub left: Param<Tensor<3>>,
    /// `R` `[n, r, d_out/n]` (AdapterHub's `W_right`).
    pub right: Param<Tensor<3>>,
}

impl PhmWeight {
    /// Fresh factors for a `[d_in, d_out]` projection: each slice Xavier-normal, as AdapterHub
    /// initialises them (its `hypercomplex_nonlinearity` check takes the Xavier-normal branch for
    /// any non-empty value, its default `glorot-uniform` included).
    pub fn init(d_in: usize, d_out: usize, config: PhmConfig, device: &Device) -> Self {
        let (n, r) = (config.dim, config.rank);
        let xavier = |rows: usize, cols: usize| Initializer::Normal {
            mean: 0.0,
            std: (2.0 / (rows + cols) as f64).sqrt(),
        };
        Self {
            left: xavier(d_in / n, r).init([n, d_in / n, r], device),
            right: xavier(r, d_out / n).init([n, r, d_out / n], device),
        }
    }

    /// `H = Σ_k rule_k ⊗ (L_k·R_k)`, `[d_in, d_out]`: `H[a·i + p, c·o + q] = Σ_k rule[k, a, c] ·
    /// W[k, p, q]` with `i = d_in/n`, `o = d_out/n`.
    pub fn weight(&self, rule: Tensor<3>) -> Tensor<2> {
        let w = self.left.val().matmul(self.right.val());
        let [n, i, o] = w.dims();
        let rule = rule.reshape([n, n * n]).transpose();
        rule.matmul(w.reshape([n, i * o]))
            .reshape([n, n, i, o])
            .swap_dims(1, 2)
            .reshape([n * i, n * o])
    }

    /// `[d_in, d_out]` of the projection.
    pub fn dims(&self) -> [usize; 2] {
        let [n, i, _] = self.left.lazy_shape().dims::<3>();
        let [_, _, o] = self.right.lazy_shape().dims::<3>();
        [n * i, n * o]
    }
}
