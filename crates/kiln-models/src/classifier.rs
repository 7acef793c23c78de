//! A backbone with a task head: what kiln fine-tunes for text classification and regression.
//!
//! The backbone's token states are read out to one vector per text (mean over real tokens, the
//! `[CLS]` state, BERT's pooler, or the last real token for GPT-2), then an MLP head with `k`
//! linear layers maps it to the task's outputs (classes, or one score for regression). Parameter
//! paths are `bert.*` or `gpt2.*` for the backbone and `head.*` for the head: the names the
//! methods' trainability patterns match.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Embedding, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::adapter::{ActiveAdapter, AdapterConfig, AdapterFusion, LayerAdapters};
use crate::backbone::{TunableBackbone, no_attention};
use crate::bert::Bert;
use crate::error::{ModelError, Result};
use crate::gpt2::Gpt2;
use crate::m2::M2Bert;
use crate::pretrained::Backbone;
use crate::prompt::{PrefixEncoder, PromptEncoder, PromptTemplate, SoftPrompt};
use crate::side::{SideConfig, SideNetwork};
use crate::states::{BertInput, Readout, TokenStates, mean_pool};
use crate::tunable::{LoraRouting, LowRankDelta, TunableLinear};

/// Where the frozen bottom of a model ends, for methods that train only above it: everything
/// below the head (linear probe, MLP head), or the layers below `BeforeLayer(k)` (partial-k).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrozenCut {
    Features,
    BeforeLayer(usize),
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

/// A backbone (exactly one of `bert`, `gpt2`, `m2`: the field names are the first segment of
/// the parameter paths) with a readout and a task head. [`SequenceClassifier::backbone`] is the
/// one place that picks the one it holds; everything else reaches it as a [`TunableBackbone`].
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
        self.backbone_mut().layer_adapters_mut()
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
        if config.prefix_len > 0 && !self.backbone().has_attention() {
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
        let slots = self.backbone().layer_adapters().first()?.as_ref()?;
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
        self.backbone().word_embedding()
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
        *self.backbone_mut().prompt_slot()? = Some(prompt);
        Ok(())
    }

    /// Puts prefix tuning's reparameterisation (`len` rows, MLP width `mid`) on every layer.
    pub fn add_prefix_encoder(&mut self, len: usize, mid: usize) -> Result<()> {
        let device = self.head.output.weight.lazy_device();
        let encoder = PrefixEncoder::new(len, self.hidden_size(), mid, self.num_layers(), &device);
        *self.backbone_mut().prefix_encoder_slot()? = Some(encoder);
        Ok(())
    }

    /// Replaces the prefix encoder by the prefixes it computes, as a prefix-only adapter called
    /// `name`: same outputs, no MLP left, saved and loaded like any adapter.
    pub fn fold_prefix_encoder(&mut self, name: &str) -> Result<()> {
        let encoder = self
            .backbone_mut()
            .prefix_encoder_slot()
            .ok()
            .and_then(Option::take)
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
        self.backbone_mut().adapter_drop_state()
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
        self.backbone_mut()
            .projections_mut()
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
