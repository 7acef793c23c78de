//! The Frozen Pretrained Transformer's model (Lu, Grover, Abbeel, Mordatch, "Pretrained
//! Transformers as Universal Computation Engines", 2021): a language-pretrained backbone reads a
//! non-language sequence through a new input layer (a linear projection of each patch,
//! orthogonally initialised with gain 1.41, or an embedding of each token id) and answers through
//! a new linear output layer on the last token(s). Which parts train is the `fpt` method's choice
//! (kiln-tuning); this module only wires the pieces.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig,
};
use burn::tensor::{Device, Int, Tensor};

use crate::backbone::TunableBackbone;
use crate::bert::Bert;
use crate::gpt2::Gpt2;
use crate::pretrained::Backbone;

/// The Frozen Pretrained Transformer's shape around its backbone.
#[derive(Config, Debug)]
pub struct FptConfig {
    /// Numbers per input token (a patch) or, with `input_ids`, the vocabulary size.
    pub input_size: usize,
    /// Tokens are vocabulary ids (embedded) rather than vectors (projected).
    #[config(default = false)]
    pub input_ids: bool,
    /// Tokens at the end of the sequence the answer is read from.
    #[config(default = 1)]
    pub readout_tokens: usize,
    /// Logits each readout token produces.
    pub outputs_per_token: usize,
    /// Dropout after the input layer.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Gain of the input projection's orthogonal initialisation (`None`: Burn's default).
    #[config(default = "Some(1.41)")]
    pub orthogonal_gain: Option<f64>,
}

/// Input layer, backbone (exactly one of `bert`, `gpt2`) and output layer.
#[derive(Module, Debug)]
pub struct Fpt {
    /// The input layer for vector tokens.
    pub input_projection: Option<Linear>,
    /// The input layer for id tokens.
    pub input_embedding: Option<Embedding>,
    /// Dropout after the input layer.
    pub input_dropout: Dropout,
    /// The BERT backbone, if it is one.
    pub bert: Option<Bert>,
    /// The GPT-2 backbone, if it is one.
    pub gpt2: Option<Gpt2>,
    /// The output layer.
    pub output: Linear,
    /// Tokens at the end the answer is read from.
    pub readout_tokens: usize,
}

/// A batch of token sequences: vectors `[batch, seq, input_size]` or ids `[batch, seq]`, right
/// padded, with the attention mask `[batch, seq]` (1 at real tokens).
#[derive(Debug, Clone)]
pub enum FptTokens {
    /// Vectors `[batch, seq, input_size]`.
    Vectors(Tensor<3>),
    /// Ids `[batch, seq]`.
    Ids(Tensor<2, Int>),
}

impl FptConfig {
    /// The model on `backbone` (BERT or GPT-2) with fresh input and output layers.
    pub fn init(&self, backbone: Backbone, device: &Device) -> crate::Result<Fpt> {
        let (bert, gpt2, width) = match backbone {
            Backbone::Bert(bert, _) => {
                let mut bert = *bert;
                // The answer is read from tokens, never from the pooler.
                bert.pooler = None;
                let width = bert.hidden_size();
                (Some(bert), None, width)
            }
            Backbone::Gpt2(gpt2, _) => {
                let width = gpt2.hidden_size();
                (None, Some(*gpt2), width)
            }
            Backbone::M2Bert(..) => {
                return Err(crate::ModelError::InvalidInput(
                    "FPT runs on BERT and GPT-2 backbones, not M2-BERT".into(),
                ));
            }
        };
        let (input_projection, input_embedding) = if self.input_ids {
            (
                None,
                Some(EmbeddingConfig::new(self.input_size, width).init(device)),
            )
        } else {
            let mut config = LinearConfig::new(self.input_size, width).with_bias(false);
            if let Some(gain) = self.orthogonal_gain {
                config = config.with_initializer(Initializer::Orthogonal { gain });
            }
            let mut projection = config.init(device);
            projection.bias = Some(Param::from_tensor(Tensor::zeros([width], device)));
            (Some(projection), None)
        };
        Ok(Fpt {
            input_projection,
            input_embedding,
            input_dropout: DropoutConfig::new(self.dropout).init(),
            bert,
            gpt2,
            output: LinearConfig::new(width, self.outputs_per_token).init(device),
            readout_tokens: self.readout_tokens,
        })
    }
}

impl Fpt {
    /// Logits `[batch, readout_tokens * outputs_per_token]`: the output layer on each of the
    /// last `readout_tokens` real tokens of every row, concatenated.
    pub fn forward(&self, tokens: FptTokens, attention_mask: Tensor<2, Int>) -> Tensor<2> {
        let vectors = match (tokens, &self.input_projection, &self.input_embedding) {
            (FptTokens::Vectors(v), Some(projection), _) => projection.forward(v),
            (FptTokens::Ids(ids), _, Some(embedding)) => embedding.forward(ids),
            _ => panic!("FPT input kind does not match its input layer (vectors vs ids)"),
        };
        let vectors = kiln_kernels::dropout(&self.input_dropout, vectors);
        let hidden = self
            .backbone()
            .forward_vectors(vectors, &attention_mask)
            .expect("FptConfig::init takes only backbones that read vectors");
        let batch = hidden.dims()[0];
        let last = last_real_tokens(hidden, &attention_mask, self.readout_tokens);
        let logits = self.output.forward(last);
        let per_token = logits.dims()[2];
        logits.reshape([batch, self.readout_tokens * per_token])
    }

    /// The backbone the model holds: the one place that looks at which it is.
    pub fn backbone(&self) -> &dyn TunableBackbone {
        match (&self.bert, &self.gpt2) {
            (Some(bert), _) => bert,
            (_, Some(gpt2)) => gpt2,
            _ => unreachable!("an FPT model always holds a backbone (see FptConfig::init)"),
        }
    }

    /// `bert` or `gpt2`: the first segment of every backbone parameter path.
    pub fn backbone_name(&self) -> &'static str {
        self.backbone().name()
    }

    /// Layers of the backbone.
    pub fn num_layers(&self) -> usize {
        self.backbone().num_layers()
    }
}

/// `[batch, count, hidden]`: the last `count` attended positions of each right-padded row.
fn last_real_tokens(hidden: Tensor<3>, attention_mask: &Tensor<2, Int>, count: usize) -> Tensor<3> {
    let [batch, _, width] = hidden.dims();
    let device = hidden.device();
    let lengths = attention_mask.clone().sum_dim(1); // [batch, 1]
    let offsets = Tensor::<1, Int>::arange(0..count as i64, &device)
        .unsqueeze_dim::<2>(0)
        .expand([batch, count]);
    let positions = (lengths.expand([batch, count]) - count as i64 + offsets).clamp_min(0);
    let index = positions
        .unsqueeze_dim::<3>(2)
        .expand([batch, count, width]);
    hidden.gather(1, index)
}
