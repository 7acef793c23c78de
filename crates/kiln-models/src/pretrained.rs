//! A HF model directory loaded whole: backbone (BERT or GPT-2, from `model_type`) and tokenizer.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};

use crate::bert::{Bert, BertConfig};
use crate::config::ModelKind;
use crate::error::{ModelError, Result};
use crate::gpt2::{Gpt2, Gpt2Config};
use crate::m2::{M2Bert, M2BertConfig};
use crate::states::Readout;
use crate::tokenizer::{DEFAULT_MAX_LEN, EncodedBatch, PaddingSide, TextTokenizer};

/// One of kiln's backbones with its HF config.
#[derive(Debug)]
pub enum Backbone {
    /// BERT with its config.
    Bert(Box<Bert>, BertConfig),
    /// GPT-2 with its config.
    Gpt2(Box<Gpt2>, Gpt2Config),
    /// M2-BERT with its config.
    M2Bert(Box<M2Bert>, M2BertConfig),
}

/// A backbone and its tokenizer, loaded from one directory.
pub struct Pretrained {
    /// The directory it was loaded from.
    pub dir: PathBuf,
    /// The backbone.
    pub backbone: Backbone,
    /// The tokenizer.
    pub tokenizer: TextTokenizer,
}

impl Backbone {
    /// Which family it is.
    pub fn kind(&self) -> ModelKind {
        match self {
            Backbone::Bert(..) => ModelKind::Bert,
            Backbone::Gpt2(..) => ModelKind::Gpt2,
            Backbone::M2Bert(..) => ModelKind::M2Bert,
        }
    }

    /// How a text's token states become one vector unless the user says otherwise: the mean
    /// for the bidirectional encoders, the last token for GPT-2 (the only one that has read the
    /// whole text).
    pub fn default_readout(&self) -> Readout {
        self.kind().default_readout()
    }

    /// Rows of the word-embedding table: token ids must stay below it.
    pub fn vocab_size(&self) -> usize {
        match self {
            Backbone::Bert(_, config) => config.vocab_size,
            Backbone::Gpt2(_, config) => config.vocab_size,
            Backbone::M2Bert(_, config) => config.bert.vocab_size,
        }
    }

    /// The longest input the position table allows.
    pub fn max_positions(&self) -> usize {
        match self {
            Backbone::Bert(_, config) => config.max_position_embeddings,
            Backbone::Gpt2(_, config) => config.n_positions,
            Backbone::M2Bert(_, config) => config.bert.max_position_embeddings,
        }
    }

    /// The backbone of a HF directory with its weights.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Ok(match ModelKind::detect(dir)? {
            ModelKind::Bert => {
                let (model, config) = Bert::from_pretrained(dir, device)?;
                Backbone::Bert(Box::new(model), config)
            }
            ModelKind::Gpt2 => {
                let (model, config) = Gpt2::from_pretrained(dir, device)?;
                Backbone::Gpt2(Box::new(model), config)
            }
            ModelKind::M2Bert => {
                let (model, config) = M2Bert::from_pretrained(dir, device)?;
                Backbone::M2Bert(Box::new(model), config)
            }
        })
    }

    /// The same architecture (the directory's `config.json`) at random initialisation: the
    /// baseline that tells what pretraining contributed.
    pub fn random(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join("config.json");
        Ok(match ModelKind::detect(dir)? {
            ModelKind::Bert => {
                let config = BertConfig::from_file(&path)?;
                Backbone::Bert(Box::new(config.init(device)), config)
            }
            ModelKind::Gpt2 => {
                let config = Gpt2Config::from_file(&path)?;
                Backbone::Gpt2(Box::new(config.init(device)), config)
            }
            ModelKind::M2Bert => {
                let config = M2BertConfig::from_file(&path)?;
                Backbone::M2Bert(Box::new(config.init(device)?), config)
            }
        })
    }
}

impl Pretrained {
    /// The directory's backbone with its weights, and its tokenizer; `dir` may also be a hub
    /// name ([`crate::hub::resolve`]).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let dir = &crate::hub::resolve(dir)?;
        Self::with_backbone(dir, Backbone::load(dir, device)?)
    }

    /// The directory's architecture at random initialisation, with its tokenizer; `dir` may also
    /// be a hub name.
    pub fn random(dir: &Path, device: &Device) -> Result<Self> {
        let dir = &crate::hub::resolve(dir)?;
        Self::with_backbone(dir, Backbone::random(dir, device)?)
    }

    fn with_backbone(dir: &Path, backbone: Backbone) -> Result<Self> {
        let tokenizer = TextTokenizer::from_dir(dir, backbone.kind())?;
        if let Some(max_id) = tokenizer.max_id()
            && max_id as usize >= backbone.vocab_size()
        {
            return Err(ModelError::InvalidInput(format!(
                "{}: the tokenizer's ids go up to {max_id} but the model's embedding has only {} \
                 rows (config.json vocab_size): those ids would index past the table; use the \
                 tokenizer the model was trained with",
                dir.display(),
                backbone.vocab_size()
            )));
        }
        let mut model = Self {
            dir: dir.to_path_buf(),
            backbone,
            tokenizer,
        };
        // A text longer than the position table would index past it.
        let max_len = model.max_positions().min(DEFAULT_MAX_LEN);
        model.tokenizer.configure(max_len, PaddingSide::Right)?;
        Ok(model)
    }

    /// The longest input the position table allows.
    pub fn max_positions(&self) -> usize {
        self.backbone.max_positions()
    }

    /// Which family the backbone is.
    pub fn kind(&self) -> ModelKind {
        self.backbone.kind()
    }

    /// Last hidden state `[batch, seq, hidden]` of an encoded batch.
    pub fn hidden_states(&self, batch: &EncodedBatch, device: &Device) -> Tensor<3> {
        match &self.backbone {
            Backbone::Bert(model, _) => model.forward(batch.bert_input(device)).last_hidden_state,
            Backbone::Gpt2(model, _) => model.forward(batch.gpt2_input(device)),
            Backbone::M2Bert(model, _) => model.forward(batch.bert_input(device)),
        }
    }
}

/// How token states become one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over real (unmasked) tokens, as sentence-transformers does.
    Mean,
    /// The first token (`[CLS]`); BERT only.
    Cls,
    /// The last real token, the one a causal model has read the whole text with.
    Last,
    /// No pooling: token-level states.
    None,
}

impl std::str::FromStr for Pooling {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            "last" => Ok(Pooling::Last),
            "none" => Ok(Pooling::None),
            other => Err(ModelError::InvalidInput(format!(
                "unknown pooling `{other}`: expected mean, cls, last or none"
            ))),
        }
    }
}
