//! The side network of side-tuning (Zhang et al. 2020, "Side-Tuning: A Baseline for Network
//! Adaptation via Additive Side Networks"): a small network beside the frozen backbone whose
//! output is blended with the backbone's features as `alpha·base + (1 - alpha)·side`. As in the
//! authors' code (jozhang97/side-tuning, the `Alpha` merge), `alpha = sigmoid(a)` with `a` a
//! trained scalar starting at 0; a fixed `alpha` or a linear curriculum is the alternative.
//!
//! kiln's side network is a deliberate lightweight variant: it reads the input's token
//! embeddings (the backbone's own, frozen), mean-pooled over the real tokens, through a two-layer
//! MLP `h → w → h` whose output layer starts at zero: a bag-of-embeddings model that learns what
//! the frozen features miss, at `2hw + w + h` parameters (`+ 1` for a trained `alpha`). The
//! paper's side networks are whole smaller networks on the input (copies or distillations of
//! the base); those are not built here.

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Side-tuning's side network and blend.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SideConfig {
    /// Width `w` of the MLP's hidden layer.
    pub width: usize,
    /// Weight of the backbone's features at the start of training; `None` trains it as
    /// `sigmoid(a)`, `a` starting at 0 (the authors' default).
    pub alpha: Option<f64>,
    /// Weight at the end of training and at inference; equal to `alpha` for a fixed blend.
    pub alpha_end: f64,
}

impl SideConfig {
    /// The network on features of width `features`.
    pub fn init(&self, features: usize, device: &Device) -> SideNetwork {
        SideNetwork {
            hidden: LinearConfig::new(features, self.width).init(device),
            // Zero: training starts from `alpha·base`, the frozen features alone, and the side
            // network adds what they miss.
            output: LinearConfig::new(self.width, features)
                .with_initializer(Initializer::Zeros)
                .init(device),
            alpha_logit: self
                .alpha
                .is_none()
                .then(|| Param::from_tensor(Tensor::zeros([1], device))),
            blend: AlphaCurriculum {
                start: self.alpha.unwrap_or(0.5),
                end: self.alpha_end,
                now: self.alpha.unwrap_or(0.5),
            },
        }
    }

    /// Parameters of the side network on features of width `h`: `2hw + w + h`, and 1 for a
    /// trained `alpha`.
    pub fn num_params(&self, features: usize) -> usize {
        2 * features * self.width + self.width + features + usize::from(self.alpha.is_none())
    }
}

/// `alpha` moves linearly from `start` to `end` over training (Zhang et al.'s curriculum).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AlphaCurriculum {
    /// `alpha` at the start of training.
    pub start: f64,
    /// `alpha` at the end and at inference.
    pub end: f64,
    /// The training steps' current value.
    pub now: f64,
}

/// A two-layer MLP beside the backbone, blended with its features.
#[derive(Module, Debug)]
pub struct SideNetwork {
    /// `h -> w`.
    pub hidden: Linear,
    /// `w -> h`.
    pub output: Linear,
    /// `a` of a trained `alpha = sigmoid(a)`; `None` for a fixed or scheduled one.
    pub alpha_logit: Option<Param<Tensor<1>>>,
    /// The blend's weight over training when it is not trained.
    #[module(skip)]
    pub blend: AlphaCurriculum,
}

impl SideNetwork {
    /// Side features `[batch, h]` from pooled embeddings `[batch, h]`.
    pub fn forward(&self, pooled_embeddings: Tensor<2>) -> Tensor<2> {
        self.output
            .forward(gelu(self.hidden.forward(pooled_embeddings)))
    }

    /// `alpha·base + (1 - alpha)·side`: the trained `sigmoid(a)`, else the curriculum's value
    /// while training (autodiff device) and the final value at inference.
    pub fn blend(&self, base: Tensor<2>, side: Tensor<2>) -> Tensor<2> {
        if let Some(logit) = &self.alpha_logit {
            let alpha = sigmoid(logit.val()).unsqueeze_dim::<2>(0);
            return base * alpha.clone() + side * (alpha.neg() + 1.0);
        }
        let alpha = if base.device().is_autodiff() {
            self.blend.now
        } else {
            self.blend.end
        };
        base * alpha + side * (1.0 - alpha)
    }

    /// Sets the curriculum to `progress` (0 at the first step, 1 at the end of training).
    pub fn set_progress(&mut self, progress: f64) {
        let progress = progress.clamp(0.0, 1.0);
        self.blend.now = self.blend.start + (self.blend.end - self.blend.start) * progress;
    }
}
