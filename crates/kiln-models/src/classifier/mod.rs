//! A backbone with a task head: what kiln fine-tunes for text classification and regression.
//!
//! The backbone's token states are read out to one vector per text (mean over real tokens, the
//! `[CLS]` state, BERT's pooler, or the last real token for GPT-2), then an MLP head with `k`
//! linear layers maps it to the task's outputs (classes, or one score for regression). Parameter
//! paths are `bert.*`, `gpt2.*` or `m2.*` for the backbone and `head.*` for the head: the names
//! the methods' trainability patterns match. What the methods fill lives next to its slots:
//! the adapter registry in `adapters.rs`, LoRA serving and merging in `lora.rs`, prompts and
//! prefixes in `prompts.rs`; this file keeps the backbone, the readout and the head.

mod adalora;
mod adapters;
mod compose;
mod lora;
mod prompts;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::adapter::AdapterConfig;
use crate::backbone::TunableBackbone;
use crate::bert::Bert;
use crate::error::{ModelError, Result};
use crate::gpt2::Gpt2;
use crate::m2::M2Bert;
use crate::pretrained::Backbone;
use crate::side::{SideConfig, SideNetwork};
use crate::states::{BertInput, Readout, TokenStates, mean_pool};
use crate::tunable::TunableEmbedding;

/// Where the frozen bottom of a model ends, for methods that train only above it: everything
/// below the head (linear probe, MLP head), or the layers below `BeforeLayer(k)` (partial-k).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrozenCut {
    /// Everything below the head (the head's input).
    Features,
    /// The embeddings and the layers below this one.
    BeforeLayer(usize),
}

/// Shape of the task head: `layers` linear layers (the last maps to `outputs`), GELU between.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Linear layers `k` (the last maps to the outputs).
    pub layers: usize,
    /// Outputs: classes, or 1 for regression.
    pub outputs: usize,
    /// Dropout before each linear layer.
    pub dropout: f64,
}

impl HeadConfig {
    /// The head on features of `width`.
    pub fn init(&self, width: usize, device: &Device) -> Result<MlpHead> {
        if self.layers == 0 || self.outputs == 0 {
            return Err(ModelError::InvalidInput(format!(
                "a head needs at least one layer and one output (got {} layers, {} outputs)",
                self.layers, self.outputs
            )));
        }
        Ok(MlpHead {
            hidden: (1..self.layers)
                .map(|_| LinearConfig::new(width, width).init(device))
                .collect(),
            output: LinearConfig::new(width, self.outputs).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            activation: Activation::Gelu,
        })
    }

    /// Parameters of the head on features of `width`: `(k-1)(w² + w) + w·c + c`.
    pub fn num_params(&self, width: usize) -> usize {
        (self.layers - 1) * (width * width + width) + width * self.outputs + self.outputs
    }
}

/// `k` linear layers with dropout before each and a non-linearity (GELU; an imported
/// AdapterHub head's own) between them.
#[derive(Module, Debug)]
pub struct MlpHead {
    /// The layers before the last, each followed by the non-linearity.
    pub hidden: Vec<Linear>,
    /// The last linear layer.
    pub output: Linear,
    /// Dropout before each linear layer.
    pub dropout: Dropout,
    /// The non-linearity after each hidden layer.
    #[module(skip)]
    pub activation: Activation,
}

impl MlpHead {
    /// The head's outputs `[batch, outputs]`.
    pub fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        let mut x = features;
        for layer in &self.hidden {
            let y = layer.forward(kiln_kernels::dropout(&self.dropout, x));
            x = match self.activation {
                Activation::Gelu => gelu(y),
                other => other.forward(y),
            };
        }
        self.output.forward(kiln_kernels::dropout(&self.dropout, x))
    }
}

/// An adapter the model holds (in every layer's slots), by name.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedAdapter {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub config: AdapterConfig,
}

/// A backbone (exactly one of `bert`, `gpt2`, `m2`: the field names are the first segment of
/// the parameter paths) with a readout and a task head. [`SequenceClassifier::backbone`] is the
/// one place that picks the one it holds; everything else reaches it as a [`TunableBackbone`].
#[derive(Module, Debug)]
pub struct SequenceClassifier {
    /// The BERT backbone, if it is one.
    pub bert: Option<Bert>,
    /// The GPT-2 backbone, if it is one.
    pub gpt2: Option<Gpt2>,
    /// The M2-BERT backbone, if it is one.
    pub m2: Option<M2Bert>,
    /// Side-tuning's side network, blended with the backbone's features.
    pub side: Option<SideNetwork>,
    /// The task head.
    pub head: MlpHead,
    /// How texts become one vector.
    #[module(skip)]
    pub readout: Readout,
    /// The adapters in the layers' slots, in slot order (index `k` is `adapters.loaded.k`).
    #[module(skip)]
    pub adapters: Vec<NamedAdapter>,
    /// AdapterDrop's robust training: each step drops the adapters of the lowest `n` layers, `n`
    /// drawn uniformly from `0..=adapter_drop_max`.
    #[module(skip)]
    pub adapter_drop_max: usize,
    /// Names of the LoRA adapters served on this base (index `k` is every projection's
    /// `served[k]`).
    #[module(skip)]
    pub lora_adapters: Vec<String>,
}

impl SequenceClassifier {
    /// Puts `head` on `backbone`. BERT's pooler is dropped unless the readout uses it, so that it
    /// is neither trained nor counted for nothing.
    pub fn new(
        backbone: Backbone,
        readout: Readout,
        head: HeadConfig,
        device: &Device,
    ) -> Result<Self> {
        let (mut bert, mut gpt2, mut m2) = match backbone {
            Backbone::Bert(model, _) => (Some(*model), None, None),
            Backbone::Gpt2(model, _) => (None, Some(*model), None),
            Backbone::M2Bert(model, _) => (None, None, Some(*model)),
        };
        let backbone = held_mut(&mut bert, &mut gpt2, &mut m2);
        if backbone.is_causal() {
            if matches!(readout, Readout::Cls | Readout::Pooler) {
                return Err(ModelError::InvalidInput(format!(
                    "readout `{readout:?}` needs a [CLS] token; use last or mean with GPT-2"
                )));
            }
        } else {
            if readout == Readout::Last {
                return Err(ModelError::InvalidInput(
                    "readout `last` is for causal models; use mean, cls or pooler with BERT".into(),
                ));
            }
            if readout == Readout::Pooler && !backbone.has_pooler() {
                return Err(ModelError::InvalidInput(
                    "readout `pooler` needs a checkpoint with pooler weights; this one has none"
                        .into(),
                ));
            }
            if readout != Readout::Pooler {
                backbone.drop_pooler();
            }
        }
        let width = backbone.hidden_size();
        Ok(Self {
            bert,
            gpt2,
            m2,
            side: None,
            head: head.init(width, device)?,
            readout,
            adapters: Vec::new(),
            adapter_drop_max: 0,
            lora_adapters: Vec::new(),
        })
    }

    /// The backbone the model holds.
    pub fn backbone(&self) -> &dyn TunableBackbone {
        held(&self.bert, &self.gpt2, &self.m2)
    }

    /// The backbone the model holds, to change.
    pub fn backbone_mut(&mut self) -> &mut dyn TunableBackbone {
        held_mut(&mut self.bert, &mut self.gpt2, &mut self.m2)
    }

    /// Task outputs `[batch, outputs]` for a padded batch.
    pub fn forward(&self, input: BertInput) -> Tensor<2> {
        self.head.forward(self.features(input))
    }

    /// The head's input `[batch, hidden]`: the backbone's read-out features, blended with the
    /// side network's when there is one.
    pub fn features(&self, input: BertInput) -> Tensor<2> {
        let Some(side) = &self.side else {
            return self.backbone_features(input);
        };
        let embedded = self.word_embedding().forward(input.input_ids.clone());
        let side_features = side.forward(mean_pool(embedded, input.attention_mask.clone()));
        side.blend(self.backbone_features(input), side_features)
    }

    fn backbone_features(&self, input: BertInput) -> Tensor<2> {
        self.backbone().read_out(input, self.readout)
    }

    /// BERT's or GPT-2's token states below layer `layer`: the embedded input and layers
    /// `0..layer`. With [`Self::features_above`] this is [`Self::features`] cut in two, so that a
    /// frozen bottom can be computed once and cached (M2-BERT's mixer reads padded positions,
    /// so its states depend on the batch they were computed in: it is not cut).
    pub fn frozen_bottom(&self, input: BertInput, layer: usize) -> TokenStates {
        self.backbone()
            .encode(input, 0..layer)
            .expect("frozen_bottom on a backbone that is not cut (see cacheable)")
    }

    /// Layers `layer..` over `states`, the final norm or pooler, and the readout: the head's input.
    pub fn features_above(&self, states: TokenStates, layer: usize) -> Tensor<2> {
        self.backbone().read_out_above(states, layer, self.readout)
    }

    /// Where this model's trainable part begins above a frozen bottom that can be cached, for a
    /// method that trains only above `cut`; `None` where the backbone is not cut (M2-BERT) or a
    /// side network reads the input.
    pub fn cacheable(&self, cut: FrozenCut) -> Option<FrozenCut> {
        (self.backbone().can_be_cut() && self.side.is_none()).then_some(cut)
    }

    /// `bert`, `gpt2` or `m2`: the first segment of every backbone parameter path.
    pub fn backbone_name(&self) -> &'static str {
        self.backbone().name()
    }

    /// Layers of the backbone.
    pub fn num_layers(&self) -> usize {
        self.backbone().num_layers()
    }

    /// Path of layer `i`: `bert.layers.i`, `gpt2.blocks.i` or `m2.layers.i`.
    pub fn layer_path(&self, i: usize) -> String {
        format!("{}.{}", self.backbone_name(), self.backbone().layer_path(i))
    }

    /// Backbone modules above the last layer (they see only what the last layer gives them).
    pub fn top_paths(&self) -> Vec<String> {
        let name = self.backbone_name();
        self.backbone()
            .top_paths()
            .into_iter()
            .map(|path| format!("{name}.{path}"))
            .collect()
    }

    /// Width `h` of the backbone.
    pub fn hidden_size(&self) -> usize {
        self.backbone().hidden_size()
    }

    /// Patterns of every layer-norm parameter of the backbone.
    pub fn norm_patterns(&self) -> Vec<String> {
        let name = self.backbone_name();
        self.backbone()
            .norm_patterns()
            .into_iter()
            .map(|pattern| format!("{name}.{pattern}"))
            .collect()
    }

    /// The backbone's token embedding table `[vocab, h]`.
    pub fn word_embeddings(&self) -> Tensor<2> {
        self.word_embedding().weight.val()
    }

    fn word_embedding(&self) -> &TunableEmbedding {
        self.backbone().word_embedding()
    }

    /// Puts a fresh side network beside the backbone (side-tuning).
    pub fn add_side_network(&mut self, config: &SideConfig) {
        let device = self.head.output.weight.lazy_device();
        self.side = Some(config.init(self.hidden_size(), &device));
    }

    /// Called by the trainer before each step: `progress` in `[0, 1]` moves side-tuning's alpha
    /// curriculum, `draw` (a fresh random number) picks AdapterDrop's layer count.
    pub fn begin_train_step(&mut self, progress: f64, draw: u64) {
        if let Some(side) = self.side.as_mut() {
            side.set_progress(progress);
        }
        let max = self.adapter_drop_max;
        self.adapter_drop_state().training = (draw % (max as u64 + 1)) as usize;
    }
}

/// The backbone of the three slots that holds one: the one place that looks at which it is
/// ([`SequenceClassifier::new`] fills exactly one).
fn held<'a>(
    bert: &'a Option<Bert>,
    gpt2: &'a Option<Gpt2>,
    m2: &'a Option<M2Bert>,
) -> &'a dyn TunableBackbone {
    match (bert, gpt2, m2) {
        (Some(bert), _, _) => bert,
        (_, Some(gpt2), _) => gpt2,
        (_, _, Some(m2)) => m2,
        _ => unreachable!("a classifier always holds a backbone"),
    }
}

/// [`held`], to change.
fn held_mut<'a>(
    bert: &'a mut Option<Bert>,
    gpt2: &'a mut Option<Gpt2>,
    m2: &'a mut Option<M2Bert>,
) -> &'a mut dyn TunableBackbone {
    match (bert, gpt2, m2) {
        (Some(bert), _, _) => bert,
        (_, Some(gpt2), _) => gpt2,
        (_, _, Some(m2)) => m2,
        _ => unreachable!("a classifier always holds a backbone"),
    }
}
