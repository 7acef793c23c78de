//! The kernels under Burn's autodiff on flex: each forward records one node whose hand-written
//! backward calls the matching flex body, in place of the chains of primitive ops (and their
//! saved intermediates) that Burn's autodiff builds for the unfused forms.

use burn::backend::Flex;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;

use crate::KernelBackend;
use crate::{flex, matmul};

/// Registers a gradient for a parent that takes gradients (`Some` node).
macro_rules! register {
    ($grads:expr, $node:expr, $grad:expr $(,)?) => {
        if let Some(node) = $node {
            $grads.register::<Flex>(node.id, $grad);
        }
    };
}

#[derive(Debug)]
struct MatmulBackward;

impl Backward<Flex, 2> for MatmulBackward {
    /// The left operand when the right one takes a gradient, the right one when the left does
    /// (the gradients are products with the other operand transposed, batched alike).
    type State = (Option<FlexTensor>, Option<FlexTensor>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [lhs_node, rhs_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (lhs, rhs) = ops.state;
        if let Some(rhs) = rhs {
            register!(grads, lhs_node, matmul::product(&grad, false, &rhs, true));
        }
        if let Some(lhs) = lhs {
            register!(grads, rhs_node, matmul::product(&lhs, true, &grad, false));
        }
    }
}

#[derive(Debug)]
struct DropoutBackward;

impl Backward<Flex, 1> for DropoutBackward {
    /// `(prob, seed)`: the mask is regenerated, never stored.
    type State = (f32, u64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (prob, seed) = ops.state;
        // Dropout is linear with a fixed mask: its backward is the same mask on the gradient.
        register!(grads, parent, flex::dropout(&grad, prob, seed));
    }
}

#[derive(Debug)]
struct BiasGeluBackward;

impl Backward<Flex, 2> for BiasGeluBackward {
    /// The input before the bias, and the bias.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, bias_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, bias) = ops.state;
        let (dx, dbias) = flex::bias_gelu_backward(&x, &bias, &grad);
        register!(grads, x_node, dx);
        register!(grads, bias_node, dbias);
    }
}

#[derive(Debug)]
struct AttentionProbsBackward;

impl Backward<Flex, 2> for AttentionProbsBackward {
    /// The probabilities before dropout, the scale, dropout's `(prob, seed)`.
    type State = (FlexTensor, f32, f32, u64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        // The mask (second parent) is a constant: it gets no gradient.
        let [scores_node, _mask] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (probs, scale, prob, seed) = ops.state;
        register!(
            grads,
            scores_node,
            flex::attention_probs_backward(&probs, &grad, scale, prob, seed),
        );
    }
}

#[derive(Debug)]
struct AddLayerNormBackward;

impl Backward<Flex, 4> for AddLayerNormBackward {
    /// The normalised rows, gamma, dropout's `(prob, seed)`.
    type State = (flex::NormState, FlexTensor, f32, u64);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, residual_node, gamma_node, beta_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (state, gamma, prob, seed) = ops.state;
        let (dx, d_residual, dgamma, dbeta) =
            flex::add_layer_norm_backward(&state, &gamma, &grad, prob, seed);
        register!(grads, x_node, dx);
        register!(grads, residual_node, d_residual);
        register!(grads, gamma_node, dgamma);
        register!(grads, beta_node, dbeta);
    }
}

impl<C: CheckpointStrategy> KernelBackend for Autodiff<Flex, C> {
    fn kiln_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        let (lhs, lhs_node) = lhs.into_parts();
        let (rhs, rhs_node) = rhs.into_parts();
        let out = matmul::product(&lhs, false, &rhs, false);
        match MatmulBackward
            .prepare::<C>([lhs_node, rhs_node])
            .compute_bound()
            .stateful()
        {
            // Each operand is kept only for the other's gradient.
            OpsKind::Tracked(prep) => prep.finish(
                (rhs_tracked.then_some(lhs), lhs_tracked.then_some(rhs)),
                out,
            ),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn kiln_dropout(x: FloatTensor<Self>, prob: f32, seed: u64) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        match DropoutBackward
            .prepare::<C>([x_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((prob, seed), flex::dropout(&x, prob, seed)),
            OpsKind::UnTracked(prep) => prep.finish(flex::dropout(&x, prob, seed)),
        }
    }

    fn kiln_bias_gelu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        let (bias, bias_node) = bias.into_parts();
        // The backward reads x: the kernel writes a fresh buffer.
        let out = flex::bias_gelu(x.clone(), &bias);
        match BiasGeluBackward
            .prepare::<C>([x_node, bias_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x, bias), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn kiln_attention_probs(
        scores: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
        prob: f32,
        seed: u64,
    ) -> FloatTensor<Self> {
        let (scores, scores_node) = scores.into_parts();
        let (mask, mask_node) = mask.into_parts();
        let (probs, dropped) = flex::attention_probs(&scores, &mask, scale, prob, seed);
        let out = dropped.unwrap_or_else(|| probs.clone());
        match AttentionProbsBackward
            .prepare::<C>([scores_node, mask_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((probs, scale, prob, seed), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn kiln_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        // Training keeps the probabilities for backward: the three recorded steps.
        let scores = Self::kiln_matmul(query, Self::float_swap_dims(key, 2, 3));
        let probs = Self::kiln_attention_probs(scores, mask, scale, 0.0, 0);
        Self::kiln_matmul(probs, value)
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
        let (x, x_node) = x.into_parts();
        let (residual, residual_node) = residual.into_parts();
        let (gamma, gamma_node) = gamma.into_parts();
        let (beta, beta_node) = beta.into_parts();
        match AddLayerNormBackward
            .prepare::<C>([x_node, residual_node, gamma_node, beta_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, state) =
                    flex::add_layer_norm(x, &residual, &gamma, &beta, eps, prob, seed, true);
                let state = state.expect("state was asked for");
                prep.finish((state, gamma, prob, seed), out)
            }
            OpsKind::UnTracked(prep) => {
                let (out, _) =
                    flex::add_layer_norm(x, &residual, &gamma, &beta, eps, prob, seed, false);
                prep.finish(out)
            }
        }
    }
}
