//! What passes between the tokenizer, the backbones and the heads: padded input batches, token
//! states between layers, and the readouts that turn token states into one vector per text. A
//! leaf module: it uses nothing else of the crate but its error type.

use std::str::FromStr;

use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// One padded batch for BERT: all `[batch, seq]`.
#[derive(Debug, Clone)]
pub struct BertInput {
    /// Token ids.
    pub input_ids: Tensor<2, Int>,
    /// 1 at real tokens, 0 at padding.
    pub attention_mask: Tensor<2, Int>,
    /// Segment of each token (0, or 1 in a pair's second text).
    pub token_type_ids: Tensor<2, Int>,
}

/// One padded batch for GPT-2: both `[batch, seq]`, padding on either side.
#[derive(Debug, Clone)]
pub struct Gpt2Input {
    /// Token ids.
    pub input_ids: Tensor<2, Int>,
    /// 1 at real tokens, 0 at padding.
    pub attention_mask: Tensor<2, Int>,
}

/// Token states between two layers of a backbone, with the masks of their positions (virtual
/// tokens included): where attention looks, and where the real tokens are. What a frozen bottom
/// hands to the layers above it.
#[derive(Debug, Clone)]
pub struct TokenStates {
    /// `[batch, seq, hidden]`.
    pub hidden: Tensor<3>,
    /// 1 where attention looks: real and virtual tokens.
    pub attention_mask: Tensor<2, Int>,
    /// 1 at real tokens only.
    pub token_mask: Tensor<2, Int>,
}

/// How the token states of one text become the head's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Readout {
    /// Mean over real tokens (sentence-transformers' pooling; kiln's default for BERT).
    Mean,
    /// The `[CLS]` state; BERT only.
    Cls,
    /// BERT's pooler, `tanh(W·h_cls + b)`, as HF `BertForSequenceClassification` reads.
    Pooler,
    /// The last real token, the only one a causal model has read the whole text with.
    Last,
}

impl FromStr for Readout {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Readout::Mean),
            "cls" => Ok(Readout::Cls),
            "pooler" => Ok(Readout::Pooler),
            "last" => Ok(Readout::Last),
            other => Err(ModelError::InvalidInput(format!(
                "unknown readout `{other}`: expected mean, cls, pooler or last"
            ))),
        }
    }
}

/// The first position's state `[batch, hidden]` (BERT's `[CLS]`).
pub fn first_token(hidden: Tensor<3>) -> Tensor<2> {
    let [batch, _, width] = hidden.dims();
    hidden.slice_dim(1, 0..1).reshape([batch, width])
}

/// `mask` `[texts, seq]` repeated whole batch after whole batch up to `rows` rows: the mask of
/// states a Parallel adapter composition computed for several copies of the batch.
fn repeated_mask(mask: Tensor<2, Int>, rows: usize) -> Tensor<2, Int> {
    let texts = mask.dims()[0];
    if rows == texts || texts == 0 {
        mask
    } else {
        Tensor::cat(vec![mask; rows / texts], 0)
    }
}

/// Mean of `hidden` over the positions where `mask` is 1: `[batch, seq, h]` → `[batch, h]`.
pub fn mean_pool(hidden: Tensor<3>, mask: Tensor<2, Int>) -> Tensor<2> {
    let [batch, _, width] = hidden.dims();
    let weights = repeated_mask(mask, batch).float().unsqueeze_dim::<3>(2);
    let summed = (hidden * weights.clone())
        .sum_dim(1)
        .reshape([batch, width]);
    let counts = weights.sum_dim(1).reshape([batch, 1]).clamp_min(1e-9);
    summed / counts
}

/// The state at the last position where `mask` is 1, for each row; works with either padding side.
pub fn last_token_pool(hidden: Tensor<3>, mask: Tensor<2, Int>) -> Tensor<2> {
    let [batch, seq, width] = hidden.dims();
    let device = hidden.device();
    // Position index where mask is 1, else -1; the row maximum is the last real token.
    let positions = Tensor::<1, Int>::arange(0..seq as i64, &device)
        .unsqueeze_dim::<2>(0)
        .expand([batch, seq]);
    let last = (positions + 1) * repeated_mask(mask, batch) - 1;
    let index = last.max_dim(1).clamp_min(0);
    let index = index.unsqueeze_dim::<3>(2).expand([batch, 1, width]);
    hidden.gather(1, index).reshape([batch, width])
}
