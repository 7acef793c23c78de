//! Every fused kernel against Burn's autodiff of the unfused ops it replaces: outputs and the
//! gradients of every input, within 1e-4, with and without dropout (the unfused side then
//! multiplies by the kernel's own mask, read off `dropout_seeded` of ones), plus seeding.

use burn::module::Param;
use burn::nn::{DropoutConfig, LayerNorm, LayerNormConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Distribution, Tensor};
use kiln_kernels::{
    add_layer_norm_seeded, attention_probs_seeded, bias_gelu, dropout, dropout_seeded, fused,
};

const TOLERANCE: f32 = 1e-4;

fn device() -> Device {
    Device::flex().autodiff()
}

fn normal<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .inner()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 values")
}

fn assert_close<const D: usize>(what: &str, actual: Tensor<D>, expected: Tensor<D>) {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shapes differ");
    let (a, e) = (values(actual), values(expected));
    let worst = a
        .iter()
        .zip(&e)
        .map(|(a, e)| (a - e).abs() / e.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(worst <= TOLERANCE, "{what}: differs by {worst}");
}

/// The gradient of `input` after `backward` of `sum(output * weights)`.
fn grad<const D: usize>(input: &Tensor<D>, grads: &burn::tensor::Gradients) -> Tensor<D> {
    input.grad(grads).expect("the input takes a gradient")
}

/// The kernel's dropout factors (0 or 1 / (1 - prob)) for a tensor of `shape`.
fn mask<const D: usize>(shape: [usize; D], prob: f32, seed: u64, device: &Device) -> Tensor<D> {
    dropout_seeded(Tensor::ones(shape, &device.clone().inner()), prob, seed)
}

#[test]
fn kernels_take_the_fused_path_on_flex_only() {
    let _serial = kiln_testkit::seeded_section();
    let x = normal([2, 3], &device());
    assert!(fused(&x));
    #[allow(deprecated)]
    let on_ndarray = normal([2, 3], &Device::ndarray().autodiff());
    assert!(!fused(&on_ndarray));
}

#[test]
fn dropout_backward_applies_the_forward_mask() {
    let _serial = kiln_testkit::seeded_section();
    let device = device();
    let x = normal([64, 48], &device).require_grad();
    let weights = normal([64, 48], &device);
    let out = dropout_seeded(x.clone(), 0.3, 17);
    let grads = (out.clone() * weights.clone()).sum().backward();
    let factors = mask([64, 48], 0.3, 17, &device);
    assert_close("output", out, x.clone() * factors.clone());
    assert_close(
        "input gradient",
        grad(&x, &grads),
        weights * factors.clone(),
    );
    let kept = values(factors.clone().greater_elem(0.0).float().mean());
    assert!((kept[0] - 0.7).abs() < 0.05, "kept share {}", kept[0]);
    assert!(
        values(factors)
            .iter()
            .all(|&f| f == 0.0 || (f - 1.0 / 0.7).abs() < 1e-6)
    );
}

#[test]
fn seeded_dropout_reproduces_and_seeds_differ() {
    let _serial = kiln_testkit::seeded_section();
    let device = device();
    let layer = DropoutConfig::new(0.5).init();
    let x = Tensor::<2>::ones([32, 32], &device);
    device.seed(5);
    let first = values(dropout(&layer, x.clone()));
    device.seed(5);
    let again = values(dropout(&layer, x.clone()));
    let next = values(dropout(&layer, x));
    assert_eq!(first, again);
    assert_ne!(first, next);
}

#[test]
fn bias_gelu_matches_burn() {
    let _serial = kiln_testkit::seeded_section();
    let device = device();
    let x = normal([3, 40, 96], &device).require_grad();
    let bias = normal([96], &device).require_grad();
    let weights = normal([3, 40, 96], &device);
    let fused_out = bias_gelu(x.clone(), Some(bias.clone()));
    let fused_grads = (fused_out.clone() * weights.clone()).sum().backward();
    let (x_ref, bias_ref) = (
        x.clone().detach().require_grad(),
        bias.clone().detach().require_grad(),
    );
    let unfused = gelu(x_ref.clone() + bias_ref.clone().unsqueeze::<3>());
    let grads = (unfused.clone() * weights).sum().backward();
    assert_close("output", fused_out, unfused);
    assert_close(
        "input gradient",
        grad(&x, &fused_grads),
        grad(&x_ref, &grads),
    );
    assert_close(
        "bias gradient",
        grad(&bias, &fused_grads),
        grad(&bias_ref, &grads),
    );
}

/// Fused attention probabilities against `dropout(softmax(scores * scale + mask))`.
fn check_attention(mask_shape: [usize; 4], prob: f32) {
    let device = device();
    let shape = [2, 3, 10, 10];
    let scores = normal(shape, &device).require_grad();
    // Block a few keys the way padding does: HF's f32::MIN.
    let mask = normal(mask_shape, &device)
        .greater_elem(1.0)
        .float()
        .mul_scalar(f32::MIN);
    let weights = normal(shape, &device);
    let scale = 0.125;
    let fused_out = attention_probs_seeded(scores.clone(), &mask, scale, prob, 99);
    let fused_grads = (fused_out.clone() * weights.clone()).sum().backward();
    let scores_ref = scores.clone().detach().require_grad();
    let mut unfused = softmax(scores_ref.clone() * f64::from(scale) + mask, 3);
    if prob > 0.0 {
        unfused = unfused * mask_of(shape, prob, &device);
    }
    let grads = (unfused.clone() * weights).sum().backward();
    assert_close("probabilities", fused_out, unfused);
    assert_close(
        "score gradient",
        grad(&scores, &fused_grads),
        grad(&scores_ref, &grads),
    );
}

fn mask_of(shape: [usize; 4], prob: f32, device: &Device) -> Tensor<4> {
    mask(shape, prob, 99, device)
}

#[test]
fn attention_probs_match_burn_with_padding_and_full_masks() {
    let _serial = kiln_testkit::seeded_section();
    check_attention([2, 1, 1, 10], 0.0);
    check_attention([2, 1, 10, 10], 0.0);
    check_attention([1, 1, 10, 10], 0.0);
}

#[test]
fn attention_probs_match_burn_with_dropout() {
    let _serial = kiln_testkit::seeded_section();
    check_attention([2, 1, 1, 10], 0.2);
}

/// Layer norm written out in Burn's ops, as the autodiff reference.
fn unfused_layer_norm(x: Tensor<3>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Tensor<3> {
    let mean = x.clone().mean_dim(2);
    let centred = x - mean;
    let variance = centred.clone().square().mean_dim(2);
    centred / (variance + eps).sqrt() * gamma.unsqueeze::<3>() + beta.unsqueeze::<3>()
}

fn norm_with(gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> LayerNorm {
    let mut norm = LayerNormConfig::new(gamma.dims()[0])
        .with_epsilon(eps)
        .init(&gamma.device());
    norm.gamma = Param::from_tensor(gamma);
    norm.beta = Some(Param::from_tensor(beta));
    norm
}

fn check_layer_norm(prob: f32) {
    let device = device();
    let shape = [4, 12, 64];
    let eps = 1e-12;
    let x = normal(shape, &device).require_grad();
    let residual = normal(shape, &device).require_grad();
    let gamma = normal([64], &device).require_grad();
    let beta = normal([64], &device).require_grad();
    let weights = normal(shape, &device);
    let norm = norm_with(gamma.clone(), beta.clone(), eps);
    let fused_out = add_layer_norm_seeded(x.clone(), residual.clone(), &norm, eps as f32, prob, 3);
    let fused_grads = (fused_out.clone() * weights.clone()).sum().backward();

    let reference = |t: &Tensor<3>| t.clone().detach().require_grad();
    let (x_ref, residual_ref) = (reference(&x), reference(&residual));
    let (gamma_ref, beta_ref) = (
        gamma.clone().detach().require_grad(),
        beta.clone().detach().require_grad(),
    );
    let dropped = if prob > 0.0 {
        x_ref.clone() * mask(shape, prob, 3, &device)
    } else {
        x_ref.clone()
    };
    let unfused = unfused_layer_norm(
        dropped + residual_ref.clone(),
        gamma_ref.clone(),
        beta_ref.clone(),
        eps,
    );
    let grads = (unfused.clone() * weights).sum().backward();
    assert_close("output", fused_out, unfused);
    assert_close(
        "input gradient",
        grad(&x, &fused_grads),
        grad(&x_ref, &grads),
    );
    assert_close(
        "residual gradient",
        grad(&residual, &fused_grads),
        grad(&residual_ref, &grads),
    );
    assert_close(
        "gamma gradient",
        grad(&gamma, &fused_grads),
        grad(&gamma_ref, &grads),
    );
    assert_close(
        "beta gradient",
        grad(&beta, &fused_grads),
        grad(&beta_ref, &grads),
    );
}

#[test]
fn add_layer_norm_matches_burn() {
    let _serial = kiln_testkit::seeded_section();
    check_layer_norm(0.0);
}

#[test]
fn add_layer_norm_matches_burn_with_dropout() {
    let _serial = kiln_testkit::seeded_section();
    check_layer_norm(0.1);
}

#[test]
fn kernels_without_autodiff_match_the_autodiff_forward() {
    let _serial = kiln_testkit::seeded_section();
    let device = Device::flex();
    let x = normal([5, 33], &device);
    let bias = normal([33], &device);
    assert_close(
        "bias gelu",
        bias_gelu(x.clone(), Some(bias.clone())),
        gelu(x.clone() + bias.clone().unsqueeze::<2>()),
    );
    // A freshly computed input is the only owner of its buffer: the kernels then write their
    // output over it, with and without dropout.
    let fresh = |t: &Tensor<2>| t.clone() * 1.0;
    assert_close(
        "bias gelu in place",
        bias_gelu(fresh(&x), Some(bias.clone())),
        gelu(x.clone() + bias.clone().unsqueeze::<2>()),
    );
    let residual = normal([5, 33], &device);
    let norm = norm_with(normal([33], &device), normal([33], &device), 1e-5);
    for prob in [0.0, 0.3] {
        let kept = if prob > 0.0 {
            x.clone() * mask([5, 33], prob, 8, &device)
        } else {
            x.clone()
        };
        assert_close(
            "add + layer norm in place",
            add_layer_norm_seeded(fresh(&x), residual.clone(), &norm, 1e-5, prob, 8),
            norm.forward(kept + residual.clone()),
        );
    }
    let scores = normal([1, 2, 5, 7], &device);
    let mask = Tensor::<4>::zeros([1, 1, 1, 7], &device);
    assert_close(
        "attention",
        attention_probs_seeded(scores.clone(), &mask, 0.5, 0.0, 0),
        softmax(scores * 0.5, 3),
    );
}

/// `[batch, seq, heads * head_dim]` split into heads as the models do: a strided view.
fn heads_of(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [batch, seq, width] = x.dims();
    x.reshape([batch, seq, heads, width / heads])
        .swap_dims(1, 2)
}

#[test]
fn inference_attention_matches_burn_with_strided_heads_and_masks() {
    let _serial = kiln_testkit::seeded_section();
    let device = Device::flex();
    let (batch, heads, queries, head_dim) = (3, 4, 9, 8);
    // Dropout is inactive off autodiff (Burn's rule): the kernel path takes none.
    let inactive_dropout = DropoutConfig::new(0.1).init();
    // Keys longer than queries (a prefix), a padding mask and a full per-query mask.
    for (keys, mask_shape) in [(9, [3, 1, 1, 9]), (13, [3, 1, 9, 13]), (13, [1, 4, 9, 13])] {
        let query = heads_of(normal([batch, queries, heads * head_dim], &device), heads);
        let key = heads_of(normal([batch, keys, heads * head_dim], &device), heads);
        let value = heads_of(normal([batch, keys, heads * head_dim], &device), heads);
        let mask = mask_of(mask_shape, 0.3, &device);
        let fused_out = kiln_kernels::attention(
            query.clone(),
            key.clone(),
            value.clone(),
            &mask,
            0.35,
            &inactive_dropout,
        );
        let scores = query.matmul(key.swap_dims(2, 3)) * 0.35 + mask;
        let expected = softmax(scores, 3).matmul(value);
        assert_close("attention context", fused_out.clone(), expected.clone());
        // The context is laid out for merging heads: the same values after the merge.
        let merge = |t: Tensor<4>| {
            t.swap_dims(1, 2)
                .reshape([batch, queries, heads * head_dim])
        };
        assert_close("merged context", merge(fused_out), merge(expected));
    }
    // No queries: an empty context, as Burn's ops give.
    let empty = |len| heads_of(normal([batch, len, heads * head_dim], &device), heads);
    let mask = Tensor::<4>::zeros([batch, 1, 1, 5], &device);
    let out = kiln_kernels::attention(empty(0), empty(5), empty(5), &mask, 0.35, &inactive_dropout);
    assert_eq!(out.dims(), [batch, heads, 0, head_dim]);
}

#[test]
fn matmul_matches_burn_with_strided_operands_and_frozen_sides() {
    let _serial = kiln_testkit::seeded_section();
    let device = device();
    // Transposed views on both sides: the kernel reads them through their strides.
    let a = normal([24, 40], &device).require_grad();
    let b = normal([16, 24], &device).require_grad();
    let weights = normal([40, 16], &device);
    let fused_out = kiln_kernels::matmul(a.clone().transpose(), b.clone().transpose());
    let fused_grads = (fused_out.clone() * weights.clone()).sum().backward();
    let (a_ref, b_ref) = (
        a.clone().detach().require_grad(),
        b.clone().detach().require_grad(),
    );
    let unfused = a_ref.clone().transpose().matmul(b_ref.clone().transpose());
    let grads = (unfused.clone() * weights.clone()).sum().backward();
    assert_close("product", fused_out, unfused);
    assert_close(
        "left gradient",
        grad(&a, &fused_grads),
        grad(&a_ref, &grads),
    );
    assert_close(
        "right gradient",
        grad(&b, &fused_grads),
        grad(&b_ref, &grads),
    );

    // A frozen right side (a frozen weight) gets no gradient, the left side still does.
    let x = normal([8, 12], &device).require_grad();
    let frozen = normal([12, 5], &device);
    let out = kiln_kernels::matmul(x.clone(), frozen.clone());
    let grads = (out * normal([8, 5], &device)).sum().backward();
    assert!(frozen.grad(&grads).is_none());
    assert!(x.grad(&grads).is_some());
}

#[test]
fn fused_adamw_follows_burns_adamw() {
    let _serial = kiln_testkit::seeded_section();
    use burn::optim::{AdamWConfig, Optimizer};
    use kiln_kernels::FusedAdamWConfig;
    let device = Device::flex();
    let fused = FusedAdamWConfig::default()
        .with_epsilon(1e-8)
        .with_weight_decay(0.01)
        .init();
    let burn = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.01)
        .build();
    let start = normal([33, 17], &device);
    let (mut ours, mut theirs) = (start.clone(), start);
    let (mut our_state, mut their_state) = (None, None);
    for step in 0..5 {
        let grad = normal([33, 17], &device);
        let lr = 1e-2 / (step + 1) as f64;
        (ours, our_state) = fused.step(lr, ours, grad.clone(), our_state);
        (theirs, their_state) = burn.step(lr, theirs, grad, their_state);
    }
    assert_close("parameters", ours, theirs);
    let (ours, theirs) = (our_state.expect("state"), their_state.expect("state"));
    assert_eq!(ours.momentum.time, theirs.momentum.time);
    assert_close(
        "first moment",
        ours.momentum.moment_1,
        theirs.momentum.moment_1,
    );
    assert_close(
        "second moment",
        ours.momentum.moment_2,
        theirs.momentum.moment_2,
    );
}
