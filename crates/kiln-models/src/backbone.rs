//! [`TunableBackbone`]: what every backbone (BERT, GPT-2, M2-BERT, and the ViT to come) gives
//! the task models and the methods: its name and shape, its parameter paths, its tuning slots
//! (layer adapters, projections, prompt, prefix encoder), and its forward pass to one vector per
//! text. `SequenceClassifier::backbone` is the one place that picks the backbone a model holds;
//! everything else goes through this trait.

use std::ops::Range;

use burn::tensor::{Int, Tensor};

use crate::adapter::{AdapterDropState, LayerAdapters};
use crate::error::{ModelError, Result};
use crate::prompt::{PrefixEncoder, SoftPrompt};
use crate::states::{BertInput, Readout, TokenStates};
use crate::tunable::{TunableEmbedding, TunableLinear};

/// A backbone with tuning slots. Paths it returns are relative to the backbone (`layers.3`);
/// the classifier puts [`TunableBackbone::name`] in front.
pub trait TunableBackbone {
    /// The first segment of every parameter path: `bert`, `gpt2`, `m2`.
    fn name(&self) -> &'static str;

    /// Width `h` of the token states.
    fn hidden_size(&self) -> usize;

    /// Transformer layers.
    fn num_layers(&self) -> usize;

    /// Path of layer `i`: `layers.3` (BERT, M2-BERT) or `blocks.3` (GPT-2).
    fn layer_path(&self, i: usize) -> String {
        format!("layers.{i}")
    }

    /// Modules above the last layer (they see only what the last layer gives them).
    fn top_paths(&self) -> Vec<String>;

    /// Patterns of every layer-norm parameter.
    fn norm_patterns(&self) -> Vec<String> {
        vec!["*norm.*".into()]
    }

    /// Patterns of the position embeddings.
    fn position_patterns(&self) -> Vec<String> {
        vec!["embeddings.position.*".into()]
    }

    /// Patterns of layer `i`'s token mixing (attention, or M2-BERT's mixer).
    fn attention_patterns(&self, i: usize) -> Vec<String>;

    /// Patterns of layer `i`'s feed-forward block.
    fn feed_forward_patterns(&self, i: usize) -> Vec<String>;

    /// The projections LoRA targets unless told otherwise (peft's defaults).
    fn default_lora_targets(&self) -> Vec<String>;

    /// The projections IA3 scales unless told otherwise, and those of them it scales on the
    /// input (the feed-forward's second projection, whose input is the inner activation).
    fn default_ia3_targets(&self) -> (Vec<String>, Vec<String>);

    /// The token embedding table.
    fn word_embedding(&self) -> &TunableEmbedding;

    /// The token embedding table, to change, with its path (`embeddings.word`, `wte`).
    fn word_embedding_mut(&mut self) -> (&'static str, &mut TunableEmbedding);

    /// Every layer's adapter slots, bottom to top.
    fn layer_adapters(&self) -> Vec<&Option<LayerAdapters>>;

    /// Every layer's adapter slots, bottom to top, to change.
    fn layer_adapters_mut(&mut self) -> Vec<&mut Option<LayerAdapters>>;

    /// How many of the lowest layers run without adapters (AdapterDrop).
    fn adapter_drop_state(&mut self) -> &mut AdapterDropState;

    /// [`TunableBackbone::adapter_drop_state`], to read.
    fn adapter_drop(&self) -> AdapterDropState;

    /// Every projection with its path (`layers.0.attention.query`).
    fn projections_mut(&mut self) -> Vec<(String, &mut TunableLinear)>;

    /// The slot for virtual tokens in the input; an error where the backbone has no attention
    /// for them to act through.
    fn prompt_slot(&mut self) -> Result<&mut Option<SoftPrompt>> {
        Err(no_attention("virtual tokens"))
    }

    /// The slot for prefix tuning's reparameterisation; an error without attention.
    fn prefix_encoder_slot(&mut self) -> Result<&mut Option<PrefixEncoder>> {
        Err(no_attention("attention prefixes"))
    }

    /// Whether attention prefixes (adapters with `prefix_len > 0`) can go in the layers.
    fn has_attention(&self) -> bool {
        true
    }

    /// Parameters the backbone's reference trains with their own optimiser settings; full paths
    /// (`m2.layers.0.mixer.filter.z`). Empty for most.
    fn optimizer_groups(&self) -> Vec<OptimizerGroup> {
        Vec::new()
    }

    /// The dropout rate on attention probabilities (AdapterFusion uses it on its scores, as
    /// AdapterHub does); 0 for a backbone without attention.
    fn attention_dropout(&self) -> f64 {
        0.0
    }

    /// Numbers the real tokens after an attention prefix, as HF GPT-2 does under peft's prefix
    /// tuning; `false` for a backbone that cannot.
    fn set_prefix_positions(&mut self, _on: bool) -> bool {
        false
    }

    /// Whether its text starts with a `[CLS]` token a classifier can read.
    fn has_cls_token(&self) -> bool {
        !self.is_causal()
    }

    /// Whether attention only looks back (GPT-2): the last token is then the one that read the
    /// whole text.
    fn is_causal(&self) -> bool {
        false
    }

    /// Whether it has a pooler (BERT's, M2-BERT's) loaded.
    fn has_pooler(&self) -> bool {
        false
    }

    /// Drops the pooler (it is neither trained nor counted when the readout does not use it).
    fn drop_pooler(&mut self) {}

    /// Whether a frozen bottom of it can be computed once per example and cached: not where
    /// its token states depend on the batch they were computed in (M2-BERT's mixer reads
    /// padded positions).
    fn can_be_cut(&self) -> bool {
        true
    }

    /// The embedded input, then layers `layers`: a frozen bottom to cache, or `None` where the
    /// backbone cannot be cut.
    fn encode(&self, input: BertInput, layers: Range<usize>) -> Option<TokenStates>;

    /// Layers `layer..` over `states`, what sits above them, and `readout`: one vector per text.
    /// Only called with states [`TunableBackbone::encode`] gave.
    fn read_out_above(&self, states: TokenStates, layer: usize, readout: Readout) -> Tensor<2>;

    /// The token states `[batch, seq, h]` for input vectors `[batch, seq, h]` that take the
    /// word embeddings' place (the Frozen Pretrained Transformer's input layer); an error where
    /// the backbone cannot read vectors.
    fn forward_vectors(
        &self,
        _vectors: Tensor<3>,
        _attention_mask: &Tensor<2, Int>,
    ) -> Result<Tensor<3>> {
        Err(ModelError::InvalidInput(format!(
            "the {} backbone does not read input vectors (FPT runs on BERT and GPT-2)",
            self.name()
        )))
    }

    /// The whole forward pass to one vector per text `[batch, h]`.
    fn read_out(&self, input: BertInput, readout: Readout) -> Tensor<2> {
        match self.encode(input, 0..0) {
            Some(states) => self.read_out_above(states, 0, readout),
            None => unreachable!("a backbone that cannot be cut overrides read_out"),
        }
    }
}

/// The error for what needs attention on a backbone that mixes tokens otherwise.
pub(crate) fn no_attention(what: &str) -> ModelError {
    ModelError::InvalidInput(format!(
        "{what} need attention layers; M2-BERT mixes tokens with long convolutions instead"
    ))
}

/// The part of a [`TunableBackbone`] impl that BERT and M2-BERT share: they keep their slots
/// under the same field names (`embeddings.word`, `layers[i].adapters`, `pooler`,
/// `adapter_drop`).
macro_rules! encoder_slots {
    () => {
        fn num_layers(&self) -> usize {
            self.layers.len()
        }

        fn top_paths(&self) -> Vec<String> {
            self.pooler.iter().map(|_| "pooler".to_string()).collect()
        }

        fn word_embedding(&self) -> &TunableEmbedding {
            &self.embeddings.word
        }

        fn word_embedding_mut(&mut self) -> (&'static str, &mut TunableEmbedding) {
            ("embeddings.word", &mut self.embeddings.word)
        }

        fn layer_adapters(&self) -> Vec<&Option<LayerAdapters>> {
            self.layers.iter().map(|l| &l.adapters).collect()
        }

        fn layer_adapters_mut(&mut self) -> Vec<&mut Option<LayerAdapters>> {
            self.layers.iter_mut().map(|l| &mut l.adapters).collect()
        }

        fn adapter_drop_state(&mut self) -> &mut AdapterDropState {
            &mut self.adapter_drop
        }

        fn adapter_drop(&self) -> AdapterDropState {
            self.adapter_drop
        }

        fn has_pooler(&self) -> bool {
            self.pooler.is_some()
        }

        fn drop_pooler(&mut self) {
            self.pooler = None;
        }
    };
}
pub(crate) use encoder_slots;

/// Parameters trained with their own optimiser settings (M2-BERT's long-convolution filters).
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerGroup {
    /// A regular expression over full parameter paths; where groups overlap, the later wins.
    pub pattern: String,
    /// The group's peak learning rate; the run's schedule scales it as it scales the base rate.
    pub lr: f64,
    /// The group's decoupled weight decay.
    pub weight_decay: f64,
}
