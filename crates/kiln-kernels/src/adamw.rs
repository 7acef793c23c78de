//! AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization") as Burn's `AdamW`
//! computes it, with the whole update of a parameter (both moments, bias correction, decoupled
//! decay, the step) in one parallel pass over its memory, in place where the buffers are not
//! shared, instead of a dozen element-wise ops each allocating a tensor.
//!
//! Its state is Burn's own `AdamWState`, so checkpoints written with Burn's `AdamW` resume with
//! this one and back. On backends other than flex it is Burn's `AdamW`.

use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use burn::backend::{Dispatch, Flex, backend_extension, tensor::FloatTensor};
use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use crate::fused;

/// AdamW's settings (Burn's and PyTorch's defaults but epsilon, which callers set).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedAdamWConfig {
    /// Decay rate of the first-moment estimate.
    pub beta_1: f32,
    /// Decay rate of the second-moment estimate.
    pub beta_2: f32,
    /// Added to the root of the second moment, against division by zero.
    pub epsilon: f32,
    /// Decoupled weight decay, applied as `w -= lr * weight_decay * w`.
    pub weight_decay: f32,
}

impl Default for FusedAdamWConfig {
    fn default() -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl FusedAdamWConfig {
    /// The same settings with `weight_decay`.
    pub fn with_weight_decay(self, weight_decay: f32) -> Self {
        Self {
            weight_decay,
            ..self
        }
    }

    /// The same settings with `epsilon`.
    pub fn with_epsilon(self, epsilon: f32) -> Self {
        Self { epsilon, ..self }
    }

    /// The optimizer these settings describe.
    pub fn init(&self) -> FusedAdamW {
        FusedAdamW {
            config: *self,
            unfused: AdamWConfig::new()
                .with_beta_1(self.beta_1)
                .with_beta_2(self.beta_2)
                .with_epsilon(self.epsilon)
                .with_weight_decay(self.weight_decay)
                .build(),
        }
    }
}

/// The optimizer: the fused update on flex, Burn's `AdamW` elsewhere.
#[derive(Clone)]
pub struct FusedAdamW {
    config: FusedAdamWConfig,
    unfused: AdamW,
}

/// One update's scalars: the config, the rate and the step number (from 1).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    /// The optimizer's settings.
    pub config: FusedAdamWConfig,
    /// The learning rate of this step.
    pub lr: f32,
    /// Steps taken so far, this one included (for the bias corrections).
    pub time: usize,
}

/// The optimizer update as a backend operation: returns the parameter and both moments.
#[backend_extension(Flex)]
pub trait OptimizerBackend: burn::backend::Backend {
    /// One AdamW step of `param` with `grad` and its moments, in place where they own their buffers.
    #[allow(clippy::too_many_arguments)]
    fn kiln_adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
        lr: f32,
        time: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// `[sum(x^2)]`, accumulated in f64.
    fn kiln_sum_of_squares(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x * factor`, in place when `x`'s buffer is its own.
    fn kiln_scale(x: FloatTensor<Self>, factor: f32) -> FloatTensor<Self>;
}

impl OptimizerBackend for Flex {
    fn kiln_sum_of_squares(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let x = dense(x);
        let values: &[f32] = x.storage();
        let partials: Vec<f64> = values
            .par_chunks(1 << 14)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|&v| f64::from(v) * f64::from(v))
                    .sum::<f64>()
            })
            .collect();
        // Added in chunk order: the same total whichever thread summed what.
        let total: f64 = partials.iter().sum();
        crate::flex::tensor(vec![total as f32], [1].into())
    }

    fn kiln_scale(x: FloatTensor<Self>, factor: f32) -> FloatTensor<Self> {
        let mut x = dense(x);
        let values: &mut [f32] = x.storage_mut();
        values
            .par_chunks_mut(1 << 14)
            .for_each(|chunk| chunk.iter_mut().for_each(|v| *v *= factor));
        x
    }

    fn kiln_adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
        lr: f32,
        time: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let config = FusedAdamWConfig {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        };
        update(
            param,
            &grad,
            moment_1,
            moment_2,
            AdamWStep { config, lr, time },
        )
    }
}

/// A tensor whose whole storage is its elements in order, so it can be written in place.
fn dense(tensor: FlexTensor) -> FlexTensor {
    let elements = tensor.shape().num_elements();
    match tensor.layout().contiguous_offsets() {
        Some((0, end)) if end == elements && tensor.bytes().len() == 4 * elements => tensor,
        _ => tensor.to_contiguous(),
    }
}

/// The fused update on flex buffers.
pub fn update(
    param: FlexTensor,
    grad: &FlexTensor,
    moment_1: FlexTensor,
    moment_2: FlexTensor,
    step: AdamWStep,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    const CHUNK: usize = 1 << 14;
    let (mut param, mut m, mut v) = (dense(param), dense(moment_1), dense(moment_2));
    let grad = dense(grad.clone());
    let g: &[f32] = grad.storage();
    // Copy-on-write: in place when the buffers are this update's alone, else into copies.
    let p: &mut [f32] = param.storage_mut();
    let (m_values, v_values): (&mut [f32], &mut [f32]) = (m.storage_mut(), v.storage_mut());
    p.par_chunks_mut(CHUNK)
        .zip(m_values.par_chunks_mut(CHUNK))
        .zip(v_values.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| adamw_span_v(p, m, v, g, &step));
    (param, m, v)
}

vectorised!(adamw_span_v => adamw_span, (
    p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], step: &AdamWStep,
));

/// Burn's AdamW arithmetic, element by element.
#[inline(always)]
fn adamw_span(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], step: &AdamWStep) {
    let c = step.config;
    let t = step.time as i32;
    let correction_1 = 1.0 / (1.0 - c.beta_1.powi(t));
    let correction_2 = 1.0 / (1.0 - c.beta_2.powi(t));
    let decay = 1.0 - step.lr * c.weight_decay;
    for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
        *m = c.beta_1 * *m + (1.0 - c.beta_1) * g;
        *v = c.beta_2 * *v + (1.0 - c.beta_2) * g * g;
        let m_hat = *m * correction_1;
        let v_hat = *v * correction_2;
        *p = *p * decay - step.lr * m_hat / (v_hat.sqrt() + c.epsilon);
    }
}

/// `sum(x^2)` of a gradient on flex, in one parallel pass without a temporary; `None` elsewhere.
pub fn sum_of_squares<const D: usize>(x: &Tensor<D>) -> Option<f64> {
    let x = x.clone().inner();
    if !fused(&x) {
        return None;
    }
    let total = Tensor::<1>::from_dispatch(<Dispatch as OptimizerBackend>::kiln_sum_of_squares(
        x.into_dispatch(),
    ));
    Some(f64::from(total.into_scalar::<f32>()))
}

/// `x * factor` (a gradient scaled by clipping), in place on flex when `x` is not shared.
pub fn scale<const D: usize>(x: Tensor<D>, factor: f64) -> Tensor<D> {
    if !fused(&x) || x.is_autodiff() {
        return x * factor;
    }
    Tensor::from_dispatch(<Dispatch as OptimizerBackend>::kiln_scale(
        x.into_dispatch(),
        factor as f32,
    ))
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let amsgrad = state
            .as_ref()
            .is_some_and(|s| s.momentum.max_moment_2.is_some());
        if !fused(&tensor) || !fused(&grad) || amsgrad {
            return self.unfused.step(lr, tensor, grad, state);
        }
        let (time, moment_1, moment_2) = match state {
            Some(state) => (
                state.momentum.time + 1,
                state.momentum.moment_1,
                state.momentum.moment_2,
            ),
            None => (1, grad.zeros_like(), grad.zeros_like()),
        };
        let (param, moment_1, moment_2) = <Dispatch as OptimizerBackend>::kiln_adamw(
            tensor.into_dispatch(),
            grad.into_dispatch(),
            moment_1.into_dispatch(),
            moment_2.into_dispatch(),
            self.config.beta_1,
            self.config.beta_2,
            self.config.epsilon,
            self.config.weight_decay,
            lr as f32,
            time,
        );
        let state = AdamWState {
            momentum: AdaptiveMomentumState {
                time,
                moment_1: Tensor::from_dispatch(moment_1),
                moment_2: Tensor::from_dispatch(moment_2),
                max_moment_2: None,
            },
        };
        (Tensor::from_dispatch(param), Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdamW::to_device(state, device)
    }
}
