//! Scaled dot-product attention shared by the backbones, and the masks it takes.
//!
//! Masks are additive: 0 where a query may look, `f32::MIN` where it may not (the value HF
//! `transformers` uses), so a padding mask and a causal mask combine into one tensor and a
//! row with nothing to attend to stays finite.

use burn::nn::Dropout;
use burn::tensor::{Bool, Int, Tensor};

/// `[batch, seq, heads * head_dim]` → `[batch, heads, seq, head_dim]`.
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [batch, seq, width] = x.dims();
    x.reshape([batch, seq, heads, width / heads])
        .swap_dims(1, 2)
}

/// `[batch, heads, seq, head_dim]` → `[batch, seq, heads * head_dim]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [batch, heads, seq, head_dim] = x.dims();
    x.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}

/// Key and value rows `[l, h]` every query of a layer may attend to before the real ones
/// (prefix tuning, MAM, UniPELT), scaled per text by UniPELT's gate `[batch, 1, 1]` when there is
/// one (AdapterHub multiplies the prefix's keys and values by it).
#[derive(Debug, Clone)]
pub struct Prefix {
    /// Key rows `[l, h]`.
    pub key: Tensor<2>,
    /// Value rows `[l, h]`.
    pub value: Tensor<2>,
    /// The gate per text, if gated.
    pub gate: Option<Tensor<3>>,
}

impl Prefix {
    /// Ungated rows.
    pub fn new((key, value): (Tensor<2>, Tensor<2>)) -> Self {
        Self {
            key,
            value,
            gate: None,
        }
    }
}

/// `softmax(q kᵀ · scale + bias) v`, with dropout on the attention probabilities; a `prefix`'s
/// key and value rows go in front of the real ones.
pub fn attend(
    query: Tensor<4>,
    key: Tensor<4>,
    value: Tensor<4>,
    bias: &Tensor<4>,
    scale: f64,
    dropout: &Dropout,
    prefix: Option<Prefix>,
) -> Tensor<4> {
    if let Some(prefix) = prefix {
        let (key, value, bias) = with_prefix(key, value, bias, prefix);
        return attend(query, key, value, &bias, scale, dropout, None);
    }
    kiln_kernels::attention(query, key, value, bias, scale, dropout)
}

/// Keys, values and mask with the prefix's key and value rows (`[l, h]` each) in front:
/// `[batch, heads, l + seq, head_dim]` and a mask that lets every query see every prefix row.
fn with_prefix(
    key: Tensor<4>,
    value: Tensor<4>,
    bias: &Tensor<4>,
    prefix: Prefix,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [batch, heads, _, head_dim] = key.dims();
    let rows = prefix.key.dims()[0];
    let gate = prefix.gate.map(|g| g.reshape([batch, 1, 1, 1]));
    let expand = |rows_param: Tensor<2>| {
        let expanded = rows_param
            .reshape([1, rows, heads, head_dim])
            .swap_dims(1, 2)
            .expand([batch, heads, rows, head_dim]);
        match &gate {
            Some(gate) => expanded * gate.clone(),
            None => expanded,
        }
    };
    let key = Tensor::cat(vec![expand(prefix.key), key], 2);
    let value = Tensor::cat(vec![expand(prefix.value), value], 2);
    let [b, one, queries, _] = bias.dims();
    let open = Tensor::zeros([b, one, queries, rows], &bias.device());
    (key, value, Tensor::cat(vec![open, bias.clone()], 3))
}

/// `bias` `[batch, ..]` repeated whole batch after whole batch up to `rows` rows: the mask of a
/// batch that a Parallel adapter composition has repeated (rows `i·batch + b` are text `b`).
pub fn repeated_to(bias: Tensor<4>, rows: usize) -> Tensor<4> {
    let batch = bias.dims()[0];
    if rows == batch || batch == 0 {
        bias
    } else {
        Tensor::cat(vec![bias; rows / batch], 0)
    }
}

/// Key-side padding mask `[batch, 1, 1, seq]` from a `[batch, seq]` mask of 1 (token) / 0 (pad).
pub fn padding_bias(attention_mask: &Tensor<2, Int>) -> Tensor<4> {
    let blocked: Tensor<2, Bool> = attention_mask.clone().equal_elem(0);
    to_bias(blocked.unsqueeze_dims::<4>(&[1, 2]))
}

/// Padding plus causal mask `[batch, 1, seq, seq]`: query `i` sees real keys `j <= i`.
pub fn causal_padding_bias(attention_mask: &Tensor<2, Int>) -> Tensor<4> {
    let [batch, seq] = attention_mask.dims();
    let device = attention_mask.device();
    // `tril_mask` is true strictly above the diagonal: the keys a query must not see.
    let future: Tensor<4, Bool> = Tensor::<2, Bool>::tril_mask([seq, seq], 0, &device)
        .unsqueeze_dims::<4>(&[0, 1])
        .expand([batch, 1, seq, seq]);
    let padding: Tensor<4, Bool> = attention_mask
        .clone()
        .equal_elem(0)
        .unsqueeze_dims::<4>(&[1, 2])
        .expand([batch, 1, seq, seq]);
    to_bias(future.bool_or(padding))
}

fn to_bias(blocked: Tensor<4, Bool>) -> Tensor<4> {
    blocked.float() * f32::MIN
}
