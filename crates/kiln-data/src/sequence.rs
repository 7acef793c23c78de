//! Non-language tasks as the Frozen Pretrained Transformer sees them: each example is a sequence
//! of tokens, every token either a vector of numbers (a patch of bits or pixels) or an id in a
//! small vocabulary (ListOps), and the target is a class or a string of bits.

use crate::error::{DataError, Result};
use crate::split::{Split, SplitFractions, SplitMix64, stratified_split};

/// One example's tokens.
#[derive(Debug, Clone, PartialEq)]
pub enum SequenceInput {
    /// `tokens * dim` numbers, token after token.
    Vectors(Vec<f32>),
    /// One vocabulary id per token (0 is padding).
    Ids(Vec<u32>),
}

impl SequenceInput {
    /// How many tokens the example has, given the task's token width.
    pub fn tokens(&self, kind: &InputKind) -> usize {
        match (self, kind) {
            (SequenceInput::Vectors(values), InputKind::Vectors { dim }) => values.len() / dim,
            (SequenceInput::Ids(ids), _) => ids.len(),
            (SequenceInput::Vectors(values), InputKind::Ids { .. }) => values.len(),
        }
    }
}

/// What a sequence example's answer is.
#[derive(Debug, Clone, PartialEq)]
pub enum SequenceTarget {
    /// One of the task's classes.
    Class(usize),
    /// One 0/1 entry per predicted bit.
    Bits(Vec<u8>),
}

/// One example of a non-language sequence task.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceExample {
    /// Its tokens.
    pub input: SequenceInput,
    /// Its answer.
    pub target: SequenceTarget,
}

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A vector of `dim` numbers (the model projects it linearly).
    Vectors {
        /// Numbers per token.
        dim: usize,
    },
    /// An id below `vocab` (the model embeds it).
    Ids {
        /// Ids there are.
        vocab: usize,
    },
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// One of `n` classes, read from the last token.
    Classes(usize),
    /// `bits` binary digits, read from the last `tokens` tokens (`bits / tokens` digits each),
    /// as the FPT reference code reads the answer of the bit tasks.
    Bits {
        /// Binary digits in the answer.
        bits: usize,
        /// Tokens the answer is read from.
        tokens: usize,
    },
}

impl OutputKind {
    /// Tokens at the end of the sequence the answer is read from.
    pub fn readout_tokens(&self) -> usize {
        match self {
            OutputKind::Classes(_) => 1,
            OutputKind::Bits { tokens, .. } => *tokens,
        }
    }

    /// Logits each readout token produces (two per bit for bit strings).
    pub fn outputs_per_token(&self) -> usize {
        match self {
            OutputKind::Classes(n) => *n,
            OutputKind::Bits { bits, tokens } => 2 * bits / tokens,
        }
    }
}

/// A task's examples, already split.
#[derive(Debug, Clone)]
pub struct SequenceTask {
    /// The task's name (`bit-xor`, `mnist`).
    pub name: String,
    /// What a token is.
    pub input: InputKind,
    /// What the model predicts.
    pub output: OutputKind,
    /// Training examples.
    pub train: Vec<SequenceExample>,
    /// Validation examples.
    pub validation: Vec<SequenceExample>,
    /// Test examples.
    pub test: Vec<SequenceExample>,
}

impl SequenceTask {
    /// Builds a task from labelled examples with a seeded stratified 80/10/10 split.
    pub fn split_classes(
        name: &str,
        input: InputKind,
        output: OutputKind,
        examples: Vec<SequenceExample>,
        seed: u64,
    ) -> Result<Self> {
        let classes: Vec<usize> = examples
            .iter()
            .map(|e| match e.target {
                SequenceTarget::Class(c) => Ok(c),
                SequenceTarget::Bits(_) => Err(DataError::InvalidInput(format!(
                    "{name}: a class split needs class targets"
                ))),
            })
            .collect::<Result<_>>()?;
        let Split {
            train,
            validation,
            test,
        } = stratified_split(
            examples.len(),
            Some(&classes),
            SplitFractions::EIGHTY_TEN_TEN,
            seed,
        )?;
        let pick = |indices: Vec<usize>| indices.iter().map(|&i| examples[i].clone()).collect();
        Ok(Self {
            name: name.to_string(),
            input,
            output,
            train: pick(train),
            validation: pick(validation),
            test: pick(test),
        })
    }

    /// Keeps a random `n` of the training examples, drawn from `seed`.
    pub fn subsample_train(&mut self, n: usize, seed: u64) {
        SplitMix64::new(seed).shuffle(&mut self.train);
        self.train.truncate(n);
    }

    /// The longest example, in tokens.
    pub fn max_tokens(&self) -> usize {
        self.train
            .iter()
            .chain(&self.validation)
            .chain(&self.test)
            .map(|e| e.input.tokens(&self.input))
            .max()
            .unwrap_or(0)
    }
}
