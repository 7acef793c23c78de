//! What every method shares: the [`Method`] trait the trainer and the run builder call, the
//! [`Registered`] trait a method file implements to join the registry (in
//! [`crate::methods`], which builds `MethodConfig` from them), and [`MethodInfo`], one line of
//! `kiln methods`.

use std::path::PathBuf;

use kiln_models::{FrozenCut, SequenceClassifier, TextTokenizer};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::options::{MethodOption, OptionSpec};

/// A transfer method: which slots it fills, which parameters it train, and what the run around
/// it needs to know (learning rate, adapters to load first, folding after training, export).
pub trait Method {
    /// Linear layers in the task head the method wants (mlp-k: `k`).
    fn head_layers(&self) -> usize {
        1
    }

    /// Virtual tokens the method adds to every input (they take positions too).
    fn virtual_tokens(&self) -> usize {
        0
    }

    /// The peak learning rate the method trains at unless the user gives one.
    fn default_lr(&self) -> f64 {
        1e-3
    }

    /// A label with the setting that tells runs of this method apart (`lora-r8`), if the name
    /// alone does not.
    fn label(&self) -> Option<String> {
        None
    }

    /// Turns words the method was given into token ids (prompt initialisation from text).
    fn tokenize(&mut self, _tokenizer: &TextTokenizer) -> Result<()> {
        Ok(())
    }

    /// Directories of saved adapters the model must hold before [`Method::prepare`] (fusion).
    fn saved_adapters(&self) -> &[PathBuf] {
        &[]
    }

    /// Refuses options that do not fit `model` (a `k` above its depth, say).
    fn check(&self, _model: &SequenceClassifier) -> Result<()> {
        Ok(())
    }

    /// Fills the model's tuning slots (LoRA deltas, adapters, prompts).
    fn prepare(&self, _model: &mut SequenceClassifier) -> Result<()> {
        Ok(())
    }

    /// Path patterns of the parameters that train (see [`crate::trainable`]).
    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String>;

    /// Where the frozen part ends when everything the method trains sits above it, so that the
    /// trainer can compute that part once and cache it; `None` when trained parameters reach
    /// into the input side of the backbone.
    fn frozen_cut(&self, _model: &SequenceClassifier) -> Option<FrozenCut> {
        None
    }

    /// Turns the trained model into the one that is evaluated, saved and exported (prefix
    /// tuning folds its reparameterisation away).
    fn after_fit(&self, _model: &mut SequenceClassifier) -> Result<()> {
        Ok(())
    }

    /// The name of the adapter this method trains, if any: what a run saves on its own and
    /// exports in AdapterHub's format.
    fn adapter_name(&self) -> Option<&str> {
        None
    }

    /// Whether a run saves the adapter on its own (kiln's adapter directory, which fusion and
    /// `--stack-on` load): not where the method trains more than the adapter slots hold.
    fn saves_adapter(&self) -> bool {
        self.adapter_name().is_some()
    }

    /// The HF peft `peft_type` the trained method exports as, if peft has its format.
    fn peft_type(&self) -> Option<&'static str> {
        None
    }
}

/// A method in the registry: its name, one line of summary, its options and defaults.
pub trait Registered:
    Method + Default + Clone + PartialEq + std::fmt::Debug + Serialize + DeserializeOwned + 'static
{
    /// The registry name (`partial-k`), also the `"method"` tag of its serde form.
    const NAME: &'static str;
    /// One line for `kiln methods`, with the paper.
    const SUMMARY: &'static str;
    /// What the method needs beyond its defaults, if anything (fusion: trained adapters); such a
    /// method cannot run in `kiln compare`, which gives every method its defaults.
    const NEEDS: Option<&'static str> = None;

    /// The options the method takes.
    fn options() -> Vec<MethodOption<Self>> {
        Vec::new()
    }
}

/// One line of `kiln methods`.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    /// The registry name.
    pub name: &'static str,
    /// One line with the paper.
    pub summary: &'static str,
    /// Its options, with the defaults shown.
    pub options: Vec<OptionSpec>,
    /// What it needs beyond its defaults (see [`Registered::NEEDS`]).
    pub needs: Option<&'static str>,
    /// Its default learning rate ([`Method::default_lr`]); `None` for a method that does not
    /// train with `kiln train`.
    pub default_lr: Option<f64>,
    /// The command that runs it when `kiln train` does not (`kiln icl`).
    pub command: Option<&'static str>,
}

impl MethodInfo {
    /// The options as `kiln methods` shows them: `--rank R (8) --alpha A (16)`.
    pub fn options_line(&self) -> String {
        self.options
            .iter()
            .map(|o| match o.value {
                Some(value) => format!("--{} {value} ({})", o.flag, o.default),
                None => format!("--{} ({})", o.flag, o.default),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}
