//! BERT (Devlin et al. 2019) as HF `BertModel` computes it: word + position + token-type
//! embeddings, post-LN encoder layers, tanh pooler over the first token.
//!
//! Loads any HF BERT directory (`config.json` + `model.safetensors` or `pytorch_model.bin`),
//! with or without the `bert.` prefix of the task classes.

use std::ops::Range;
use std::path::Path;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::adapter::{AdapterContext, AdapterDropState, LayerAdapters, SubLayer};
use crate::attention::{Prefix, attend, merge_heads, padding_bias, repeated_to, split_heads};
use crate::backbone::{TunableBackbone, encoder_slots};
use crate::config::{read_json, require, require_sizes};
use crate::error::Result;
use crate::prompt::{
    PrefixEncoder, SoftPrompt, TextBounds, follow_sources, insert_virtual_tokens, layer_prefixes,
};
pub use crate::states::BertInput;
use crate::states::{Readout, TokenStates, first_token, mean_pool};
use crate::tunable::{TunableEmbedding, TunableLinear, normal_embedding};
use crate::weights::{KeyMapping, KeyTable, Layout, WeightFile};

/// The fields of a HF BERT `config.json` that shape the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width `h` of the token states.
    pub hidden_size: usize,
    /// Layers `L`.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Positions in the position table.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Token types (segments).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// The feed-forward non-linearity.
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// Dropout on embeddings and sub-layer outputs.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// The padding token's id.
    #[serde(default)]
    pub pad_token_id: usize,
    /// `absolute` (the only kind kiln loads).
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
    /// Standard deviation of fresh weights (HF's `initializer_range`).
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
}

fn default_max_positions() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_act() -> Activation {
    Activation::Gelu
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".into()
}
fn default_initializer_range() -> f64 {
    0.02
}

impl BertConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = read_json(path)?;
        config.validate(path)?;
        Ok(config)
    }

    pub(crate) fn validate(&self, path: &Path) -> Result<()> {
        let (h, ff) = (self.hidden_size as u128, self.intermediate_size as u128);
        let rows = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) as u128;
        let per_layer = 4 * h * h + 2 * h * ff + 9 * h + ff;
        require_sizes(
            path,
            &[
                ("vocab_size", self.vocab_size),
                ("hidden_size", self.hidden_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("intermediate_size", self.intermediate_size),
                ("max_position_embeddings", self.max_position_embeddings),
                ("type_vocab_size", self.type_vocab_size),
            ],
            rows * h + self.num_hidden_layers as u128 * per_layer + h * h,
        )?;
        require(
            path,
            self.num_attention_heads > 0
                && self.hidden_size.is_multiple_of(self.num_attention_heads),
            format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ),
        )?;
        require(
            path,
            self.position_embedding_type == "absolute",
            format!(
                "position_embedding_type `{}` is not supported (only `absolute`)",
                self.position_embedding_type
            ),
        )?;
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            require(
                path,
                (0.0..1.0).contains(&p),
                format!("{name} must be in [0, 1)"),
            )?;
        }
        Ok(())
    }

    /// Word, position and token-type embeddings with their norm, initialised as HF's (shared
    /// by BERT and M2-BERT).
    pub fn init_embeddings(&self, device: &Device) -> BertEmbeddings {
        let embedding = |rows, width| normal_embedding(rows, width, self.initializer_range, device);
        let h = self.hidden_size;
        BertEmbeddings {
            word: TunableEmbedding::from(embedding(self.vocab_size, h)),
            position: embedding(self.max_position_embeddings, h),
            token_type: embedding(self.type_vocab_size, h),
            norm: LayerNormConfig::new(h)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            dropout: DropoutConfig::new(self.hidden_dropout_prob).init(),
            norm_eps: self.layer_norm_eps,
        }
    }

    /// A randomly initialised BERT of this shape, with pooler, initialised as HF's
    /// `BertModel(config)`.
    pub fn init(&self, device: &Device) -> Bert {
        let layer_norm = || {
            LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let dropout = DropoutConfig::new(self.hidden_dropout_prob);
        // HF's scheme: N(0, 0.02²) weights and embeddings, zero biases.
        let std = self.initializer_range;
        let linear = |d_in, d_out| TunableLinear::normal(d_in, d_out, std, device);
        let h = self.hidden_size;
        Bert {
            embeddings: self.init_embeddings(device),
            layers: (0..self.num_hidden_layers)
                .map(|_| BertLayer {
                    attention: BertSelfAttention {
                        query: linear(h, h),
                        key: linear(h, h),
                        value: linear(h, h),
                        output: linear(h, h),
                        heads: self.num_attention_heads,
                        probs_dropout: DropoutConfig::new(self.attention_probs_dropout_prob).init(),
                    },
                    attention_norm: layer_norm(),
                    intermediate: linear(h, self.intermediate_size),
                    output: linear(self.intermediate_size, h),
                    output_norm: layer_norm(),
                    activation: self.hidden_act,
                    dropout: dropout.init(),
                    norm_eps: self.layer_norm_eps,
                    adapters: None,
                })
                .collect(),
            pooler: Some(BertPooler {
                dense: linear(h, h),
            }),
            adapter_drop: AdapterDropState::default(),
            prompt: None,
            prefix_encoder: None,
        }
    }
}

/// kiln parameter path → HF `BertModel` tensor name.
pub const BERT_KEYS: KeyTable = &[
    row(
        "embeddings.word.weight",
        "embeddings.word_embeddings.weight",
        Layout::Same,
    ),
    row(
        "embeddings.position.weight",
        "embeddings.position_embeddings.weight",
        Layout::Same,
    ),
    row(
        "embeddings.token_type.weight",
        "embeddings.token_type_embeddings.weight",
        Layout::Same,
    ),
    row(
        "embeddings.norm.gamma",
        "embeddings.LayerNorm.weight",
        Layout::Same,
    ),
    row(
        "embeddings.norm.beta",
        "embeddings.LayerNorm.bias",
        Layout::Same,
    ),
    row(
        "layers.{i}.attention.query.weight",
        "encoder.layer.{i}.attention.self.query.weight",
        Layout::Transposed,
    ),
    row(
        "layers.{i}.attention.query.bias",
        "encoder.layer.{i}.attention.self.query.bias",
        Layout::Same,
    ),
    row(
        "layers.{i}.attention.key.weight",
        "encoder.layer.{i}.attention.self.key.weight",
        Layout::Transposed,
    ),
    row(
        "layers.{i}.attention.key.bias",
        "encoder.layer.{i}.attention.self.key.bias",
        Layout::Same,
    ),
    row(
        "layers.{i}.attention.value.weight",
        "encoder.layer.{i}.attention.self.value.weight",
        Layout::Transposed,
    ),
    row(
        "layers.{i}.attention.value.bias",
        "encoder.layer.{i}.attention.self.value.bias",
        Layout::Same,
    ),
    row(
        "layers.{i}.attention.output.weight",
        "encoder.layer.{i}.attention.output.dense.weight",
        Layout::Transposed,
    ),
    row(
        "layers.{i}.attention.output.bias",
        "encoder.layer.{i}.attention.output.dense.bias",
        Layout::Same,
    ),
    row(
        "layers.{i}.attention_norm.gamma",
        "encoder.layer.{i}.attention.output.LayerNorm.weight",
        Layout::Same,
    ),
    row(
        "layers.{i}.attention_norm.beta",
        "encoder.layer.{i}.attention.output.LayerNorm.bias",
        Layout::Same,
    ),
    row(
        "layers.{i}.intermediate.weight",
        "encoder.layer.{i}.intermediate.dense.weight",
        Layout::Transposed,
    ),
    row(
        "layers.{i}.intermediate.bias",
        "encoder.layer.{i}.intermediate.dense.bias",
        Layout::Same,
    ),
    row(
        "layers.{i}.output.weight",
        "encoder.layer.{i}.output.dense.weight",
        Layout::Transposed,
    ),
    row(
        "layers.{i}.output.bias",
        "encoder.layer.{i}.output.dense.bias",
        Layout::Same,
    ),
    row(
        "layers.{i}.output_norm.gamma",
        "encoder.layer.{i}.output.LayerNorm.weight",
        Layout::Same,
    ),
    row(
        "layers.{i}.output_norm.beta",
        "encoder.layer.{i}.output.LayerNorm.bias",
        Layout::Same,
    ),
    row(
        "pooler.dense.weight",
        "pooler.dense.weight",
        Layout::Transposed,
    ),
    row("pooler.dense.bias", "pooler.dense.bias", Layout::Same),
];

const fn row(kiln: &'static str, hf: &'static str, layout: Layout) -> KeyMapping {
    KeyMapping { kiln, hf, layout }
}

/// HF's `BertModel` with kiln's tuning slots.
#[derive(Module, Debug)]
pub struct Bert {
    /// Word, position and token-type embeddings.
    pub embeddings: BertEmbeddings,
    /// The layers, bottom to top.
    pub layers: Vec<BertLayer>,
    /// Absent when the checkpoint has no pooler (`add_pooling_layer=False`).
    pub pooler: Option<BertPooler>,
    /// AdapterDrop: how many of the lowest layers run without adapters.
    #[module(skip)]
    pub adapter_drop: AdapterDropState,
    /// Virtual tokens in the input (prompt tuning, P-tuning).
    pub prompt: Option<SoftPrompt>,
    /// Prefix tuning's reparameterisation, producing every layer's prefix while training.
    pub prefix_encoder: Option<PrefixEncoder>,
}

/// BERT's embeddings: word + position + token type, layer norm, dropout.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    /// Word embeddings `[vocab, h]`.
    pub word: TunableEmbedding,
    /// Position embeddings `[positions, h]`.
    pub position: Embedding,
    /// Token-type embeddings `[types, h]`.
    pub token_type: Embedding,
    /// The layer norm after the sum.
    pub norm: LayerNorm,
    /// Dropout after the norm.
    pub dropout: Dropout,
    /// The norm's epsilon (`layer_norm_eps`), for the fused add + layer norm.
    #[module(skip)]
    pub norm_eps: f64,
}

/// Multi-head self-attention with its output projection.
#[derive(Module, Debug)]
pub struct BertSelfAttention {
    /// Query projection.
    pub query: TunableLinear,
    /// Key projection.
    pub key: TunableLinear,
    /// Value projection.
    pub value: TunableLinear,
    /// Output projection.
    pub output: TunableLinear,
    /// Attention heads.
    pub heads: usize,
    /// Dropout on the attention probabilities.
    pub probs_dropout: Dropout,
}

/// One post-LN layer: attention, residual + norm, feed-forward, residual + norm.
#[derive(Module, Debug)]
pub struct BertLayer {
    /// Self-attention.
    pub attention: BertSelfAttention,
    /// Layer norm after attention's residual.
    pub attention_norm: LayerNorm,
    /// Feed-forward up-projection.
    pub intermediate: TunableLinear,
    /// Feed-forward down-projection.
    pub output: TunableLinear,
    /// Layer norm after the feed-forward's residual.
    pub output_norm: LayerNorm,
    /// The feed-forward non-linearity.
    #[module(skip)]
    pub activation: Activation,
    /// Dropout on sub-layer outputs.
    pub dropout: Dropout,
    /// Both norms' epsilon (`layer_norm_eps`), for the fused add + layer norm.
    #[module(skip)]
    pub norm_eps: f64,
    /// Adapter slots (see [`crate::adapter`]); `None` for a plain layer.
    pub adapters: Option<LayerAdapters>,
}

/// `tanh(W · h_cls + b)`.
#[derive(Module, Debug)]
pub struct BertPooler {
    /// The dense projection.
    pub dense: TunableLinear,
}

/// What BERT gives for a batch.
#[derive(Debug, Clone)]
pub struct BertOutput {
    /// `[batch, seq, hidden]`; `seq` counts virtual tokens when the model has a prompt.
    pub last_hidden_state: Tensor<3>,
    /// `[batch, hidden]`, when the model has a pooler.
    pub pooled: Option<Tensor<2>>,
    /// `[batch, seq]`: 1 where attention looked (real and virtual tokens).
    pub attention_mask: Tensor<2, Int>,
    /// `[batch, seq]`: 1 at real tokens only.
    pub token_mask: Tensor<2, Int>,
}

impl Bert {
    /// Loads a HF BERT directory onto `device`.
    pub fn from_pretrained(dir: &Path, device: &Device) -> Result<(Self, BertConfig)> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let mut weights = WeightFile::from_dir(dir)?;
        weights.strip_prefix("bert.");
        for name in weights.names().map(str::to_string).collect::<Vec<_>>() {
            // Checkpoints from the TensorFlow era name LayerNorm parameters gamma/beta.
            if let Some(stem) = name.strip_suffix("LayerNorm.gamma") {
                weights.rename(&name, &format!("{stem}LayerNorm.weight"));
            } else if let Some(stem) = name.strip_suffix("LayerNorm.beta") {
                weights.rename(&name, &format!("{stem}LayerNorm.bias"));
            }
        }
        let mut model = config.init(device);
        if !weights.contains("pooler.dense.weight") {
            model.pooler = None;
        }
        let model = weights.load_into(model, BERT_KEYS)?;
        Ok((model, config))
    }

    /// Every projection with its parameter path (`layers.3.attention.query`, `pooler.dense`):
    /// what LoRA targets by name and what merging walks.
    pub fn projections_mut(&mut self) -> Vec<(String, &mut TunableLinear)> {
        let mut found = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let attention = &mut layer.attention;
            for (name, projection) in [
                ("attention.query", &mut attention.query),
                ("attention.key", &mut attention.key),
                ("attention.value", &mut attention.value),
                ("attention.output", &mut attention.output),
                ("intermediate", &mut layer.intermediate),
                ("output", &mut layer.output),
            ] {
                found.push((format!("layers.{i}.{name}"), projection));
            }
        }
        if let Some(pooler) = self.pooler.as_mut() {
            found.push(("pooler.dense".to_string(), &mut pooler.dense));
        }
        found
    }

    /// Width `h` of the token states.
    pub fn hidden_size(&self) -> usize {
        self.embeddings.word.weight.shape().dims::<2>()[1]
    }

    /// Token states, pooled state and masks for a batch.
    pub fn forward(&self, input: BertInput) -> BertOutput {
        let states = self.encode_layers(self.embed(input), 0..self.layers.len());
        let pooled = self
            .pooler
            .as_ref()
            .map(|pooler| pooler.forward(states.hidden.clone()));
        BertOutput {
            last_hidden_state: states.hidden,
            pooled,
            attention_mask: states.attention_mask,
            token_mask: states.token_mask,
        }
    }

    /// The embedded input, virtual tokens inserted: what the first layer reads.
    pub fn embed(&self, input: BertInput) -> TokenStates {
        let BertInput {
            input_ids,
            attention_mask,
            token_type_ids,
        } = input;
        match &self.prompt {
            None => TokenStates {
                hidden: self.embeddings.forward(input_ids, token_type_ids),
                attention_mask: attention_mask.clone(),
                token_mask: attention_mask,
            },
            Some(prompt) => {
                let words = self.embeddings.word.forward(input_ids);
                let prompted = insert_virtual_tokens(
                    words,
                    &attention_mask,
                    prompt,
                    TextBounds::InsideSpecialTokens,
                );
                let types = follow_sources(token_type_ids, &prompted.sources, 0);
                TokenStates {
                    hidden: self.embeddings.forward_words(prompted.embeddings, types),
                    attention_mask: prompted.attention_mask,
                    token_mask: prompted.token_mask,
                }
            }
        }
    }

    /// The layers `layers` (a range of indices) over `states`.
    pub fn encode_layers(&self, states: TokenStates, layers: Range<usize>) -> TokenStates {
        TokenStates {
            hidden: self.run_layers(states.hidden, &states.attention_mask, layers),
            ..states
        }
    }
}

impl Bert {
    /// Last hidden state `[batch, seq, hidden]` from input vectors `[batch, seq, hidden]` in
    /// place of word embeddings (positions, token type 0, the embedding norm still apply), as
    /// the Frozen Pretrained Transformer feeds projected patches.
    pub fn forward_vectors(
        &self,
        vectors: Tensor<3>,
        attention_mask: &Tensor<2, Int>,
    ) -> Tensor<3> {
        let types = attention_mask.zeros_like();
        self.encode(
            self.embeddings.forward_words(vectors, types),
            attention_mask,
        )
    }

    /// The layers over embedded input.
    fn encode(&self, hidden: Tensor<3>, attention_mask: &Tensor<2, Int>) -> Tensor<3> {
        self.run_layers(hidden, attention_mask, 0..self.layers.len())
    }

    fn run_layers(
        &self,
        mut hidden: Tensor<3>,
        attention_mask: &Tensor<2, Int>,
        layers: Range<usize>,
    ) -> Tensor<3> {
        let mut bias = padding_bias(attention_mask);
        let mut prefixes = layer_prefixes(self.prefix_encoder.as_ref()).skip(layers.start);
        let skipped = self.adapter_drop.skipped_layers(&hidden.device());
        let first = self.layers.first().and_then(|l| l.adapters.as_ref());
        let context = AdapterContext::new(first, attention_mask);
        for i in layers {
            bias = repeated_to(bias, hidden.dims()[0]);
            let adapters_on = i >= skipped;
            hidden = self.layers[i].forward(hidden, &bias, adapters_on, prefixes.next(), &context);
        }
        hidden
    }
}

impl BertEmbeddings {
    /// The embedded ids `[batch, seq, h]`.
    pub fn forward(&self, input_ids: Tensor<2, Int>, token_type_ids: Tensor<2, Int>) -> Tensor<3> {
        self.forward_words(self.word.forward(input_ids), token_type_ids)
    }

    /// From word embeddings `[batch, seq, h]` (virtual tokens included) on.
    pub fn forward_words(&self, words: Tensor<3>, token_type_ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq, _] = words.dims();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &words.device())
            .unsqueeze_dim::<2>(0)
            .expand([batch, seq]);
        let normed = kiln_kernels::add_layer_norm(
            words + self.position.forward(positions),
            self.token_type.forward(token_type_ids),
            &self.norm,
            self.norm_eps,
            None,
        );
        kiln_kernels::dropout(&self.dropout, normed)
    }
}

impl BertSelfAttention {
    /// One layer over `hidden`.
    pub fn forward(
        &self,
        hidden: Tensor<3>,
        bias: &Tensor<4>,
        prefix: Option<Prefix>,
    ) -> Tensor<3> {
        let q = split_heads(self.query.forward(hidden.clone()), self.heads);
        let k = split_heads(self.key.forward(hidden.clone()), self.heads);
        let v = split_heads(self.value.forward(hidden), self.heads);
        let head_dim = q.dims()[3];
        let scale = 1.0 / (head_dim as f64).sqrt();
        let context = attend(q, k, v, bias, scale, &self.probs_dropout, prefix);
        self.output.forward(merge_heads(context))
    }
}

impl BertLayer {
    /// With `adapters_on` false the layer runs as the plain backbone (AdapterDrop). `prefix`
    /// (from a prefix encoder) takes the place of the active adapter's.
    pub fn forward(
        &self,
        hidden: Tensor<3>,
        bias: &Tensor<4>,
        adapters_on: bool,
        prefix: Option<(Tensor<2>, Tensor<2>)>,
        context: &AdapterContext,
    ) -> Tensor<3> {
        let adapters = self.adapters.as_ref().filter(|_| adapters_on);
        let prefix = LayerAdapters::gated_prefix(adapters, prefix, &hidden);
        let attended = self.attention.forward(hidden.clone(), bias, prefix);
        let hidden = self.close(
            attended,
            hidden,
            &self.attention_norm,
            (adapters, context),
            SubLayer::Attention,
        );
        let inner = match self.activation {
            Activation::Gelu => self.intermediate.forward_bias_gelu(hidden.clone()),
            other => other.forward(self.intermediate.forward(hidden.clone())),
        };
        let out = self.output.forward(inner);
        let feed_forward = SubLayer::FeedForward {
            input: hidden.clone(),
        };
        let out = self.close(
            out,
            hidden,
            &self.output_norm,
            (adapters, context),
            feed_forward,
        );
        match adapters {
            Some(adapters) => adapters.after_layer(out, context),
            None => out,
        }
    }

    /// `norm(dropout(out) + residual)`, the end of a post-LN sub-layer, with the layer's adapters
    /// where they act on it. Without one, dropout, residual add and norm are one fused kernel.
    fn close(
        &self,
        out: Tensor<3>,
        residual: Tensor<3>,
        norm: &LayerNorm,
        (adapters, context): (Option<&LayerAdapters>, &AdapterContext),
        sub_layer: SubLayer,
    ) -> Tensor<3> {
        let eps = self.norm_eps;
        match adapters.filter(|a| a.acts_on(&sub_layer)) {
            Some(adapters) => adapters.close_sub_layer(
                sub_layer,
                kiln_kernels::dropout(&self.dropout, out),
                residual,
                |a, b| kiln_kernels::add_layer_norm(a, b, norm, eps, None),
                context,
            ),
            None => kiln_kernels::add_layer_norm(out, residual, norm, eps, Some(&self.dropout)),
        }
    }
}

impl BertPooler {
    /// `tanh(W · h_cls + b)` for each row.
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<2> {
        let [batch, _, width] = hidden.dims();
        let first = hidden.slice_dim(1, 0..1).reshape([batch, width]);
        self.dense.forward(first).tanh()
    }
}

impl TunableBackbone for Bert {
    fn name(&self) -> &'static str {
        "bert"
    }

    fn attention_dropout(&self) -> f64 {
        self.layers
            .first()
            .map_or(0.0, |layer| layer.attention.probs_dropout.prob)
    }

    fn hidden_size(&self) -> usize {
        Bert::hidden_size(self)
    }

    encoder_slots!();

    fn default_lora_targets(&self) -> Vec<String> {
        vec!["query".into(), "value".into()]
    }

    fn default_ia3_targets(&self) -> (Vec<String>, Vec<String>) {
        // The paper's keys, values and feed-forward activation. (peft's default, `output.dense`,
        // also matches the attention output by suffix.)
        let feed_forward = "layers.*.output".to_string();
        (
            vec!["key".into(), "value".into(), feed_forward.clone()],
            vec![feed_forward],
        )
    }

    fn attention_patterns(&self, i: usize) -> Vec<String> {
        vec![format!("layers.{i}.attention.*")]
    }

    fn feed_forward_patterns(&self, i: usize) -> Vec<String> {
        vec![
            format!("layers.{i}.intermediate.*"),
            format!("layers.{i}.output.*"),
        ]
    }

    fn forward_vectors(
        &self,
        vectors: Tensor<3>,
        attention_mask: &Tensor<2, Int>,
    ) -> Result<Tensor<3>> {
        Ok(Bert::forward_vectors(self, vectors, attention_mask))
    }

    fn projections_mut(&mut self) -> Vec<(String, &mut TunableLinear)> {
        Bert::projections_mut(self)
    }

    fn prompt_slot(&mut self) -> Result<&mut Option<SoftPrompt>> {
        Ok(&mut self.prompt)
    }

    fn prefix_encoder_slot(&mut self) -> Result<&mut Option<PrefixEncoder>> {
        Ok(&mut self.prefix_encoder)
    }

    fn encode(&self, input: BertInput, layers: Range<usize>) -> Option<TokenStates> {
        Some(self.encode_layers(self.embed(input), layers))
    }

    fn read_out_above(&self, states: TokenStates, layer: usize, readout: Readout) -> Tensor<2> {
        let states = self.encode_layers(states, layer..self.layers.len());
        match (readout, &self.pooler) {
            (Readout::Pooler, Some(pooler)) => pooler.forward(states.hidden),
            (Readout::Mean, _) => mean_pool(states.hidden, states.token_mask),
            (_, _) => first_token(states.hidden),
        }
    }
}
