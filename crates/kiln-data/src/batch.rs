//! Examples → a tokenized, padded batch with its targets.

use kiln_models::{EncodedBatch, TextInput, TextTokenizer};

use crate::error::Result;
use crate::text::{Target, TextExample};

/// A padded batch of texts with their targets.
#[derive(Debug, Clone)]
pub struct TextBatch {
    /// Ids, attention mask and token types `[batch, seq]` (second texts get token type 1).
    pub encoded: EncodedBatch,
    /// One target per text, in batch order.
    pub targets: Vec<Target>,
}

/// Tokenizes `examples` with the tokenizer's truncation length and padding side.
pub fn make_batch(tokenizer: &TextTokenizer, examples: &[&TextExample]) -> Result<TextBatch> {
    let inputs: Vec<TextInput> = examples
        .iter()
        .map(|example| match &example.pair {
            Some(pair) => TextInput::Pair(example.text.clone(), pair.clone()),
            None => TextInput::Single(example.text.clone()),
        })
        .collect();
    Ok(TextBatch {
        encoded: tokenizer.encode_batch(&inputs)?,
        targets: examples
            .iter()
            .map(|example| example.target.clone())
            .collect(),
    })
}
