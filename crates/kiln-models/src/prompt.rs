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

/// The shape of P-tuning's prompt encoder, as peft's `PromptEncoderConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptEncoderShape {
    /// A bidirectional LSTM before the MLP (peft's `LSTM` type), else the MLP alone (`MLP`).
    pub lstm: bool,
    /// `H`, the encoder's hidden width (peft's `encoder_hidden_size`; its default is `h`).
    pub hidden: usize,
    /// Stacked bi-LSTM layers (peft's `encoder_num_layers`, 2).
    pub lstm_layers: usize,
}

/// P-tuning's prompt encoder, as peft's `PromptEncoder` (`tuners/p_tuning/model.py`): the
/// virtual tokens' embeddings pass through `lstm_layers` stacked bidirectional LSTMs (hidden `H`
/// per direction) then `Linear(2H, 2H) → ReLU → Linear(2H, h)`; or, the MLP type,
/// `Linear(h, H) → ReLU → Linear(H, H) → ReLU → Linear(H, h)`. The encoder couples the virtual
/// tokens, which eases optimisation.
#[derive(Module, Debug)]
pub struct PromptEncoder {
    /// The stacked bi-LSTMs (none for the MLP type).
    pub lstm: Vec<BiLstm>,
    /// The MLP's linear layers, ReLU between each two.
    pub mlp: Vec<Linear>,
}

impl PromptEncoder {
    /// A fresh encoder for tokens of width `width`, initialised as PyTorch initialises
    /// `nn.LSTM` (uniform in `±1/√H`) and `nn.Linear`.
    pub fn new(width: usize, shape: PromptEncoderShape, device: &Device) -> Self {
        let hidden = shape.hidden;
        let bound = 1.0 / (hidden as f64).sqrt();
        let lstm = (0..if shape.lstm { shape.lstm_layers } else { 0 })
            .map(|layer| {
                let input = if layer == 0 { width } else { 2 * hidden };
                BiLstmConfig::new(input, hidden, true)
                    .with_initializer(Initializer::Uniform {
                        min: -bound,
                        max: bound,
                    })
                    .init(device)
            })
            .collect();
        let sizes = if shape.lstm {
            vec![2 * hidden, 2 * hidden, width]
        } else {
            vec![width, hidden, hidden, width]
        };
        let mlp = sizes
            .windows(2)
            .map(|pair| LinearConfig::new(pair[0], pair[1]).init(device))
            .collect();
        Self { lstm, mlp }
    }

    /// `[n, h]` → `[n, h]`.
    pub fn forward(&self, embeddings: Tensor<2>) -> Tensor<2> {
        let n = embeddings.dims()[0];
        let mut x = embeddings.unsqueeze_dim::<3>(0);
        for lstm in &self.lstm {
            x = lstm.forward(x, None).0;
        }
        let width = x.dims()[2];
        let mut x = x.reshape([n, width]);
        for (i, layer) in self.mlp.iter().enumerate() {
            if i > 0 {
                x = relu(x);
            }
            x = layer.forward(x);
        }
        x
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
