//! LoReFT, low-rank linear subspace representation fine-tuning (Wu et al. 2024, "ReFT:
//! Representation Finetuning for Language Models"), as AdapterHub computes it
//! (`adapters/methods/reft.py`, `LoReftConfig`): the frozen model's hidden representations are
//! edited instead of its weights.
//!
//! After a layer, the states `h` of the first `p` and the last `s` real tokens of each text become
//! `h + Rᵀ(W·h + b − R·h)`: within the `r`-dimensional subspace spanned by the orthonormal rows of
//! `R: [r, h]`, the projection `R·h` is replaced by the learned `W·h + b`. Dropout acts on the
//! edited states (AdapterHub's placement). One unit (`W`, `b`, `R`) edits the prefix positions and
//! another the suffix positions, or one for both with tied weights.
//!
//! `R`'s rows are kept orthonormal as `R = GramSchmidt(U)` of a trained `U: [r, h]`. AdapterHub and
//! the authors use torch's Householder parametrisation relative to a stored `[h, h]` frame
//! instead; both reach every matrix with orthonormal rows, and kiln's needs no frozen buffer, so a
//! run can be rebuilt from what it trained. Imports and exports convert between the two.
//! Trainable numbers per layer and unit: `2·r·h + r`.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::{Bool, Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::low_rank::peft_kaiming_uniform;
use crate::tunable::linear_rows;

/// LoReFT's settings (AdapterHub's `LoReftConfig` defaults: `p = 3`, `s = 0`, `r = 1`, untied,
/// dropout 0.05).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReftConfig {
    /// `p`: the first `p` real tokens of each text are edited.
    pub prefix_positions: usize,
    /// `s`: the last `s` real tokens of each text are edited.
    pub suffix_positions: usize,
    /// `r`: the rank of the edited subspace.
    pub rank: usize,
    /// One unit for prefix and suffix positions instead of one each.
    pub tied: bool,
    /// Dropout on the edited states.
    pub dropout: f64,
}

impl Default for ReftConfig {
    fn default() -> Self {
        Self {
            prefix_positions: 3,
            suffix_positions: 0,
            rank: 1,
            tied: false,
            dropout: 0.05,
        }
    }
}

impl ReftConfig {
    /// Units per layer: one when tied, else one for each non-empty group of positions.
    pub fn units(&self) -> usize {
        if self.tied {
            1
        } else {
            usize::from(self.prefix_positions > 0) + usize::from(self.suffix_positions > 0)
        }
    }

    /// Trainable numbers per layer on a model of width `h`: `units · (2·r·h + r)`.
    pub fn params_per_layer(&self, width: usize) -> usize {
        self.units() * (2 * self.rank * width + self.rank)
    }

    /// One layer's intervention, freshly initialised: `W`, `b` and `U` uniform in `±1/sqrt(h)`
    /// (torch's `nn.Linear` default, as AdapterHub leaves them).
    pub fn init(&self, width: usize, device: &Device) -> ReftIntervention {
        let unit = || ReftUnit {
            source: LinearConfig::new(width, self.rank)
                .with_initializer(peft_kaiming_uniform())
                .init(device),
            rotation: peft_kaiming_uniform().init_with(
                [self.rank, width],
                Some(width),
                None,
                device,
            ),
        };
        let source = |on: bool| on.then(unit);
        let (prefix, suffix) = if self.tied {
            (Some(unit()), None)
        } else {
            (
                source(self.prefix_positions > 0),
                source(self.suffix_positions > 0),
            )
        };
        ReftIntervention {
            prefix,
            suffix,
            dropout: DropoutConfig::new(self.dropout).init(),
            config: *self,
        }
    }
}

/// One edit `h ↦ h + Rᵀ(W·h + b − R·h)`.
#[derive(Module, Debug)]
pub struct ReftUnit {
    /// `W·h + b`, `[h, r]` in Burn's layout.
    pub source: Linear,
    /// `U: [r, h]`, whose Gram–Schmidt rows are `R`.
    pub rotation: Param<Tensor<2>>,
}

impl ReftUnit {
    /// `R`: the rows of `U` made orthonormal one after another (Gram–Schmidt).
    pub fn projection(&self) -> Tensor<2> {
        orthonormal_rows(self.rotation.val())
    }

    /// The edited states of every position, `[batch, seq, h]`.
    fn edit(&self, hidden: Tensor<3>) -> Tensor<3> {
        let r = self.projection();
        let target = linear_rows(&self.source, hidden.clone());
        let [batch, seq, width] = hidden.dims();
        let rows = hidden.clone().reshape([batch * seq, width]);
        let projected = rows.matmul(r.clone().transpose());
        let rank = projected.dims()[1];
        let change = target.reshape([batch * seq, rank]) - projected;
        hidden + change.matmul(r).reshape([batch, seq, width])
    }
}

/// The rows of `u` made orthonormal in order: `r_j = normalise(u_j − Σ_{k<j} (u_j·r_k) r_k)`.
pub fn orthonormal_rows(u: Tensor<2>) -> Tensor<2> {
    let rows = u.dims()[0];
    let mut done: Vec<Tensor<2>> = Vec::with_capacity(rows);
    for j in 0..rows {
        let mut row = u.clone().slice_dim(0, j..j + 1);
        for earlier in &done {
            let along = (row.clone() * earlier.clone()).sum_dim(1);
            row = row - earlier.clone() * along;
        }
        let norm = row.clone().powi_scalar(2).sum_dim(1).sqrt();
        done.push(row / norm);
    }
    Tensor::cat(done, 0)
}

/// One layer's LoReFT edits.
#[derive(Module, Debug)]
pub struct ReftIntervention {
    /// The unit of the prefix positions (of both when tied).
    pub prefix: Option<ReftUnit>,
    /// The unit of the suffix positions (untied only).
    pub suffix: Option<ReftUnit>,
    /// Dropout on the edited states.
    pub dropout: Dropout,
    /// Positions, rank, tying.
    #[module(skip)]
    pub config: ReftConfig,
}

impl ReftIntervention {
    /// Width `h` of the states it edits.
    pub fn width(&self) -> usize {
        self.prefix
            .as_ref()
            .or(self.suffix.as_ref())
            .map_or(0, |unit| unit.rotation.lazy_shape().dims::<2>()[1])
    }

    /// The layer's output `hidden` `[batch, seq, h]` with the positions in `positions` edited.
    /// Both groups read the unedited states; where they overlap the suffix's edit is the one
    /// kept, as AdapterHub writes it last.
    pub fn forward(&self, hidden: Tensor<3>, positions: &ReftPositions) -> Tensor<3> {
        let width = hidden.dims()[2];
        let suffix_unit = if self.config.tied {
            self.prefix.as_ref()
        } else {
            self.suffix.as_ref()
        };
        let mut out = hidden.clone();
        for (unit, mask) in [
            (self.prefix.as_ref(), &positions.prefix),
            (suffix_unit, &positions.suffix),
        ] {
            if let (Some(unit), Some(mask)) = (unit, mask) {
                let edited = kiln_kernels::dropout(&self.dropout, unit.edit(hidden.clone()));
                let [batch, seq] = mask.dims();
                let mask = mask
                    .clone()
                    .reshape([batch, seq, 1])
                    .expand([batch, seq, width]);
                out = out.mask_where(mask, edited);
            }
        }
        out
    }
}

/// Which positions LoReFT edits, `[batch, seq]` masks (`None` for an empty group), worked out
/// once per forward pass from the attention mask: the first `p` and the last `s` attended
/// tokens of each row, whichever side the padding is on.
#[derive(Debug, Clone)]
pub struct ReftPositions {
    /// The first `p` attended tokens.
    pub prefix: Option<Tensor<2, Bool>>,
    /// The last `s` attended tokens.
    pub suffix: Option<Tensor<2, Bool>>,
}

impl ReftPositions {
    /// The positions of `config` in a batch whose attention mask (1 token, 0 padding) is
    /// `attention_mask` `[batch, seq]`.
    pub fn new(config: &ReftConfig, attention_mask: &Tensor<2, Int>) -> Self {
        let attended = attention_mask.clone().equal_elem(1);
        // 1 for the first attended token, 2 for the second, ...
        let rank = attention_mask.clone().cumsum(1);
        let count = attention_mask.clone().sum_dim(1);
        let dims = attention_mask.dims();
        let (p, s) = (config.prefix_positions, config.suffix_positions);
        Self {
            prefix: (p > 0).then(|| {
                attended
                    .clone()
                    .bool_and(rank.clone().lower_equal_elem(p as i64))
            }),
            suffix: (s > 0).then(|| {
                // Ranks above `count - s` are the last `s`.
                let before_suffix = (count - s as i64).expand(dims);
                attended.bool_and(rank.greater(before_suffix))
            }),
        }
    }
}
