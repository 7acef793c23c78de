//! Text → padded id batches through the `tokenizers` crate.
//!
//! `tokenizer.json` is used when the directory has one. Otherwise BERT gets a WordPiece
//! tokenizer from `vocab.txt` (lower-casing as `tokenizer_config.json`'s `do_lower_case` says)
//! and GPT-2 a byte-level BPE from `vocab.json` (or `encoder.json`) and `merges.txt` (or
//! `vocab.bpe`).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    EncodeInput, PaddingDirection, PaddingParams, PaddingStrategy, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use crate::config::{ModelKind, read_json};
use crate::error::{ModelError, Result};
use crate::states::{BertInput, Gpt2Input};

/// Truncation length until [`TextTokenizer::configure`] says otherwise (BERT's usual limit).
pub const DEFAULT_MAX_LEN: usize = 512;

/// Which side padding goes on. GPT-2 users often want `Left` for generation-style scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingSide {
    /// Pad after the text.
    #[default]
    Right,
    /// Pad before the text.
    Left,
}

/// One example: a text, or a sentence pair (BERT gives the second text token type 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextInput {
    /// One text.
    Single(String),
    /// A pair of texts.
    Pair(String, String),
}

impl From<&str> for TextInput {
    fn from(text: &str) -> Self {
        TextInput::Single(text.to_string())
    }
}

/// A tokenizer for one model directory, with the model's pad token, a truncation length and a
/// padding side (set once with [`TextTokenizer::configure`], used by every batch).
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer without truncation or padding, for [`TextTokenizer::encode_words`]
    /// (HF tokenizers truncate every encoding once truncation is set).
    words: tokenizers::Tokenizer,
    pad_id: u32,
    source: PathBuf,
    max_len: usize,
    side: PaddingSide,
}

/// A padded batch, row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch {
    /// Rows.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// 1 at real tokens, 0 at padding.
    pub attention_mask: Vec<i64>,
    /// Segment of each token.
    pub token_type_ids: Vec<i64>,
}

#[derive(serde::Deserialize, Default)]
struct TokenizerConfig {
    do_lower_case: Option<bool>,
}

impl TextTokenizer {
    /// Loads the tokenizer files of `dir` for a model of `kind`.
    pub fn from_dir(dir: &Path, kind: ModelKind) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let (inner, source) = if json.is_file() {
            let inner =
                tokenizers::Tokenizer::from_file(&json).map_err(|e| ModelError::Tokenizer {
                    path: json.clone(),
                    message: e.to_string(),
                })?;
            (inner, json)
        } else {
            match kind {
                ModelKind::Bert | ModelKind::M2Bert => wordpiece(dir)?,
                ModelKind::Gpt2 => byte_level_bpe(dir)?,
            }
        };
        let pad_token = match kind {
            ModelKind::Bert | ModelKind::M2Bert => "[PAD]",
            // GPT-2 has no pad token: pad with end-of-text and mask it out.
            ModelKind::Gpt2 => "<|endoftext|>",
        };
        let pad_id = inner
            .token_to_id(pad_token)
            .ok_or_else(|| ModelError::Tokenizer {
                path: source.clone(),
                message: format!("vocabulary has no `{pad_token}` token"),
            })?;
        let mut words = inner.clone();
        words
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer {
                path: source.clone(),
                message: e.to_string(),
            })?
            .with_padding(None);
        let mut tokenizer = Self {
            inner,
            words,
            pad_id,
            source,
            max_len: 0,
            side: PaddingSide::Right,
        };
        tokenizer.configure(DEFAULT_MAX_LEN, PaddingSide::Right)?;
        Ok(tokenizer)
    }

    /// Sets the truncation length (special tokens included) and the padding side.
    pub fn configure(&mut self, max_len: usize, side: PaddingSide) -> Result<()> {
        if max_len == 0 {
            return Err(ModelError::InvalidInput(
                "max length must be at least 1".into(),
            ));
        }
        let pad_token = self.token(self.pad_id).unwrap_or_default();
        let source = self.source.clone();
        self.inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| ModelError::Tokenizer {
                path: source,
                message: e.to_string(),
            })?;
        self.inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: match side {
                PaddingSide::Right => PaddingDirection::Right,
                PaddingSide::Left => PaddingDirection::Left,
            },
            pad_to_multiple_of: None,
            pad_id: self.pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        self.max_len = max_len;
        self.side = side;
        Ok(())
    }

    /// Tokens per text, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Which side padding goes on.
    pub fn padding_side(&self) -> PaddingSide {
        self.side
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The largest token id the tokenizer can produce (its vocabulary's ids need not be
    /// contiguous, so this can exceed [`TextTokenizer::vocab_size`]).
    pub fn max_id(&self) -> Option<u32> {
        self.inner.get_vocab(true).into_values().max()
    }

    /// The padding token's id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The token string of `id`.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Decodes ids to text (byte-level tokens become readable characters).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| self.error(e))
    }

    /// Ids of one text, with the model's special tokens, truncated but unpadded.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, true).map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Ids of one text without special tokens, never truncated (prompt initialisation words,
    /// language-model corpora, generation prompts).
    pub fn encode_words(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.words.encode(text, false).map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Tokenizes, truncates to the configured length and pads to the longest example.
    pub fn encode_batch(&self, inputs: &[TextInput]) -> Result<EncodedBatch> {
        if inputs.is_empty() {
            return Err(ModelError::InvalidInput("no text to encode".into()));
        }
        let inputs: Vec<EncodeInput> = inputs
            .iter()
            .map(|input| match input {
                TextInput::Single(text) => EncodeInput::Single(text.as_str().into()),
                TextInput::Pair(a, b) => EncodeInput::Dual(a.as_str().into(), b.as_str().into()),
            })
            .collect();
        let encodings = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| self.error(e))?;
        // A text with no tokens (an empty string on GPT-2, which adds no special tokens) would
        // give a row with no position to read out.
        if let Some(empty) = encodings
            .iter()
            .position(|e| e.get_attention_mask().iter().all(|&m| m == 0))
        {
            return Err(ModelError::InvalidInput(format!(
                "text {} of the batch has no tokens (is it empty?)",
                empty + 1
            )));
        }
        let batch = encodings.len();
        let seq = encodings.first().map_or(0, |e| e.get_ids().len());
        let widen = |values: &[u32]| values.iter().map(|&v| v as i64).collect::<Vec<_>>();
        Ok(EncodedBatch {
            batch,
            seq,
            input_ids: encodings.iter().flat_map(|e| widen(e.get_ids())).collect(),
            attention_mask: encodings
                .iter()
                .flat_map(|e| widen(e.get_attention_mask()))
                .collect(),
            token_type_ids: encodings
                .iter()
                .flat_map(|e| widen(e.get_type_ids()))
                .collect(),
        })
    }

    fn error(&self, e: impl std::fmt::Display) -> ModelError {
        ModelError::Tokenizer {
            path: self.source.clone(),
            message: e.to_string(),
        }
    }
}

impl EncodedBatch {
    fn tensor(&self, values: &[i64], device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [self.batch, self.seq]),
            device,
        )
    }

    /// The attention mask `[batch, seq]`: 1 for tokens, 0 for padding.
    pub fn mask_tensor(&self, device: &Device) -> Tensor<2, Int> {
        self.tensor(&self.attention_mask, device)
    }

    /// The batch as BERT's input on `device`.
    pub fn bert_input(&self, device: &Device) -> BertInput {
        BertInput {
            input_ids: self.tensor(&self.input_ids, device),
            attention_mask: self.mask_tensor(device),
            token_type_ids: self.tensor(&self.token_type_ids, device),
        }
    }

    /// The batch as GPT-2's input on `device`.
    pub fn gpt2_input(&self, device: &Device) -> Gpt2Input {
        Gpt2Input {
            input_ids: self.tensor(&self.input_ids, device),
            attention_mask: self.mask_tensor(device),
        }
    }

    /// The attention-mask row of example `i`.
    pub fn mask_row(&self, i: usize) -> &[i64] {
        &self.attention_mask[i * self.seq..(i + 1) * self.seq]
    }
}

fn wordpiece(dir: &Path) -> Result<(tokenizers::Tokenizer, PathBuf)> {
    let vocab = dir.join("vocab.txt");
    if !vocab.is_file() {
        return Err(ModelError::Tokenizer {
            path: dir.to_path_buf(),
            message: "found neither tokenizer.json nor vocab.txt".into(),
        });
    }
    let config_path = dir.join("tokenizer_config.json");
    let config: TokenizerConfig = if config_path.is_file() {
        read_json(&config_path)?
    } else {
        TokenizerConfig::default()
    };
    let lowercase = config.do_lower_case.unwrap_or(true);
    let fail = |message: String| ModelError::Tokenizer {
        path: vocab.clone(),
        message,
    };
    let vocab_str = vocab.to_string_lossy().to_string();
    let model = WordPiece::from_file(&vocab_str)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    let id = |token: &str| {
        tokenizer
            .token_to_id(token)
            .ok_or_else(|| fail(format!("vocabulary has no `{token}` token")))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .map_err(|e| fail(e.to_string()))?
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )))
        .with_decoder(Some(WordPieceDecoder::default()));
    Ok((tokenizer, vocab))
}

fn byte_level_bpe(dir: &Path) -> Result<(tokenizers::Tokenizer, PathBuf)> {
    let first = |names: &[&str]| names.iter().map(|n| dir.join(n)).find(|p| p.is_file());
    let (Some(vocab), Some(merges)) = (
        first(&["vocab.json", "encoder.json"]),
        first(&["merges.txt", "vocab.bpe"]),
    ) else {
        return Err(ModelError::Tokenizer {
            path: dir.to_path_buf(),
            message:
                "found neither tokenizer.json nor vocab.json/encoder.json with merges.txt/vocab.bpe"
                    .into(),
        });
    };
    let model = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .build()
        .map_err(|e| ModelError::Tokenizer {
            path: vocab.clone(),
            message: e.to_string(),
        })?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevelDecoder::default()));
    Ok((tokenizer, vocab))
}
