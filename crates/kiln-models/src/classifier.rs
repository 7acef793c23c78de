//! A backbone with a task head: what kiln fine-tunes for text classification and regression.
//!
//! The backbone's token states are read out to one vector per text (mean over real tokens, the
//! `[CLS]` state, BERT's pooler, or the last real token for GPT-2), then an MLP head with `k`
//! linear layers maps it to the task's outputs (classes, or one score for regression). Parameter
//! paths are `bert.*` or `gpt2.*` for the backbone and `head.*` for the head: the names the
//! methods' trainability patterns match.

use std::str::FromStr;

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Embedding, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::adapter::{ActiveAdapter, AdapterConfig, AdapterFusion, LayerAdapters};
use crate::bert::{Bert, BertInput};
use crate::error::{ModelError, Result};
use crate::gpt2::{Gpt2, Gpt2Input};
use crate::m2::M2Bert;
use crate::pretrained::{Backbone, TokenStates, last_token_pool, mean_pool};
use crate::prompt::{PrefixEncoder, PromptEncoder, PromptTemplate, SoftPrompt};
use crate::side::{SideConfig, SideNetwork};
use crate::tunable::{LoraRouting, LowRankDelta, TunableLinear};

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

impl Readout {
    /// The readout for `backbone` unless the user says otherwise: the mean for the bidirectional
    /// encoders, the last token for GPT-2 (the only one that has read the whole text).
    pub fn default_for(backbone: &Backbone) -> Self {
        match backbone {
            Backbone::Bert(..) | Backbone::M2Bert(..) => Readout::Mean,
            Backbone::Gpt2(..) => Readout::Last,
        }
    }
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

/// Where the frozen bottom of a model ends, for methods that train only above it: everything
/// below the head (linear probe, MLP head), or the layers below `BeforeLayer(k)` (partial-k).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrozenCut {
    Features,
    BeforeLayer(usize),
}

/// The first position's state `[batch, hidden]` (BERT's `[CLS]`).
fn first_token(hidden: Tensor<3>) -> Tensor<2> {
    let [batch, _, width] = hidden.dims();
    hidden.slice_dim(1, 0..1).reshape([batch, width])
}

/// Shape of the task head: `layers` linear layers (the last maps to `outputs`), GELU between.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub layers: usize,
    pub outputs: usize,
    pub dropout: f64,
}

impl HeadConfig {
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
        })
    }

    /// Parameters of the head on features of `width`: `(k-1)(w² + w) + w·c + c`.
    pub fn num_params(&self, width: usize) -> usize {
        (self.layers - 1) * (width * width + width) + width * self.outputs + self.outputs
    }
}

/// `k` linear layers with dropout before each and GELU between them.
#[derive(Module, Debug)]
pub struct MlpHead {
    pub hidden: Vec<Linear>,
    pub output: Linear,
    pub dropout: Dropout,
}

impl MlpHead {
    pub fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        let mut x = features;
        for layer in &self.hidden {
            x = gelu(layer.forward(kiln_kernels::dropout(&self.dropout, x)));
        }
        self.output.forward(kiln_kernels::dropout(&self.dropout, x))
    }
}

/// An adapter the model holds (in every layer's slots), by name.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedAdapter {
    pub name: String,
    pub config: AdapterConfig,
}

/// A backbone (exactly one of `bert`, `gpt2`) with a readout and a task head.
#[derive(Module, Debug)]
pub struct SequenceClassifier {
    pub bert: Option<Bert>,
    pub gpt2: Option<Gpt2>,
    pub m2: Option<M2Bert>,
    /// Side-tuning's side network, blended with the backbone's features.
    pub side: Option<SideNetwork>,
    pub head: MlpHead,
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
        let (mut bert, gpt2, mut m2) = match backbone {
            Backbone::Bert(model, _) => (Some(*model), None, None),
            Backbone::Gpt2(model, _) => (None, Some(*model), None),
            Backbone::M2Bert(model, _) => (None, None, Some(*model)),
        };
        let pooler = match (bert.as_mut(), m2.as_mut()) {
            (Some(bert), _) => Some(&mut bert.pooler),
            (_, Some(m2)) => Some(&mut m2.pooler),
            _ => None,
        };
        if let Some(pooler) = pooler {
            if readout == Readout::Last {
                return Err(ModelError::InvalidInput(
                    "readout `last` is for causal models; use mean, cls or pooler with BERT".into(),
                ));
            }
            if readout == Readout::Pooler && pooler.is_none() {
                return Err(ModelError::InvalidInput(
                    "readout `pooler` needs a checkpoint with pooler weights; this one has none"
                        .into(),
                ));
            }
            if readout != Readout::Pooler {
                *pooler = None;
            }
        }
        if gpt2.is_some() && matches!(readout, Readout::Cls | Readout::Pooler) {
            return Err(ModelError::InvalidInput(format!(
                "readout `{readout:?}` needs a [CLS] token; use last or mean with GPT-2"
            )));
        }
        let width = match (&bert, &gpt2, &m2) {
            (Some(bert), _, _) => bert.hidden_size(),
            (_, Some(gpt2), _) => gpt2.hidden_size(),
            (_, _, Some(m2)) => m2.hidden_size(),
            _ => unreachable!("one backbone was set above"),
        };
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
        if let Some(m2) = &self.m2 {
            let hidden = m2.forward(input.input_ids, input.token_type_ids);
            return match (self.readout, &m2.pooler) {
                (Readout::Pooler, Some(pooler)) => pooler.forward(hidden),
                (Readout::Mean, _) => mean_pool(hidden, input.attention_mask),
                (_, _) => first_token(hidden),
            };
        }
        self.features_above(self.frozen_bottom(input, 0), 0)
    }

    /// BERT's or GPT-2's token states below layer `layer`: the embedded input and layers
    /// `0..layer`. With [`Self::features_above`] this is [`Self::features`] cut in two, so that a
    /// frozen bottom can be computed once and cached (M2-BERT's mixer reads padded positions,
    /// so its states depend on the batch they were computed in: it is not cut).
    pub fn frozen_bottom(&self, input: BertInput, layer: usize) -> TokenStates {
        match (&self.bert, &self.gpt2) {
            (Some(bert), _) => bert.encode_layers(bert.embed(input), 0..layer),
            (_, Some(gpt2)) => {
                let input = Gpt2Input {
                    input_ids: input.input_ids,
                    attention_mask: input.attention_mask,
                };
                gpt2.run_blocks(gpt2.embed(input), 0..layer)
            }
            _ => panic!("frozen_bottom: M2-BERT is not cut (see FrozenCut)"),
        }
    }

    /// Layers `layer..` over `states`, the final norm or pooler, and the readout: the head's input.
    pub fn features_above(&self, states: TokenStates, layer: usize) -> Tensor<2> {
        if let Some(bert) = &self.bert {
            let states = bert.encode_layers(states, layer..bert.layers.len());
            return match (self.readout, &bert.pooler) {
                (Readout::Pooler, Some(pooler)) => pooler.forward(states.hidden),
                (Readout::Mean, _) => mean_pool(states.hidden, states.token_mask),
                (_, _) => first_token(states.hidden),
            };
        }
        let Some(gpt2) = &self.gpt2 else {
            panic!("features_above: M2-BERT is not cut (see FrozenCut)")
        };
        let states = gpt2.run_blocks(states, layer..gpt2.blocks.len());
        let hidden = gpt2.ln_f.forward(states.hidden);
        // The last position attention looked at: a virtual token when the template puts some
        // behind the text, as P-tuning reads.
        match self.readout {
            Readout::Mean => mean_pool(hidden, states.token_mask),
            _ => last_token_pool(hidden, states.attention_mask),
        }
    }

    /// Where this model's trainable part begins above a frozen bottom that can be cached, for a
    /// method that trains only above `cut`; `None` where the backbone is not cut (M2-BERT) or a
    /// side network reads the input.
    pub fn cacheable(&self, cut: FrozenCut) -> Option<FrozenCut> {
        let plain = self.m2.is_none() && self.side.is_none();
        plain.then_some(cut)
    }

    /// `bert`, `gpt2` or `m2`: the first segment of every backbone parameter path.
    pub fn backbone_name(&self) -> &'static str {
        match (&self.bert, &self.gpt2) {
            (Some(_), _) => "bert",
            (_, Some(_)) => "gpt2",
            _ => "m2",
        }
    }

    pub fn num_layers(&self) -> usize {
        match (&self.bert, &self.gpt2, &self.m2) {
            (Some(bert), _, _) => bert.layers.len(),
            (_, Some(gpt2), _) => gpt2.blocks.len(),
            (_, _, Some(m2)) => m2.layers.len(),
            _ => 0,
        }
    }

    /// Path of layer `i`: `bert.layers.i`, `gpt2.blocks.i` or `m2.layers.i`.
    pub fn layer_path(&self, i: usize) -> String {
        match self.backbone_name() {
            "gpt2" => format!("gpt2.blocks.{i}"),
            name => format!("{name}.layers.{i}"),
        }
    }

    /// Backbone modules above the last layer (they see only what the last layer gives them).
    pub fn top_paths(&self) -> Vec<String> {
        match (&self.bert, &self.gpt2, &self.m2) {
            (Some(bert), _, _) if bert.pooler.is_some() => vec!["bert.pooler".into()],
            (_, _, Some(m2)) if m2.pooler.is_some() => vec!["m2.pooler".into()],
            (_, Some(_), _) => vec!["gpt2.ln_f".into()],
            _ => Vec::new(),
        }
    }

    pub fn hidden_size(&self) -> usize {
        match (&self.bert, &self.gpt2, &self.m2) {
            (Some(bert), _, _) => bert.hidden_size(),
            (_, Some(gpt2), _) => gpt2.hidden_size(),
            (_, _, Some(m2)) => m2.hidden_size(),
            _ => unreachable!("a classifier always holds a backbone"),
        }
    }

    /// Patterns of every layer-norm parameter of the backbone.
    pub fn norm_patterns(&self) -> Vec<String> {
        match self.backbone_name() {
            "gpt2" => vec!["gpt2.*ln_*".into()],
            name => vec![format!("{name}.*norm.*")],
        }
    }

    /// Patterns of the parameters of the adapter called `name`, in every layer.
    pub fn adapter_patterns(&self, name: &str) -> Vec<String> {
        self.adapter_index(name)
            .map(|k| vec![format!("{}.*.adapters.loaded.{k}.*", self.backbone_name())])
            .unwrap_or_default()
    }

    /// Patterns of the fusion layers' parameters.
    pub fn fusion_patterns(&self) -> Vec<String> {
        vec![format!("{}.*.adapters.fusion.*", self.backbone_name())]
    }

    pub fn adapter_index(&self, name: &str) -> Option<usize> {
        self.adapters.iter().position(|a| a.name == name)
    }

    fn layer_adapters_mut(&mut self) -> Vec<&mut Option<LayerAdapters>> {
        match (&mut self.bert, &mut self.gpt2, &mut self.m2) {
            (Some(bert), _, _) => bert.layers.iter_mut().map(|l| &mut l.adapters).collect(),
            (_, Some(gpt2), _) => gpt2.blocks.iter_mut().map(|b| &mut b.adapters).collect(),
            (_, _, Some(m2)) => m2.layers.iter_mut().map(|l| &mut l.adapters).collect(),
            _ => Vec::new(),
        }
    }

    fn set_active(&mut self, active: ActiveAdapter) {
        for slots in self.layer_adapters_mut().into_iter().flatten() {
            slots.active = active;
        }
    }

    /// Adds a fresh adapter called `name` to every layer and makes it the active one.
    pub fn add_adapter(&mut self, name: &str, config: &AdapterConfig) -> Result<()> {
        if self.adapter_index(name).is_some() {
            return Err(ModelError::InvalidInput(format!(
                "the model already holds an adapter called `{name}`"
            )));
        }
        if config.bottleneck == 0
            && (config.after_attention || config.after_feed_forward || config.parallel)
        {
            return Err(ModelError::InvalidInput(
                "an adapter bottleneck must be at least 1 wide".into(),
            ));
        }
        if config.prefix_len > 0 && self.m2.is_some() {
            return Err(no_attention("attention prefixes"));
        }
        let width = self.hidden_size();
        let device = self.head.output.weight.lazy_device();
        for slots in self.layer_adapters_mut() {
            slots
                .get_or_insert_with(|| LayerAdapters {
                    loaded: Vec::new(),
                    fusion: None,
                    active: ActiveAdapter::Off,
                })
                .loaded
                .push(config.init_layer(width, &device));
        }
        self.adapters.push(NamedAdapter {
            name: name.to_string(),
            config: config.clone(),
        });
        self.set_active_adapter(Some(name))
    }

    /// Makes the adapter called `name` the only active one; `None` runs the plain backbone.
    pub fn set_active_adapter(&mut self, name: Option<&str>) -> Result<()> {
        let active = match name {
            None => ActiveAdapter::Off,
            Some(name) => ActiveAdapter::One(self.require_adapter(name)?),
        };
        self.set_active(active);
        Ok(())
    }

    /// The active adapter's name, `None` when adapters are off or fused.
    pub fn active_adapter(&self) -> Option<&str> {
        let slots = match (&self.bert, &self.gpt2, &self.m2) {
            (Some(bert), _, _) => bert.layers.first()?.adapters.as_ref(),
            (_, Some(gpt2), _) => gpt2.blocks.first()?.adapters.as_ref(),
            (_, _, Some(m2)) => m2.layers.first()?.adapters.as_ref(),
            _ => None,
        }?;
        match slots.active {
            ActiveAdapter::One(k) => self.adapters.get(k).map(|a| a.name.as_str()),
            _ => None,
        }
    }

    /// Removes the adapter called `name` from every layer.
    pub fn delete_adapter(&mut self, name: &str) -> Result<()> {
        let index = self.require_adapter(name)?;
        for slots in self.layer_adapters_mut().into_iter().flatten() {
            if slots.fusion.is_some() {
                return Err(ModelError::InvalidInput(format!(
                    "adapter `{name}` takes part in a fusion; it cannot be deleted"
                )));
            }
            slots.loaded.remove(index);
            slots.active = match slots.active {
                ActiveAdapter::One(k) if k == index => ActiveAdapter::Off,
                ActiveAdapter::One(k) if k > index => ActiveAdapter::One(k - 1),
                other => other,
            };
        }
        self.adapters.remove(index);
        Ok(())
    }

    /// Adds a fusion layer over all loaded adapters to every layer (AdapterFusion) and makes it
    /// active. Every adapter must sit after the feed-forward and nowhere else.
    pub fn add_fusion(&mut self) -> Result<()> {
        if self.adapters.len() < 2 {
            return Err(ModelError::InvalidInput(format!(
                "AdapterFusion needs at least two adapters; the model holds {}",
                self.adapters.len()
            )));
        }
        if let Some(adapter) = self.adapters.iter().find(|a| {
            let c = &a.config;
            !c.after_feed_forward || c.after_attention || c.parallel || c.prefix_len > 0
        }) {
            return Err(ModelError::InvalidInput(format!(
                "adapter `{}` is not a feed-forward (Pfeiffer) adapter; AdapterFusion mixes \
                 adapters that sit after the feed-forward only",
                adapter.name
            )));
        }
        let width = self.hidden_size();
        let device = self.head.output.weight.lazy_device();
        for slots in self.layer_adapters_mut().into_iter().flatten() {
            slots.fusion = Some(AdapterFusion::new(width, &device));
            slots.active = ActiveAdapter::Fusion;
        }
        Ok(())
    }

    fn require_adapter(&self, name: &str) -> Result<usize> {
        self.adapter_index(name).ok_or_else(|| {
            let names: Vec<&str> = self.adapters.iter().map(|a| a.name.as_str()).collect();
            ModelError::InvalidInput(format!(
                "no adapter called `{name}` (the model holds: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ))
        })
    }

    /// The backbone's token embedding table `[vocab, h]`.
    pub fn word_embeddings(&self) -> Tensor<2> {
        self.word_embedding().weight.val()
    }

    fn word_embedding(&self) -> &Embedding {
        match (&self.bert, &self.gpt2, &self.m2) {
            (Some(bert), _, _) => &bert.embeddings.word,
            (_, Some(gpt2), _) => &gpt2.wte,
            (_, _, Some(m2)) => &m2.embeddings.word,
            _ => unreachable!("a classifier always holds a backbone"),
        }
    }

    /// Puts virtual tokens into the input: `initial` `[n, h]` with `n` the template's length,
    /// through a prompt encoder (P-tuning; with or without its LSTM) when `encoder` says so.
    pub fn add_prompt(
        &mut self,
        template: PromptTemplate,
        initial: Tensor<2>,
        encoder: Option<bool>,
    ) -> Result<()> {
        let [n, width] = initial.dims();
        if n != template.len() || n == 0 || width != self.hidden_size() {
            return Err(ModelError::InvalidInput(format!(
                "a prompt of {} virtual tokens needs [{}, {}] initial embeddings, got [{n}, {width}]",
                template.len(),
                template.len(),
                self.hidden_size()
            )));
        }
        let device = initial.device();
        let prompt = SoftPrompt {
            embedding: Param::from_tensor(initial.detach()),
            encoder: encoder.map(|lstm| PromptEncoder::new(width, lstm, &device)),
            template,
        };
        match (&mut self.bert, &mut self.gpt2) {
            (Some(bert), _) => bert.prompt = Some(prompt),
            (_, Some(gpt2)) => gpt2.prompt = Some(prompt),
            _ => return Err(no_attention("virtual tokens")),
        }
        Ok(())
    }

    /// Puts prefix tuning's reparameterisation (`len` rows, MLP width `mid`) on every layer.
    pub fn add_prefix_encoder(&mut self, len: usize, mid: usize) -> Result<()> {
        let device = self.head.output.weight.lazy_device();
        let encoder = PrefixEncoder::new(len, self.hidden_size(), mid, self.num_layers(), &device);
        match (&mut self.bert, &mut self.gpt2) {
            (Some(bert), _) => bert.prefix_encoder = Some(encoder),
            (_, Some(gpt2)) => gpt2.prefix_encoder = Some(encoder),
            _ => return Err(no_attention("attention prefixes")),
        }
        Ok(())
    }

    /// Replaces the prefix encoder by the prefixes it computes, as a prefix-only adapter called
    /// `name`: same outputs, no MLP left, saved and loaded like any adapter.
    pub fn fold_prefix_encoder(&mut self, name: &str) -> Result<()> {
        let encoder = match (&mut self.bert, &mut self.gpt2) {
            (Some(bert), _) => bert.prefix_encoder.take(),
            (_, Some(gpt2)) => gpt2.prefix_encoder.take(),
            _ => None,
        }
        .ok_or_else(|| ModelError::InvalidInput("the model has no prefix encoder".into()))?;
        let prefixes = encoder.prefixes();
        let len = prefixes.first().map_or(0, |(key, _)| key.dims()[0]);
        self.add_adapter(name, &AdapterConfig::prefix_only(len))?;
        let index = self.adapters.len() - 1;
        for (slots, (key, value)) in self.layer_adapters_mut().into_iter().zip(prefixes) {
            if let Some(prefix) = slots.as_mut().and_then(|s| s.loaded[index].prefix.as_mut()) {
                prefix.key = Param::from_tensor(key.detach());
                prefix.value = Param::from_tensor(value.detach());
            }
        }
        Ok(())
    }

    /// Puts a fresh side network beside the backbone (side-tuning).
    pub fn add_side_network(&mut self, config: &SideConfig) {
        let device = self.head.output.weight.lazy_device();
        self.side = Some(config.init(self.hidden_size(), &device));
    }

    /// AdapterDrop: `inference` lowest layers run without adapters at inference; while training
    /// each step drops a number drawn from `0..=training_max`.
    pub fn set_adapter_drop(&mut self, training_max: usize, inference: usize) {
        self.adapter_drop_max = training_max;
        self.adapter_drop_state().inference = inference;
    }

    fn adapter_drop_state(&mut self) -> &mut crate::adapter::AdapterDropState {
        match (&mut self.bert, &mut self.gpt2, &mut self.m2) {
            (Some(bert), _, _) => &mut bert.adapter_drop,
            (_, Some(gpt2), _) => &mut gpt2.adapter_drop,
            (_, _, Some(m2)) => &mut m2.adapter_drop,
            _ => unreachable!("a classifier always holds a backbone"),
        }
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

    /// Every backbone projection with its full path (`bert.layers.0.attention.query`).
    pub fn projections_mut(&mut self) -> Vec<(String, &mut TunableLinear)> {
        let prefix = self.backbone_name();
        let found = match (&mut self.bert, &mut self.gpt2, &mut self.m2) {
            (Some(bert), _, _) => bert.projections_mut(),
            (_, Some(gpt2), _) => gpt2.projections_mut(),
            (_, _, Some(m2)) => m2.projections_mut(),
            _ => Vec::new(),
        };
        found
            .into_iter()
            .map(|(path, projection)| (format!("{prefix}.{path}"), projection))
            .collect()
    }

    /// Serves the LoRA adapter `name` on this base beside the others: `deltas` gives, by full
    /// projection path (`bert.layers.0.attention.query`), the projections it changes. It starts
    /// inactive.
    pub fn add_lora_adapter(
        &mut self,
        name: &str,
        mut deltas: Vec<(String, LowRankDelta)>,
    ) -> Result<()> {
        if self.lora_adapters.iter().any(|n| n == name) {
            return Err(ModelError::InvalidInput(format!(
                "a LoRA adapter called `{name}` is loaded already"
            )));
        }
        for (path, projection) in self.projections_mut() {
            let delta = deltas
                .iter()
                .position(|(p, _)| *p == path)
                .map(|i| deltas.swap_remove(i).1);
            if let Some(delta) = &delta
                && (delta.a.lazy_shape().dims::<2>()[0] != projection.d_in()
                    || delta.b.lazy_shape().dims::<2>()[1] != projection.d_out())
            {
                return Err(ModelError::InvalidInput(format!(
                    "LoRA adapter `{name}`: its delta for `{path}` does not fit the projection"
                )));
            }
            projection.served.push(delta);
        }
        if let Some((path, _)) = deltas.first() {
            // Undo: the adapter is all or nothing.
            for (_, projection) in self.projections_mut() {
                projection.served.pop();
            }
            return Err(ModelError::InvalidInput(format!(
                "LoRA adapter `{name}` changes `{path}`, which this model does not have"
            )));
        }
        self.lora_adapters.push(name.to_string());
        Ok(())
    }

    fn lora_index(&self, name: &str) -> Result<usize> {
        self.lora_adapters
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "no LoRA adapter called `{name}` (loaded: {})",
                    self.lora_adapters.join(", ")
                ))
            })
    }

    fn route(&mut self, routing: LoraRouting) {
        for (_, projection) in self.projections_mut() {
            projection.routing = routing.clone();
        }
    }

    /// Runs every example through the served adapter `name`, or through none (`None`).
    pub fn set_active_lora(&mut self, name: Option<&str>) -> Result<()> {
        let routing = match name {
            Some(name) => LoraRouting::All(self.lora_index(name)?),
            None => LoraRouting::Off,
        };
        self.route(routing);
        Ok(())
    }

    /// Runs each example of the next batches through the served adapter it names (`None`: the
    /// base): one mixed batch gives each example what its adapter alone would.
    pub fn route_lora(&mut self, per_example: &[Option<&str>]) -> Result<()> {
        let choice = per_example
            .iter()
            .map(|name| name.map(|n| self.lora_index(n)).transpose())
            .collect::<Result<Vec<_>>>()?;
        self.route(LoraRouting::PerExample(choice));
        Ok(())
    }

    /// Unloads the served adapter `name`; routing through it falls back to the base.
    pub fn delete_lora_adapter(&mut self, name: &str) -> Result<()> {
        let index = self.lora_index(name)?;
        let shift = |k: usize| match k.cmp(&index) {
            std::cmp::Ordering::Less => Some(k),
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Greater => Some(k - 1),
        };
        for (_, projection) in self.projections_mut() {
            projection.served.remove(index);
            projection.routing = match &projection.routing {
                LoraRouting::All(k) => shift(*k).map_or(LoraRouting::Off, LoraRouting::All),
                LoraRouting::PerExample(choice) => {
                    LoraRouting::PerExample(choice.iter().map(|c| c.and_then(shift)).collect())
                }
                LoraRouting::Off => LoraRouting::Off,
            };
        }
        self.lora_adapters.remove(index);
        Ok(())
    }

    /// Folds every LoRA delta into its base weight (outputs unchanged, delta cost gone).
    pub fn merge_lora(&mut self) {
        for (_, projection) in self.projections_mut() {
            projection.merge_lora();
        }
    }

    /// Takes merged LoRA deltas back out of the base weights.
    pub fn unmerge_lora(&mut self) {
        for (_, projection) in self.projections_mut() {
            projection.unmerge_lora();
        }
    }
}

/// M2-BERT mixes tokens with convolutions: it has no attention to give prefixes or to let
/// virtual tokens act through.
fn no_attention(what: &str) -> ModelError {
    ModelError::InvalidInput(format!(
        "{what} need attention layers; M2-BERT mixes tokens with long convolutions instead"
    ))
}
