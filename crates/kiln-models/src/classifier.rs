//! A backbone with a task head: what kiln fine-tunes for text classification and regression.
//!
//! The backbone's token states are read out to one vector per text (mean over real tokens, the
//! `[CLS]` state, BERT's pooler, or the last real token for GPT-2), then an MLP head with `k`
//! linear layers maps it to the task's outputs (classes, or one score for regression). Parameter
//! paths are `bert.*` or `gpt2.*` for the backbone and `head.*` for the head: the names the
//! methods' trainability patterns match.

use std::str::FromStr;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::bert::{Bert, BertInput};
use crate::error::{ModelError, Result};
use crate::gpt2::{Gpt2, Gpt2Input};
use crate::pretrained::{Backbone, last_token_pool, mean_pool};
use crate::tunable::TunableLinear;

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
            x = gelu(layer.forward(self.dropout.forward(x)));
        }
        self.output.forward(self.dropout.forward(x))
    }
}

/// A backbone (exactly one of `bert`, `gpt2`) with a readout and a task head.
#[derive(Module, Debug)]
pub struct SequenceClassifier {
    pub bert: Option<Bert>,
    pub gpt2: Option<Gpt2>,
    pub head: MlpHead,
    #[module(skip)]
    pub readout: Readout,
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
        let (mut bert, gpt2) = match backbone {
            Backbone::Bert(model, _) => (Some(*model), None),
            Backbone::Gpt2(model, _) => (None, Some(*model)),
        };
        if let Some(bert) = bert.as_mut() {
            if readout == Readout::Last {
                return Err(ModelError::InvalidInput(
                    "readout `last` is for causal models; use mean, cls or pooler with BERT".into(),
                ));
            }
            if readout == Readout::Pooler && bert.pooler.is_none() {
                return Err(ModelError::InvalidInput(
                    "readout `pooler` needs a checkpoint with pooler weights; this one has none"
                        .into(),
                ));
            }
            if readout != Readout::Pooler {
                bert.pooler = None;
            }
        }
        if gpt2.is_some() && matches!(readout, Readout::Cls | Readout::Pooler) {
            return Err(ModelError::InvalidInput(format!(
                "readout `{readout:?}` needs a [CLS] token; use last or mean with GPT-2"
            )));
        }
        let width = match (&bert, &gpt2) {
            (Some(bert), _) => bert.hidden_size(),
            (_, Some(gpt2)) => gpt2.hidden_size(),
            _ => unreachable!("one backbone was set above"),
        };
        Ok(Self {
            bert,
            gpt2,
            head: head.init(width, device)?,
            readout,
        })
    }

    /// Task outputs `[batch, outputs]` for a padded batch.
    pub fn forward(&self, input: BertInput) -> Tensor<2> {
        self.head.forward(self.features(input))
    }

    /// The head's input `[batch, hidden]`.
    pub fn features(&self, input: BertInput) -> Tensor<2> {
        let mask = input.attention_mask.clone();
        if let Some(bert) = &self.bert {
            let out = bert.forward(input);
            return match (self.readout, out.pooled) {
                (Readout::Pooler, Some(pooled)) => pooled,
                (Readout::Mean, _) => mean_pool(out.last_hidden_state, mask),
                (_, _) => {
                    let [batch, _, width] = out.last_hidden_state.dims();
                    out.last_hidden_state
                        .slice_dim(1, 0..1)
                        .reshape([batch, width])
                }
            };
        }
        let Some(gpt2) = &self.gpt2 else {
            unreachable!("a classifier always holds a backbone")
        };
        let hidden = gpt2.forward(Gpt2Input {
            input_ids: input.input_ids,
            attention_mask: input.attention_mask,
        });
        match self.readout {
            Readout::Mean => mean_pool(hidden, mask),
            _ => last_token_pool(hidden, mask),
        }
    }

    /// `bert` or `gpt2`: the first segment of every backbone parameter path.
    pub fn backbone_name(&self) -> &'static str {
        if self.bert.is_some() { "bert" } else { "gpt2" }
    }

    pub fn num_layers(&self) -> usize {
        match (&self.bert, &self.gpt2) {
            (Some(bert), _) => bert.layers.len(),
            (_, Some(gpt2)) => gpt2.blocks.len(),
            _ => 0,
        }
    }

    /// Path of transformer layer `i`: `bert.layers.i` or `gpt2.blocks.i`.
    pub fn layer_path(&self, i: usize) -> String {
        match self.bert {
            Some(_) => format!("bert.layers.{i}"),
            None => format!("gpt2.blocks.{i}"),
        }
    }

    /// Backbone modules above the last layer (they see only what the last layer gives them).
    pub fn top_paths(&self) -> Vec<String> {
        match &self.bert {
            Some(bert) if bert.pooler.is_some() => vec!["bert.pooler".into()],
            Some(_) => Vec::new(),
            None => vec!["gpt2.ln_f".into()],
        }
    }

    /// Every backbone projection with its full path (`bert.layers.0.attention.query`).
    pub fn projections_mut(&mut self) -> Vec<(String, &mut TunableLinear)> {
        let prefix = self.backbone_name();
        let found = match (&mut self.bert, &mut self.gpt2) {
            (Some(bert), _) => bert.projections_mut(),
            (_, Some(gpt2)) => gpt2.projections_mut(),
            _ => Vec::new(),
        };
        found
            .into_iter()
            .map(|(path, projection)| (format!("{prefix}.{path}"), projection))
            .collect()
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
