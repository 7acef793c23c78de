//! The prompt slots of the backbones: virtual tokens in the input (prompt tuning, Lester et al.
//! 2021; P-tuning, Liu et al. 2021) and an MLP that produces every layer's attention prefix while
//! training (prefix tuning, Li and Liang 2021).
//!
//! Virtual tokens are placed by a [`PromptTemplate`]: `before` of them in front of the text and
//! `after` of them behind it. For BERT "in front" is right after `[CLS]` and "behind" right before
//! the final `[SEP]`, so `[CLS]` stays where the classifier reads it (or, with `at_start`, in
//! front of `[CLS]` as HF peft puts them); for GPT-2 the text is everything real. Placement
//! follows each row's attention mask, so left and right padding give the same result.

use burn::module::{Module, Param};
use burn::nn::{BiLstm, BiLstmConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// How many virtual tokens go in front of the text and behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PromptTemplate {
    /// Virtual tokens before the text.
    pub before: usize,
    /// Virtual tokens after the text.
    pub after: usize,
    /// The `before` tokens go in front of everything, BERT's `[CLS]` included: HF peft's
    /// layout, where the classifier then reads the first virtual token.
    #[serde(default)]
    pub at_start: bool,
}

impl PromptTemplate {
    /// Virtual tokens in all.
    pub fn len(&self) -> usize {
        self.before + self.after
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// P-tuning's prompt encoder: the virtual tokens' embeddings pass through a bidirectional LSTM
/// and an MLP (or the MLP alone), which couples them and eases optimisation.
#[derive(Module, Debug)]
pub struct PromptEncoder {
    /// The bidirectional LSTM, if P-tuning uses it.
    pub lstm: Option<BiLstm>,
    /// `[2h or h, h]`
    pub hidden: Linear,
    /// `[h, h]`
    pub output: Linear,
}

impl PromptEncoder {
    /// A bi-LSTM (hidden `h` per direction) then `2h → h → h`; or, without the LSTM, `h → h → h`.
    pub fn new(width: usize, lstm: bool, device: &Device) -> Self {
        let mlp_in = if lstm { 2 * width } else { width };
        Self {
            lstm: lstm.then(|| BiLstmConfig::new(width, width, true).init(device)),
            hidden: LinearConfig::new(mlp_in, width).init(device),
            output: LinearConfig::new(width, width).init(device),
        }
    }

    /// `[n, h]` → `[n, h]`.
    pub fn forward(&self, embeddings: Tensor<2>) -> Tensor<2> {
        let [n, width] = embeddings.dims();
        let x = match &self.lstm {
            Some(lstm) => {
                let (states, _) = lstm.forward(embeddings.reshape([1, n, width]), None);
                states.reshape([n, 2 * width])
            }
            None => embeddings,
        };
        self.output.forward(relu(self.hidden.forward(x)))
    }
}

/// Virtual tokens: trained embeddings `[n, h]`, through an encoder for P-tuning.
#[derive(Module, Debug)]
pub struct SoftPrompt {
    /// The virtual tokens' embeddings `[n, h]`.
    pub embedding: Param<Tensor<2>>,
    /// P-tuning's prompt encoder, if any.
    pub encoder: Option<PromptEncoder>,
    /// Where the tokens go.
    #[module(skip)]
    pub template: PromptTemplate,
}

impl SoftPrompt {
    /// The virtual tokens' input embeddings `[n, h]`.
    pub fn tokens(&self) -> Tensor<2> {
        match &self.encoder {
            Some(encoder) => encoder.forward(self.embedding.val()),
            None => self.embedding.val(),
        }
    }
}

/// Where the text of a row starts and ends, for the template: BERT keeps `[CLS]` and `[SEP]`
/// outside the text, GPT-2 has no special tokens around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextBounds {
    /// BERT: the text lies between `[CLS]` and `[SEP]`.
    InsideSpecialTokens,
    /// GPT-2: every real token is text.
    AllRealTokens,
}

/// An input with the virtual tokens in place: all `[batch, seq + n]`.
#[derive(Debug, Clone)]
pub struct PromptedInput {
    /// Embeddings with the virtual tokens placed.
    pub embeddings: Tensor<3>,
    /// 1 where attention may look: real and virtual tokens.
    pub attention_mask: Tensor<2, Int>,
    /// 1 at real tokens only: what mean pooling averages.
    pub token_mask: Tensor<2, Int>,
    /// Where each output position comes from in `[virtual tokens; real positions]`.
    pub sources: Tensor<2, Int>,
}

/// Inserts `prompt`'s tokens into `embeddings` `[batch, seq, h]` as its template says.
pub fn insert_virtual_tokens(
    embeddings: Tensor<3>,
    attention_mask: &Tensor<2, Int>,
    prompt: &SoftPrompt,
    bounds: TextBounds,
) -> PromptedInput {
    let [batch, seq, width] = embeddings.dims();
    let template = prompt.template;
    let n = template.len();
    let device = embeddings.device();
    let mask: Vec<i64> = attention_mask
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("an integer mask reads back as i64");
    let (mut sources, mut attend, mut real) = (Vec::new(), Vec::new(), Vec::new());
    for row in mask.chunks(seq) {
        let first = row.iter().position(|&m| m != 0).unwrap_or(0);
        let last = row.iter().rposition(|&m| m != 0).unwrap_or(0);
        let (start, end) = match bounds {
            TextBounds::InsideSpecialTokens if template.at_start => (first, last.max(first + 1)),
            TextBounds::InsideSpecialTokens => (first + 1, last.max(first + 1)),
            TextBounds::AllRealTokens => (first, last + 1),
        };
        for j in 0..=seq {
            if j == start.min(seq) {
                for k in 0..template.before {
                    sources.push(k as i64);
                    attend.push(1i64);
                    real.push(0i64);
                }
            }
            if j == end.min(seq) {
                for k in template.before..n {
                    sources.push(k as i64);
                    attend.push(1);
                    real.push(0);
                }
            }
            if let Some(&token) = row.get(j) {
                sources.push((n + j) as i64);
                attend.push(token);
                real.push(token);
            }
        }
    }
    let int = |values: Vec<i64>| {
        Tensor::<2, Int>::from_data(TensorData::new(values, [batch, seq + n]), &device)
    };
    let sources = int(sources);
    let virtual_tokens = prompt
        .tokens()
        .unsqueeze_dim::<3>(0)
        .expand([batch, n, width]);
    let combined = Tensor::cat(vec![virtual_tokens, embeddings], 1);
    let index = sources
        .clone()
        .unsqueeze_dim::<3>(2)
        .expand([batch, seq + n, width]);
    PromptedInput {
        embeddings: combined.gather(1, index),
        attention_mask: int(attend),
        token_mask: int(real),
        sources,
    }
}

/// Rearranges `values` `[batch, seq]` (token types, say) like the prompted input; virtual tokens
/// get `fill`.
pub fn follow_sources(
    values: Tensor<2, Int>,
    sources: &Tensor<2, Int>,
    fill: i64,
) -> Tensor<2, Int> {
    let [batch, _] = values.dims();
    let n = sources.dims()[1] - values.dims()[1];
    let filled = Tensor::<2, Int>::full([batch, n], fill, &values.device());
    Tensor::cat(vec![filled, values], 1).gather(1, sources.clone())
}

/// Prefix tuning's reparameterisation: `l` embeddings `[l, h]` through `h → mid → L·2·h` (tanh
/// between) give every layer's key and value prefix. Trained this way, then folded into plain
/// per-layer prefixes for saving and inference.
#[derive(Module, Debug)]
pub struct PrefixEncoder {
    /// The prefix rows' embeddings `[l, h]`.
    pub embedding: Param<Tensor<2>>,
    /// The MLP's hidden layer.
    pub hidden: Linear,
    /// The MLP's output layer (every layer's key and value).
    pub output: Linear,
    /// Layers it gives prefixes for.
    #[module(skip)]
    pub layers: usize,
}

impl PrefixEncoder {
    /// A fresh encoder of `len` rows, width `width`, MLP width `mid`, for `layers` layers.
    pub fn new(len: usize, width: usize, mid: usize, layers: usize, device: &Device) -> Self {
        Self {
            embedding: Initializer::Normal {
                mean: 0.0,
                std: 1.0,
            }
            .init([len, width], device),
            hidden: LinearConfig::new(width, mid).init(device),
            output: LinearConfig::new(mid, layers * 2 * width).init(device),
            layers,
        }
    }

    /// Parameters: `l·h + (h·mid + mid) + (mid·2Lh + 2Lh)`.
    pub fn num_params(len: usize, width: usize, mid: usize, layers: usize) -> usize {
        len * width + width * mid + mid + mid * 2 * layers * width + 2 * layers * width
    }

    /// Per layer, the key and value rows `[l, h]`.
    pub fn prefixes(&self) -> Vec<(Tensor<2>, Tensor<2>)> {
        let [len, width] = self.embedding.lazy_shape().dims::<2>();
        let all = self
            .output
            .forward(self.hidden.forward(self.embedding.val()).tanh())
            .reshape([len, self.layers, 2, width]);
        (0..self.layers)
            .map(|layer| {
                let rows = all.clone().narrow(1, layer, 1);
                let key = rows.clone().narrow(2, 0, 1).reshape([len, width]);
                let value = rows.narrow(2, 1, 1).reshape([len, width]);
                (key, value)
            })
            .collect()
    }
}

/// Every layer's prefix from a prefix encoder, in layer order; nothing without one.
pub fn layer_prefixes(
    encoder: Option<&PrefixEncoder>,
) -> std::vec::IntoIter<(Tensor<2>, Tensor<2>)> {
    encoder
        .map(PrefixEncoder::prefixes)
        .unwrap_or_default()
        .into_iter()
}
