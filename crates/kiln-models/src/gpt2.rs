//! GPT-2 (Radford et al. 2019) as HF `GPT2Model` / `GPT2LMHeadModel` compute it: learned
//! positions, pre-LN blocks with causal self-attention, final layer norm, LM head tied to the
//! token embedding.
//!
//! HF stores GPT-2 projections as `Conv1D` with weights already `[in, out]`, Burn's `Linear`
//! layout, so they load untransposed. Positions count real tokens only (cumulative sum of the
//! attention mask), so a left-padded sequence gets the same hidden states as the same sequence
//! unpadded, as HF's `generate` arranges.

use std::ops::Range;
use std::path::Path;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::adapter::{AdapterContext, AdapterDropState, LayerAdapters, SubLayer};
use crate::attention::{
    Prefix, attend, causal_padding_bias, merge_heads, repeated_to, split_heads,
};
use crate::backbone::TunableBackbone;
use crate::config::{read_json, require, require_sizes};
use crate::error::Result;
use crate::prompt::{PrefixEncoder, SoftPrompt, TextBounds, insert_virtual_tokens, layer_prefixes};
pub use crate::states::Gpt2Input;
use crate::states::{BertInput, Readout, TokenStates, last_token_pool, mean_pool};
use crate::tunable::{TunableEmbedding, TunableLinear, normal_embedding};
use crate::weights::{KeyMapping, KeyTable, Layout, WeightFile};

/// The fields of a HF GPT-2 `config.json` that shape the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Positions in the position table.
    pub n_positions: usize,
    /// Width `h` of the token states.
    pub n_embd: usize,
    /// Blocks `L`.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Feed-forward width; HF's `null` means `4 * n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// The feed-forward non-linearity.
    #[serde(default = "default_act")]
    pub activation_function: Activation,
    /// Dropout on sub-layer outputs.
    #[serde(default = "default_dropout")]
    pub resid_pdrop: f64,
    /// Dropout on the embeddings.
    #[serde(default = "default_dropout")]
    pub embd_pdrop: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attn_pdrop: f64,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Scale attention scores by `1 / sqrt(head width)`.
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    /// Also scale them by `1 / (layer + 1)`.
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// The end-of-text token's id.
    #[serde(default = "default_eos")]
    pub eos_token_id: usize,
    /// Standard deviation of fresh weights (HF's `initializer_range`).
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
}

fn default_initializer_range() -> f64 {
    0.02
}

fn default_act() -> Activation {
    Activation::GeluNew
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_eos() -> usize {
    50256
}

impl Gpt2Config {
    /// A configuration of the given shape with HF's defaults for the rest (GELU-new, dropout
    /// 0.1, feed-forward 4x wide): what `kiln pretrain` trains from scratch.
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
        eos_token_id: usize,
    ) -> Self {
        Self {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            activation_function: default_act(),
            resid_pdrop: default_dropout(),
            embd_pdrop: default_dropout(),
            attn_pdrop: default_dropout(),
            layer_norm_epsilon: default_eps(),
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            eos_token_id,
            initializer_range: default_initializer_range(),
        }
    }

    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = read_json(path)?;
        let (h, ff) = (config.n_embd as u128, config.inner_size() as u128);
        let rows = (config.vocab_size + config.n_positions) as u128;
        require_sizes(
            path,
            &[
                ("vocab_size", config.vocab_size),
                ("n_positions", config.n_positions),
                ("n_embd", config.n_embd),
                ("n_layer", config.n_layer),
                ("n_inner", config.inner_size()),
            ],
            rows * h + config.n_layer as u128 * (4 * h * h + 2 * h * ff + 9 * h + ff),
        )?;
        require(
            path,
            config.n_head > 0 && config.n_embd.is_multiple_of(config.n_head),
            format!(
                "n_embd {} is not a multiple of n_head {}",
                config.n_embd, config.n_head
            ),
        )?;
        for (name, p) in [
            ("resid_pdrop", config.resid_pdrop),
            ("embd_pdrop", config.embd_pdrop),
            ("attn_pdrop", config.attn_pdrop),
        ] {
            require(
                path,
                (0.0..1.0).contains(&p),
                format!("{name} must be in [0, 1)"),
            )?;
        }
        Ok(config)
    }

    /// The feed-forward width.
    pub fn inner_size(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// A randomly initialised GPT-2 of this shape, initialised as HF's `GPT2Model(config)`.
    pub fn init(&self, device: &Device) -> Gpt2 {
        let h = self.n_embd;
        let layer_norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(self.layer_norm_epsilon)
                .init(device)
        };
        // HF's scheme: N(0, 0.02²) everywhere, the residual projections scaled by 1/sqrt(2L).
        let std = self.initializer_range;
        let linear = |d_in, d_out| TunableLinear::normal(d_in, d_out, std, device);
        let residual_std = std / (2.0 * self.n_layer as f64).sqrt();
        let residual = |d_in, d_out| TunableLinear::normal(d_in, d_out, residual_std, device);
        let embedding = |rows, width| normal_embedding(rows, width, std, device);
        let head_dim = (h / self.n_head) as f64;
        Gpt2 {
            wte: TunableEmbedding::from(embedding(self.vocab_size, h)),
            wpe: embedding(self.n_positions, h),
            dropout: DropoutConfig::new(self.embd_pdrop).init(),
            blocks: (0..self.n_layer)
                .map(|index| {
                    let mut scale = if self.scale_attn_weights {
                        1.0 / head_dim.sqrt()
                    } else {
                        1.0
                    };
                    if self.scale_attn_by_inverse_layer_idx {
                        scale /= (index + 1) as f64;
                    }
                    Gpt2Block {
                        ln_1: layer_norm(),
                        attention: Gpt2Attention {
                            c_attn: linear(h, 3 * h),
                            c_proj: residual(h, h),
                            heads: self.n_head,
                            scale,
                            probs_dropout: DropoutConfig::new(self.attn_pdrop).init(),
                            resid_dropout: DropoutConfig::new(self.resid_pdrop).init(),
                        },
                        ln_2: layer_norm(),
                        mlp: Gpt2Mlp {
                            c_fc: linear(h, self.inner_size()),
                            c_proj: residual(self.inner_size(), h),
                            activation: self.activation_function,
                            dropout: DropoutConfig::new(self.resid_pdrop).init(),
                        },
                        adapters: None,
                    }
                })
                .collect(),
            ln_f: layer_norm(),
            adapter_drop: AdapterDropState::default(),
            prompt: None,
            prefix_encoder: None,
            prefix_takes_positions: false,
        }
    }
}

/// kiln parameter path → HF `GPT2Model` tensor name. Conv1D weights are already `[in, out]`.
pub const GPT2_KEYS: KeyTable = &[
    row("wte.weight", "wte.weight"),
    row("wpe.weight", "wpe.weight"),
    row("blocks.{i}.ln_1.gamma", "h.{i}.ln_1.weight"),
    row("blocks.{i}.ln_1.beta", "h.{i}.ln_1.bias"),
    row(
        "blocks.{i}.attention.c_attn.weight",
        "h.{i}.attn.c_attn.weight",
    ),
    row("blocks.{i}.attention.c_attn.bias", "h.{i}.attn.c_attn.bias"),
    row(
        "blocks.{i}.attention.c_proj.weight",
        "h.{i}.attn.c_proj.weight",
    ),
    row("blocks.{i}.attention.c_proj.bias", "h.{i}.attn.c_proj.bias"),
    row("blocks.{i}.ln_2.gamma", "h.{i}.ln_2.weight"),
    row("blocks.{i}.ln_2.beta", "h.{i}.ln_2.bias"),
    row("blocks.{i}.mlp.c_fc.weight", "h.{i}.mlp.c_fc.weight"),
    row("blocks.{i}.mlp.c_fc.bias", "h.{i}.mlp.c_fc.bias"),
    row("blocks.{i}.mlp.c_proj.weight", "h.{i}.mlp.c_proj.weight"),
    row("blocks.{i}.mlp.c_proj.bias", "h.{i}.mlp.c_proj.bias"),
    row("ln_f.gamma", "ln_f.weight"),
    row("ln_f.beta", "ln_f.bias"),
];

const fn row(kiln: &'static str, hf: &'static str) -> KeyMapping {
    KeyMapping {
        kiln,
        hf,
        layout: Layout::Same,
    }
}

/// HF's `GPT2Model` with kiln's tuning slots.
#[derive(Module, Debug)]
pub struct Gpt2 {
    /// Token embedding, also the LM head (tied, as in HF).
    pub wte: TunableEmbedding,
    /// Position embeddings `[positions, h]`.
    pub wpe: Embedding,
    /// Dropout on the embeddings.
    pub dropout: Dropout,
    /// The blocks, bottom to top.
    pub blocks: Vec<Gpt2Block>,
    /// The final layer norm.
    pub ln_f: LayerNorm,
    /// AdapterDrop: how many of the lowest blocks run without adapters.
    #[module(skip)]
    pub adapter_drop: AdapterDropState,
    /// Virtual tokens in the input (prompt tuning, P-tuning).
    pub prompt: Option<SoftPrompt>,
    /// Prefix tuning's reparameterisation, producing every layer's prefix while training.
    pub prefix_encoder: Option<PrefixEncoder>,
    /// The attention prefix takes the first positions and the real tokens count on after it, as
    /// HF GPT-2 numbers them when peft's prefix tuning passes the prefix as `past_key_values`;
    /// off, the prefix takes no positions.
    #[module(skip)]
    pub prefix_takes_positions: bool,
}

/// One pre-LN block: norm, causal attention, residual; norm, feed-forward, residual.
#[derive(Module, Debug)]
pub struct Gpt2Block {
    /// Layer norm before attention.
    pub ln_1: LayerNorm,
    /// Causal self-attention.
    pub attention: Gpt2Attention,
    /// Layer norm before the feed-forward.
    pub ln_2: LayerNorm,
    /// The feed-forward block.
    pub mlp: Gpt2Mlp,
    /// Adapter slots (see [`crate::adapter`]); `None` for a plain block.
    pub adapters: Option<LayerAdapters>,
}

/// Causal multi-head self-attention.
#[derive(Module, Debug)]
pub struct Gpt2Attention {
    /// Fused query, key and value projection `[hidden, 3 * hidden]`, as HF's `c_attn`.
    pub c_attn: TunableLinear,
    /// Output projection.
    pub c_proj: TunableLinear,
    /// Attention heads.
    pub heads: usize,
    /// The factor on attention scores.
    pub scale: f64,
    /// Dropout on attention probabilities.
    pub probs_dropout: Dropout,
    /// Dropout on the output.
    pub resid_dropout: Dropout,
}

/// GPT-2's feed-forward block.
#[derive(Module, Debug)]
pub struct Gpt2Mlp {
    /// Up-projection.
    pub c_fc: TunableLinear,
    /// Down-projection.
    pub c_proj: TunableLinear,
    /// The non-linearity.
    #[module(skip)]
    pub activation: Activation,
    /// Dropout on the output.
    pub dropout: Dropout,
}

impl Gpt2 {
    /// Loads a HF GPT-2 directory onto `device`.
    pub fn from_pretrained(dir: &Path, device: &Device) -> Result<(Self, Gpt2Config)> {
        let config = Gpt2Config::from_file(&dir.join("config.json"))?;
        let mut weights = WeightFile::from_dir(dir)?;
        weights.strip_prefix("transformer.");
        let model = weights.load_into(config.init(device), GPT2_KEYS)?;
        Ok((model, config))
    }

    /// Every projection with its parameter path (`blocks.3.attention.c_attn`, `blocks.3.mlp.c_fc`):
    /// what LoRA targets by name and what merging walks.
    pub fn projections_mut(&mut self) -> Vec<(String, &mut TunableLinear)> {
        let mut found = Vec::new();
        for (i, block) in self.blocks.iter_mut().enumerate() {
            for (name, projection) in [
                ("attention.c_attn", &mut block.attention.c_attn),
                ("attention.c_proj", &mut block.attention.c_proj),
                ("mlp.c_fc", &mut block.mlp.c_fc),
                ("mlp.c_proj", &mut block.mlp.c_proj),
            ] {
                found.push((format!("blocks.{i}.{name}"), projection));
            }
        }
        found
    }

    /// Width `h` of the token states.
    pub fn hidden_size(&self) -> usize {
        self.wte.weight.shape().dims::<2>()[1]
    }

    /// Last hidden state `[batch, seq, hidden]`, after the final layer norm.
    pub fn forward(&self, input: Gpt2Input) -> Tensor<3> {
        self.forward_masked(input).0
    }

    /// The last hidden state with the masks of its positions (virtual tokens included):
    /// where attention looked, and where the real tokens are.
    pub fn forward_masked(&self, input: Gpt2Input) -> (Tensor<3>, Tensor<2, Int>, Tensor<2, Int>) {
        let states = self.run_blocks(self.embed(input), 0..self.blocks.len());
        (
            self.ln_f.forward(states.hidden),
            states.attention_mask,
            states.token_mask,
        )
    }

    /// Token and position embeddings, virtual tokens inserted: what the first block reads.
    pub fn embed(&self, input: Gpt2Input) -> TokenStates {
        let words = self.wte.forward(input.input_ids);
        let (words, attention_mask, token_mask) = match &self.prompt {
            None => (words, input.attention_mask.clone(), input.attention_mask),
            Some(prompt) => {
                let prompted = insert_virtual_tokens(
                    words,
                    &input.attention_mask,
                    prompt,
                    TextBounds::AllRealTokens,
                );
                (
                    prompted.embeddings,
                    prompted.attention_mask,
                    prompted.token_mask,
                )
            }
        };
        let offset = if self.prefix_takes_positions {
            self.prefix_rows()
        } else {
            0
        };
        TokenStates {
            hidden: self.add_positions(words, &attention_mask, offset),
            attention_mask,
            token_mask,
        }
    }

    /// Rows of the attention prefix the first block reads (from the prefix encoder, or the
    /// active adapter's prefix).
    pub fn prefix_rows(&self) -> usize {
        if let Some(encoder) = &self.prefix_encoder {
            return encoder.embedding.dims()[0];
        }
        self.blocks
            .first()
            .and_then(|block| block.adapters.as_ref())
            .and_then(LayerAdapters::prefix)
            .map_or(0, |(key, _)| key.dims()[0])
    }

    /// Last hidden state from input vectors `[batch, seq, hidden]` in place of token embeddings
    /// (positions still added), as the Frozen Pretrained Transformer feeds projected patches.
    pub fn forward_vectors(
        &self,
        vectors: Tensor<3>,
        attention_mask: &Tensor<2, Int>,
    ) -> Tensor<3> {
        let states = TokenStates {
            hidden: self.add_positions(vectors, attention_mask, 0),
            attention_mask: attention_mask.clone(),
            token_mask: attention_mask.clone(),
        };
        self.ln_f
            .forward(self.run_blocks(states, 0..self.blocks.len()).hidden)
    }

    fn add_positions(
        &self,
        vectors: Tensor<3>,
        attention_mask: &Tensor<2, Int>,
        offset: usize,
    ) -> Tensor<3> {
        // Positions count attended tokens only, so left padding shifts nothing.
        let positions = (attention_mask.clone().cumsum(1) - 1).clamp_min(0) + offset as i64;
        kiln_kernels::dropout(&self.dropout, vectors + self.wpe.forward(positions))
    }

    /// The blocks `blocks` (a range of indices) over `states`, without the final layer norm.
    pub fn run_blocks(&self, states: TokenStates, blocks: Range<usize>) -> TokenStates {
        let mut bias = causal_padding_bias(&states.attention_mask);
        let mut prefixes = layer_prefixes(self.prefix_encoder.as_ref()).skip(blocks.start);
        let skipped = self.adapter_drop.skipped_layers(&states.hidden.device());
        let first = self.blocks.first().and_then(|b| b.adapters.as_ref());
        let context = AdapterContext::new(first, &states.attention_mask);
        let mut hidden = states.hidden;
        for i in blocks {
            bias = repeated_to(bias, hidden.dims()[0]);
            let adapters_on = i >= skipped;
            hidden = self.blocks[i].forward(hidden, &bias, adapters_on, prefixes.next(), &context);
        }
        TokenStates { hidden, ..states }
    }

    /// The last hidden state (after the final layer norm) of `input`'s tokens, which follow the
    /// positions `cache` holds: each block attends over the cached keys and values and its own,
    /// and `cache` grows by `input`'s. An empty cache takes the whole prompt (virtual tokens and
    /// all); later calls take the next tokens, each costing one position instead of a rerun of
    /// everything before it.
    pub fn forward_cached(&self, input: Gpt2Input, cache: &mut KvCache) -> Tensor<3> {
        let fresh = input.input_ids.dims()[1];
        let (states, full_mask) = match &cache.attention_mask {
            None => {
                let states = self.embed(input);
                let mask = states.attention_mask.clone();
                (states, mask)
            }
            Some(past) => {
                let full_mask = Tensor::cat(vec![past.clone(), input.attention_mask.clone()], 1);
                let offset = if self.prefix_takes_positions {
                    self.prefix_rows()
                } else {
                    0
                };
                // Positions count the attended tokens of the whole sequence.
                let total = full_mask.dims()[1];
                let positions = ((full_mask.clone().cumsum(1) - 1).clamp_min(0) + offset as i64)
                    .narrow(1, total - fresh, fresh);
                let words = self.wte.forward(input.input_ids);
                let states = TokenStates {
                    hidden: kiln_kernels::dropout(
                        &self.dropout,
                        words + self.wpe.forward(positions),
                    ),
                    attention_mask: input.attention_mask.clone(),
                    token_mask: input.attention_mask,
                };
                (states, full_mask)
            }
        };
        let rows = states.hidden.dims()[1];
        let total = full_mask.dims()[1];
        // The new rows' queries against every position so far.
        let bias = causal_padding_bias(&full_mask).narrow(2, total - rows, rows);
        let mut prefixes = layer_prefixes(self.prefix_encoder.as_ref());
        let skipped = self.adapter_drop.skipped_layers(&states.hidden.device());
        let first = self.blocks.first().and_then(|b| b.adapters.as_ref());
        let context = AdapterContext::new(first, &full_mask).last_positions(rows);
        let mut hidden = states.hidden;
        let mut layers = Vec::with_capacity(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let past = cache.layers.get(i).cloned();
            let (out, kv) = block.forward_with_cache(
                hidden,
                &bias,
                (i >= skipped, prefixes.next(), &context),
                past,
            );
            hidden = out;
            layers.push(kv);
        }
        cache.layers = layers;
        cache.attention_mask = Some(full_mask);
        self.ln_f.forward(hidden)
    }

    /// Next-token logits `[batch, seq, vocab]` through the tied head.
    pub fn lm_logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let [batch, seq, width] = hidden.dims();
        let vocab = self.wte.weight.val();
        let rows = vocab.dims()[0];
        hidden
            .reshape([batch * seq, width])
            .matmul(vocab.transpose())
            .reshape([batch, seq, rows])
    }
}

/// Every block's keys and values so far (`[batch, heads, seq, head_dim]`, the prompt's virtual
/// tokens included, prefixes not) and the attention mask of their positions: what
/// [`Gpt2::forward_cached`] reuses between the steps of a generation.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<(Tensor<4>, Tensor<4>)>,
    attention_mask: Option<Tensor<2, Int>>,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.attention_mask.as_ref().map_or(0, |m| m.dims()[1])
    }

    /// Whether it holds no position.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Gpt2Block {
    /// With `adapters_on` false the block runs as the plain backbone (AdapterDrop). `prefix`
    /// (from a prefix encoder) takes the place of the active adapter's.
    pub fn forward(
        &self,
        hidden: Tensor<3>,
        bias: &Tensor<4>,
        adapters_on: bool,
        prefix: Option<(Tensor<2>, Tensor<2>)>,
        context: &AdapterContext,
    ) -> Tensor<3> {
        self.forward_with_cache(hidden, bias, (adapters_on, prefix, context), None)
            .0
    }

    /// [`Gpt2Block::forward`] after the keys and values `past` of earlier positions (which
    /// `bias` covers after the prefix); also returns the keys and values of all of them.
    pub fn forward_with_cache(
        &self,
        hidden: Tensor<3>,
        bias: &Tensor<4>,
        (adapters_on, prefix, context): (bool, Option<(Tensor<2>, Tensor<2>)>, &AdapterContext),
        past: Option<(Tensor<4>, Tensor<4>)>,
    ) -> (Tensor<3>, (Tensor<4>, Tensor<4>)) {
        let adapters = self.adapters.as_ref().filter(|_| adapters_on);
        let normed = self.ln_1.forward(hidden.clone());
        let prefix = LayerAdapters::gated_prefix(adapters, prefix, &normed);
        let (attended, kv) = self
            .attention
            .forward_with_cache(normed, bias, prefix, past);
        // Pre-LN: the plain block joins each sub-layer's output to the stream by a sum.
        let add = |a: Tensor<3>, b: Tensor<3>| a + b;
        let hidden = match adapters {
            Some(adapters) => {
                adapters.close_sub_layer(SubLayer::Attention, attended, hidden, add, context)
            }
            None => hidden + attended,
        };
        let normed = self.ln_2.forward(hidden.clone());
        let out = self.mlp.forward(normed.clone());
        let out = match adapters {
            Some(adapters) => {
                let feed_forward = SubLayer::FeedForward { input: normed };
                let out = adapters.close_sub_layer(feed_forward, out, hidden, add, context);
                adapters.after_layer(out, context)
            }
            None => hidden + out,
        };
        (out, kv)
    }
}

impl Gpt2Attention {
    /// One block over `hidden`.
    pub fn forward(
        &self,
        hidden: Tensor<3>,
        bias: &Tensor<4>,
        prefix: Option<Prefix>,
    ) -> Tensor<3> {
        self.forward_with_cache(hidden, bias, prefix, None).0
    }

    /// The attention of `hidden`'s positions over the keys and values `past` of earlier ones
    /// and their own; also returns the keys and values of all of them.
    pub fn forward_with_cache(
        &self,
        hidden: Tensor<3>,
        bias: &Tensor<4>,
        prefix: Option<Prefix>,
        past: Option<(Tensor<4>, Tensor<4>)>,
    ) -> (Tensor<3>, (Tensor<4>, Tensor<4>)) {
        let width = hidden.dims()[2];
        let qkv = self.c_attn.forward(hidden);
        let q = split_heads(qkv.clone().narrow(2, 0, width), self.heads);
        let mut k = split_heads(qkv.clone().narrow(2, width, width), self.heads);
        let mut v = split_heads(qkv.narrow(2, 2 * width, width), self.heads);
        if let Some((past_k, past_v)) = past {
            k = Tensor::cat(vec![past_k, k], 2);
            v = Tensor::cat(vec![past_v, v], 2);
        }
        let context = attend(
            q,
            k.clone(),
            v.clone(),
            bias,
            self.scale,
            &self.probs_dropout,
            prefix,
        );
        let out = kiln_kernels::dropout(
            &self.resid_dropout,
            self.c_proj.forward(merge_heads(context)),
        );
        (out, (k, v))
    }
}

impl Gpt2Mlp {
    /// The feed-forward block over `hidden`.
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        let inner = self.activation.forward(self.c_fc.forward(hidden));
        kiln_kernels::dropout(&self.dropout, self.c_proj.forward(inner))
    }
}

impl TunableBackbone for Gpt2 {
    fn name(&self) -> &'static str {
        "gpt2"
    }

    fn attention_dropout(&self) -> f64 {
        self.blocks
            .first()
            .map_or(0.0, |layer| layer.attention.probs_dropout.prob)
    }

    fn hidden_size(&self) -> usize {
        Gpt2::hidden_size(self)
    }

    fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    fn layer_path(&self, i: usize) -> String {
        format!("blocks.{i}")
    }

    fn top_paths(&self) -> Vec<String> {
        vec!["ln_f".into()]
    }

    fn norm_patterns(&self) -> Vec<String> {
        vec!["*ln_*".into()]
    }

    fn default_lora_targets(&self) -> Vec<String> {
        vec!["c_attn".into()]
    }

    fn default_ia3_targets(&self) -> (Vec<String>, Vec<String>) {
        // peft's: the fused query/key/value projection, and the feed-forward's second half.
        (
            vec!["c_attn".into(), "mlp.c_proj".into()],
            vec!["mlp.c_proj".into()],
        )
    }

    fn position_patterns(&self) -> Vec<String> {
        vec!["wpe.*".into()]
    }

    fn attention_patterns(&self, i: usize) -> Vec<String> {
        vec![format!("blocks.{i}.attention.*")]
    }

    fn feed_forward_patterns(&self, i: usize) -> Vec<String> {
        vec![format!("blocks.{i}.mlp.*")]
    }

    fn forward_vectors(
        &self,
        vectors: Tensor<3>,
        attention_mask: &Tensor<2, Int>,
    ) -> Result<Tensor<3>> {
        Ok(Gpt2::forward_vectors(self, vectors, attention_mask))
    }

    fn word_embedding(&self) -> &TunableEmbedding {
        &self.wte
    }

    fn word_embedding_mut(&mut self) -> (&'static str, &mut TunableEmbedding) {
        ("wte", &mut self.wte)
    }

    fn layer_adapters(&self) -> Vec<&Option<LayerAdapters>> {
        self.blocks.iter().map(|b| &b.adapters).collect()
    }

    fn layer_adapters_mut(&mut self) -> Vec<&mut Option<LayerAdapters>> {
        self.blocks.iter_mut().map(|b| &mut b.adapters).collect()
    }

    fn adapter_drop_state(&mut self) -> &mut AdapterDropState {
        &mut self.adapter_drop
    }

    fn adapter_drop(&self) -> AdapterDropState {
        self.adapter_drop
    }

    fn projections_mut(&mut self) -> Vec<(String, &mut TunableLinear)> {
        Gpt2::projections_mut(self)
    }

    fn prompt_slot(&mut self) -> Result<&mut Option<SoftPrompt>> {
        Ok(&mut self.prompt)
    }

    fn prefix_encoder_slot(&mut self) -> Result<&mut Option<PrefixEncoder>> {
        Ok(&mut self.prefix_encoder)
    }

    fn set_prefix_positions(&mut self, on: bool) -> bool {
        self.prefix_takes_positions = on;
        true
    }

    fn is_causal(&self) -> bool {
        true
    }

    fn encode(&self, input: BertInput, layers: Range<usize>) -> Option<TokenStates> {
        let input = Gpt2Input {
            input_ids: input.input_ids,
            attention_mask: input.attention_mask,
        };
        Some(self.run_blocks(self.embed(input), layers))
    }

    fn read_out_above(&self, states: TokenStates, layer: usize, readout: Readout) -> Tensor<2> {
        let states = self.run_blocks(states, layer..self.blocks.len());
        let hidden = self.ln_f.forward(states.hidden);
        // The last position attention looked at: a virtual token when the template puts some
        // behind the text, as P-tuning reads.
        match readout {
            Readout::Mean => mean_pool(hidden, states.token_mask),
            _ => last_token_pool(hidden, states.attention_mask),
        }
    }
}
