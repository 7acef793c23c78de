//! kiln-kernels: fused operations of a transformer step, through Burn's backend-extension
//! mechanism.
//!
//! Each kernel is one pass over memory where Burn's primitive ops take several, and under
//! autodiff one graph node with a hand-written backward where Burn records a chain:
//! - [`dropout`]: a counter-based mask (a hash of a per-call seed and the element's index), so it
//!   is drawn in parallel, reproducible from the seed, and regenerated in backward, never stored;
//! - [`bias_gelu`]: the bias add and exact (erf) GELU, with GELU's exact derivative;
//! - [`attention_probs`]: scale, additive mask, softmax and dropout of attention scores;
//! - [`attention`]: the whole of scaled dot-product attention at inference, each head's scores
//!   kept in cache instead of memory;
//! - [`add_layer_norm`]: dropout of a sub-layer's output, the residual add and layer norm;
//! - [`matmul`](fn@matmul): products (2-D and batched per head) straight into `gemm`, transposes read
//!   through strides and the output written once, forward and backward;
//! - [`FusedAdamW`]: the optimizer's whole update in one pass over each parameter.
//!
//! On Burn's flex backend (kiln's CPU default) the kernels run the bodies in [`flex`]: rows over
//! rayon's workers, vectorised math. On every other backend (ndarray, wgpu) the same functions
//! compute with Burn's own primitive ops, exactly as the unfused model code did, so those
//! backends keep working unchanged. The seed of each dropout call is drawn from the device's
//! random generator, so `device.seed(s)` makes runs reproducible on every backend.

#![warn(missing_docs)]

use burn::backend::{Dispatch, DispatchDevice, Flex, backend_extension, tensor::FloatTensor};
use burn::nn::{Dropout, LayerNorm};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{DType, Distribution, Tensor};

pub use adamw::{AdamWStep, FusedAdamW, FusedAdamWConfig, OptimizerBackend, scale, sum_of_squares};

#[macro_use]
mod simd;
mod adamw;
mod attention;
mod autodiff;
pub mod flex;
pub mod math;
pub mod matmul;

/// The fused operations. Only flex (and autodiff over it) implements them: the functions of
/// this crate route other backends to Burn's primitive ops before reaching the dispatch.
#[backend_extension(Flex, Autodiff)]
pub trait KernelBackend: burn::backend::Backend {
    /// `x * mask / (1 - prob)` with the mask of `seed`.
    fn kiln_dropout(x: FloatTensor<Self>, prob: f32, seed: u64) -> FloatTensor<Self>;
    /// `lhs · rhs` over the last two axes, batched over equal leading axes.
    fn kiln_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `gelu(x + bias)`, `bias` over the last axis.
    fn kiln_bias_gelu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `dropout(softmax(scores * scale + mask))` over the last axis.
    fn kiln_attention_probs(
        scores: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
        prob: f32,
        seed: u64,
    ) -> FloatTensor<Self>;
    /// `softmax(query · keyᵀ * scale + mask) · value`, without dropout.
    fn kiln_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;
    /// `LayerNorm(dropout(x) + residual)` over the last axis.
    #[allow(clippy::too_many_arguments)]
    fn kiln_add_layer_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
        prob: f32,
        seed: u64,
    ) -> FloatTensor<Self>;
}

impl KernelBackend for Flex {
    fn kiln_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        matmul::product(&lhs, false, &rhs, false)
    }

    fn kiln_dropout(x: FloatTensor<Self>, prob: f32, seed: u64) -> FloatTensor<Self> {
        flex::dropout(&x, prob, seed)
    }

    fn kiln_bias_gelu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        flex::bias_gelu(x, &bias)
    }

    fn kiln_attention_probs(
        scores: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
        prob: f32,
        seed: u64,
    ) -> FloatTensor<Self> {
        let (probs, dropped) = flex::attention_probs(&scores, &mask, scale, prob, seed);
        dropped.unwrap_or(probs)
    }

    fn kiln_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        attention::attention(&query, &key, &value, &mask, scale)
    }

    fn kiln_add_layer_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
        prob: f32,
        seed: u64,
    ) -> FloatTensor<Self> {
        flex::add_layer_norm(x, &residual, &gamma, &beta, eps, prob, seed, false).0
    }
}

/// Whether `tensor` takes the fused path: f32 on flex (with or without autodiff), unless
/// `KILN_UNFUSED` is set in the environment or the caller is inside [`unfused`] (Burn's plain ops
/// everywhere, to compare against).
pub fn fused<const D: usize>(tensor: &Tensor<D>) -> bool {
    static UNFUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !*UNFUSED.get_or_init(|| std::env::var_os("KILN_UNFUSED").is_some())
        && !UNFUSED_HERE.get()
        && tensor.dtype() == DType::F32
        && matches!(
            tensor.device().inner().as_dispatch(),
            DispatchDevice::Flex(_)
        )
}

thread_local! {
    static UNFUSED_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `body` with the fused kernels off on this thread, so one process can compare a whole
/// model's outputs and gradients with and without them. The choice is made when an operation
/// is recorded: a backward pass replays whichever path its forward took.
pub fn unfused<R>(body: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            UNFUSED_HERE.set(self.0);
        }
    }
    let _restore = Restore(UNFUSED_HERE.replace(true));
    body()
}

/// Whether a dropout layer is active for `x`, by Burn's rule: the layer is training (not frozen
/// or switched to validation), `x` is on an autodiff device, and the probability is positive.
pub fn dropout_active<const D: usize>(layer: &Dropout, x: &Tensor<D>) -> bool {
    layer.training.is_enabled() && x.device().is_autodiff() && layer.prob > 0.0
}

/// A fresh dropout seed from the device's generator (which `device.seed` sets).
fn draw_seed<const D: usize>(x: &Tensor<D>) -> u64 {
    let draws = Tensor::<1>::random([2], Distribution::Uniform(0.0, 1.0), &x.device().inner())
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("two f32 draws");
    (u64::from(draws[0].to_bits()) << 32) | u64::from(draws[1].to_bits())
}

/// The probability and seed of an active dropout layer for `x`; probability 0 when inactive.
fn dropout_draw<const D: usize>(layer: Option<&Dropout>, x: &Tensor<D>) -> (f32, u64) {
    match layer {
        Some(layer) if dropout_active(layer, x) => (layer.prob as f32, draw_seed(x)),
        _ => (0.0, 0),
    }
}

/// `layer.forward(x)`: dropout as Burn's layer does it, with the fused mask on flex.
pub fn dropout<const D: usize>(layer: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if !dropout_active(layer, &x) {
        return x;
    }
    if !fused(&x) {
        return layer.forward(x);
    }
    let seed = draw_seed(&x);
    dropout_seeded(x, layer.prob as f32, seed)
}

/// Dropout with a given probability and seed (the fused path; element `i` of the contiguous
/// tensor keeps or drops by the hash of `seed` and `i`).
pub fn dropout_seeded<const D: usize>(x: Tensor<D>, prob: f32, seed: u64) -> Tensor<D> {
    if prob == 0.0 {
        return x;
    }
    Tensor::from_dispatch(<Dispatch as KernelBackend>::kiln_dropout(
        x.into_dispatch(),
        prob,
        seed,
    ))
}

/// `lhs · rhs` over the last two axes; batched over equal leading axes (Burn's matmul off flex,
/// and for leading axes that broadcast).
pub fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    if !fused(&lhs) || !fused(&rhs) || !matmul::supported(&lhs.dims(), &rhs.dims()) {
        return lhs.matmul(rhs);
    }
    Tensor::from_dispatch(<Dispatch as KernelBackend>::kiln_matmul(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
    ))
}

/// Exact GELU of `x + bias` (`bias` over the last axis; none: plain GELU).
pub fn bias_gelu<const D: usize>(x: Tensor<D>, bias: Option<Tensor<1>>) -> Tensor<D> {
    let bias = match bias {
        Some(bias) => bias,
        None if fused(&x) => Tensor::zeros([x.dims()[D - 1]], &x.device()),
        None => return gelu(x),
    };
    if !fused(&x) {
        return gelu(x + bias.unsqueeze::<D>());
    }
    Tensor::from_dispatch(<Dispatch as KernelBackend>::kiln_bias_gelu(
        x.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// `dropout(softmax(scores * scale + mask))` over the keys: attention probabilities from raw
/// scores `[batch, heads, queries, keys]` and an additive mask whose first three axes may be 1.
pub fn attention_probs(
    scores: Tensor<4>,
    mask: &Tensor<4>,
    scale: f64,
    dropout_layer: &Dropout,
) -> Tensor<4> {
    if !fused(&scores) {
        return dropout_layer.forward(softmax(scores * scale + mask.clone(), 3));
    }
    let (prob, seed) = dropout_draw(Some(dropout_layer), &scores);
    attention_probs_seeded(scores, mask, scale as f32, prob, seed)
}

/// [`attention_probs`] with dropout's probability and seed given (the fused path).
pub fn attention_probs_seeded(
    scores: Tensor<4>,
    mask: &Tensor<4>,
    scale: f32,
    prob: f32,
    seed: u64,
) -> Tensor<4> {
    let mask = broadcastable_mask(mask, scores.dims());
    Tensor::from_dispatch(<Dispatch as KernelBackend>::kiln_attention_probs(
        scores.into_dispatch(),
        mask.into_dispatch(),
        scale,
        prob,
        seed,
    ))
}

/// Scaled dot-product attention, `dropout(softmax(query · keyᵀ * scale + mask)) · value`, for
/// `[batch, heads, seq, head_dim]` operands and a mask broadcasting to `[batch, heads, queries,
/// keys]`. Without gradients or dropout (inference on flex) it runs as one kernel that never
/// stores the scores; otherwise as the two products around [`attention_probs`].
pub fn attention(
    query: Tensor<4>,
    key: Tensor<4>,
    value: Tensor<4>,
    mask: &Tensor<4>,
    scale: f64,
    dropout_layer: &Dropout,
) -> Tensor<4> {
    // Off autodiff there is no dropout (Burn's rule) and no backward to keep probabilities for.
    // Empty axes take Burn's ops, which define them.
    let empty = query.dims().contains(&0) || key.dims().contains(&0);
    if empty || !(fused(&query) && fused(&key) && fused(&value) && !query.device().is_autodiff()) {
        let scores = matmul(query, key.swap_dims(2, 3));
        return matmul(attention_probs(scores, mask, scale, dropout_layer), value);
    }
    let [b, h, q, _] = query.dims();
    let k = key.dims()[2];
    Tensor::from_dispatch(<Dispatch as KernelBackend>::kiln_attention(
        query.into_dispatch(),
        key.into_dispatch(),
        value.into_dispatch(),
        broadcastable_mask(mask, [b, h, q, k]).into_dispatch(),
        scale as f32,
    ))
}

/// `mask` itself when its first three axes are each full or 1 (the kernels' broadcast rule),
/// else expanded to `scores`.
fn broadcastable_mask(mask: &Tensor<4>, [b, h, q, k]: [usize; 4]) -> Tensor<4> {
    let [mb, mh, mq, mk] = mask.dims();
    if (mb == b || mb == 1) && (mh == h || mh == 1) && (mq == q || mq == 1) && mk == k {
        mask.clone()
    } else {
        mask.clone().expand([b, h, q, k])
    }
}

/// `norm(dropout(x) + residual)`: a post-LN sub-layer's end. `dropout_layer` `None`: no dropout
/// on `x` (it was applied before, or `x` is not a sub-layer output). `eps` is the norm's epsilon
/// (Burn's `LayerNorm` keeps its own private; the caller passes the config's).
pub fn add_layer_norm<const D: usize>(
    x: Tensor<D>,
    residual: Tensor<D>,
    norm: &LayerNorm,
    eps: f64,
    dropout_layer: Option<&Dropout>,
) -> Tensor<D> {
    if !fused(&x) {
        let x = match dropout_layer {
            Some(layer) => layer.forward(x),
            None => x,
        };
        return norm.forward(x + residual);
    }
    let (prob, seed) = dropout_draw(dropout_layer, &x);
    add_layer_norm_seeded(x, residual, norm, eps as f32, prob, seed)
}

/// [`add_layer_norm`] with dropout's probability and seed given (the fused path).
pub fn add_layer_norm_seeded<const D: usize>(
    x: Tensor<D>,
    residual: Tensor<D>,
    norm: &LayerNorm,
    eps: f32,
    prob: f32,
    seed: u64,
) -> Tensor<D> {
    let gamma = norm.gamma.val();
    let beta = match &norm.beta {
        Some(beta) => beta.val(),
        None => gamma.zeros_like(),
    };
    Tensor::from_dispatch(<Dispatch as KernelBackend>::kiln_add_layer_norm(
        x.into_dispatch(),
        residual.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        eps,
        prob,
        seed,
    ))
}
