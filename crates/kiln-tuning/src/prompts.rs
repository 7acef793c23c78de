//! What the prompt methods share: the virtual tokens' initial embeddings, either rows of the
//! embedding table for given words (repeated to fill the prompt, as peft does) or rows of
//! randomly sampled vocabulary tokens (Lester et al. 2021's "sampled vocab").

use burn::tensor::{Distribution, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use kiln_models::SequenceClassifier;

use crate::error::{Result, TuningError};

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
