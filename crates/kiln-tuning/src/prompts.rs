//! What the prompt methods share: the virtual tokens' initial embeddings, either rows of the
//! embedding table for given words (repeated to fill the prompt, as peft does) or rows of
//! randomly sampled vocabulary tokens (Lester et al. 2021's "sampled vocab").

use burn::tensor::{Distribution, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use kiln_models::{SequenceClassifier, TextTokenizer};

use crate::error::{Result, TuningError};
use crate::options::{MethodOption, show_or};

/// How the virtual tokens start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptInit {
    /// The words whose embeddings start the prompt (`--prompt-init-text`); `None`: sampled
    /// vocabulary.
    pub text: Option<String>,
    /// The text's token ids, filled in by the caller that has the tokenizer.
    pub ids: Vec<u32>,
}

impl PromptInit {
    /// `[n, h]` initial embeddings for `n` virtual tokens of `model`.
    pub fn embeddings(&self, model: &SequenceClassifier, n: usize) -> Result<Tensor<2>> {
        let table = model.word_embeddings();
        let [vocab, _] = table.dims();
        let device = table.device();
        if self.text.is_some() && self.ids.is_empty() {
            return Err(TuningError::Option {
                option: "prompt-init-text",
                message: "the text gave no tokens".into(),
            });
        }
        if let Some(&bad) = self.ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(TuningError::Option {
                option: "prompt-init-text",
                message: format!("token id {bad} is outside the vocabulary of {vocab}"),
            });
        }
        let rows = if self.ids.is_empty() {
            Tensor::<1, Int>::random([n], Distribution::Uniform(0.0, vocab as f64), &device)
        } else {
            let ids: Vec<i64> = self
                .ids
                .iter()
                .cycle()
                .take(n)
                .map(|&id| id as i64)
                .collect();
            Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &device)
        };
        Ok(table.select(0, rows).detach())
    }
}

impl PromptInit {
    /// Fills in the token ids of [`PromptInit::text`] with the model's tokenizer.
    pub fn tokenize(&mut self, tokenizer: &TextTokenizer) -> Result<()> {
        if let Some(text) = &self.text {
            self.ids = tokenizer
                .encode_words(text)
                .map_err(|e| TuningError::Option {
                    option: "prompt-init-text",
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }
}

/// `--prompt-init-text` of a prompt method whose config holds its [`PromptInit`] at `init`.
pub(crate) fn init_text_option<C: 'static>(
    init: fn(&C) -> &PromptInit,
    init_mut: fn(&mut C) -> &mut PromptInit,
) -> MethodOption<C> {
    MethodOption::parsed(
        "prompt-init-text",
        "TEXT",
        "prompt, p-tuning: start the virtual tokens from these words' embeddings",
        move |c| show_or(&init(c).text, "sampled vocabulary"),
        move |c, text| {
            init_mut(c).text = Some(text.to_string());
            Ok(())
        },
    )
}

/// `--prefix-len`: prefix rows per attention (MAM, prefix, p-tuning-v2).
pub(crate) fn prefix_len_option<C: 'static>(
    len: fn(&C) -> usize,
    len_mut: fn(&mut C) -> &mut usize,
) -> MethodOption<C> {
    MethodOption::new(
        "prefix-len",
        "L",
        "MAM, prefix, p-tuning-v2, UniPELT: prefix rows per attention",
        move |c| len(c).to_string(),
        move |c, l| *len_mut(c) = l,
    )
}

/// `--prefix-hidden` (prefix, MAM, UniPELT).
pub(crate) fn prefix_hidden_option<C: 'static>(
    hidden: fn(&C) -> usize,
    hidden_mut: fn(&mut C) -> &mut usize,
) -> MethodOption<C> {
    MethodOption::new(
        "prefix-hidden",
        "H",
        "hidden width of the prefix reparameterisation MLP (MAM: 0 trains the rows directly)",
        move |c| hidden(c).to_string(),
        move |c, h| *hidden_mut(c) = h,
    )
}

/// `--prefix-positions` (prefix, p-tuning-v2 on GPT-2).
pub(crate) fn prefix_positions_option<C: 'static>(
    on: fn(&C) -> bool,
    on_mut: fn(&mut C) -> &mut bool,
) -> MethodOption<C> {
    MethodOption::switch(
        "prefix-positions",
        "prefix, p-tuning-v2 on GPT-2: the prefix takes the first positions and the text counts \
         on after it, as HF GPT-2 under peft's prefix tuning (needed to export to peft)",
        on,
        move |c, v| *on_mut(c) = v,
    )
}

/// `--adapter-name` of a prefix method: the name its prefixes are held and saved under.
pub(crate) fn prefix_name_option<C: 'static>(
    name: fn(&C) -> &String,
    name_mut: fn(&mut C) -> &mut String,
) -> MethodOption<C> {
    MethodOption::new(
        "adapter-name",
        "NAME",
        "the name the adapter is held and saved under",
        move |c| name(c).clone(),
        move |c, v: String| *name_mut(c) = v,
    )
}
