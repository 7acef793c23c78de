//! kiln-models: the backbones kiln fine-tunes (BERT, GPT-2), loaded from HF model directories,
//! the tokenizers that feed them, and the task models around them (sequence classifier, FPT).
//!
//! A backbone never knows about methods, data or the trainer; it exposes Burn modules whose
//! parameter paths the tuning crate matches, and it loads HF checkpoints through one key table
//! per model ([`bert::BERT_KEYS`], [`gpt2::GPT2_KEYS`]).

#![warn(missing_docs)]

pub mod activation;
pub mod adalora;
pub mod adapter;
pub mod attention;
pub mod backbone;
pub mod bert;
pub mod classifier;
pub mod config;
pub mod device;
pub mod encode;
pub mod error;
pub mod fpt;
pub mod gpt2;
pub mod hub;
pub mod long_conv;
pub mod low_rank;
pub mod lycoris;
pub mod m2;
pub mod monarch;
pub mod oft;
pub mod paths;
pub mod phm;
pub mod pretrained;
pub mod prompt;
pub mod reft;
pub mod side;
pub mod states;
pub mod tokenizer;
pub mod tunable;
pub mod vera;
pub mod weights;

pub use activation::Activation;
pub use adalora::{RankAllocation, SvdDelta};
pub use adapter::{
    ActiveAdapter, AdapterConfig, AdapterContext, AdapterDropState, AdapterFusion, AdapterInit,
    AdapterProjection, AttentionPrefix, BottleneckAdapter, Composition, GateBias, LayerAdapter,
    LayerAdapters, gate,
};
pub use backbone::{OptimizerGroup, TunableBackbone};
pub use bert::{Bert, BertConfig, BertInput, BertOutput};
pub use classifier::{FrozenCut, HeadConfig, MlpHead, NamedAdapter, SequenceClassifier};
pub use config::ModelKind;
pub use device::DeviceChoice;
pub use error::{ModelError, Result};
pub use fpt::{Fpt, FptConfig, FptTokens};
pub use gpt2::{Gpt2, Gpt2Config, Gpt2Input, KvCache};
pub use low_rank::{LoraInit, LowRankConfig, LowRankDelta};
pub use lycoris::{HadamardDelta, KroneckerDelta};
pub use m2::{M2Bert, M2BertConfig};
pub use monarch::{BlockDiagonal, BlockDiagonalConfig, Monarch, MonarchConfig};
pub use oft::OrthogonalRotation;
pub use phm::{PhmConfig, PhmWeight};
pub use pretrained::{Backbone, Pooling, Pretrained};
pub use prompt::{PrefixEncoder, PromptEncoder, PromptEncoderShape, PromptTemplate, SoftPrompt};
pub use reft::{ReftConfig, ReftIntervention, ReftPositions, ReftUnit};
pub use side::{SideConfig, SideNetwork};
pub use states::{Readout, TokenStates, first_token, last_token_pool, mean_pool};
pub use tokenizer::{EncodedBatch, PaddingSide, TextInput, TextTokenizer};
pub use tunable::{LoraRouting, ScalingVector, TunableEmbedding, TunableLinear};
pub use vera::{VeraDelta, VeraProjections};
pub use weights::WeightFile;
