//! The one error type of kiln-models. Every variant names the file, tensor or option at fault.

use std::path::PathBuf;

/// Why a model directory, weight file, config or tokenizer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The I/O error is part of the message rather than a `source`, so it is printed once.
    #[error("cannot read {path}: {cause}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        cause: std::io::Error,
    },

    /// A `config.json` that does not parse or is missing a field.
    #[error("{path}: malformed config: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A safetensors file that cannot be read.
    #[error("{path}: not a readable safetensors file: {message}")]
    Safetensors {
        /// The weight file.
        path: PathBuf,
        /// What the reader said.
        message: String,
    },

    /// A `pytorch_model.bin` that cannot be read (kiln never runs pickled code).
    #[error("{path}: not a readable PyTorch checkpoint: {message}")]
    Pytorch {
        /// The weight file.
        path: PathBuf,
        /// What the reader said.
        message: String,
    },

    /// A hub model that could not be fetched or found in the cache.
    #[error("model `{model}`: {message}")]
    Hub {
        /// The hub name with its revision.
        model: String,
        /// What went wrong and what to do.
        message: String,
    },

    /// A model directory without a weight file.
    #[error("{dir}: no weights found (looked for model.safetensors and pytorch_model.bin)")]
    NoWeights {
        /// The model directory.
        dir: PathBuf,
    },

    /// A weight file without a tensor the model needs.
    #[error("{path}: tensor `{tensor}` is missing (kiln parameter `{param}` needs it)")]
    MissingTensor {
        /// The weight file.
        path: PathBuf,
        /// The HF tensor name looked for.
        tensor: String,
        /// The kiln parameter it would fill.
        param: String,
    },

    /// A tensor whose shape is not what the config implies.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, but the config asks for {expected:?}")]
    ShapeMismatch {
        /// The weight file.
        path: PathBuf,
        /// The HF tensor name.
        tensor: String,
        /// The shape the config asks for.
        expected: Vec<usize>,
        /// The shape the file holds.
        found: Vec<usize>,
    },

    /// A tensor of an element type kiln cannot read as float.
    #[error("{path}: tensor `{tensor}` has element type {dtype}, which kiln cannot read as float")]
    UnsupportedDtype {
        /// The weight file.
        path: PathBuf,
        /// The HF tensor name.
        tensor: String,
        /// Its element type.
        dtype: String,
    },

    /// A weight tensor holding NaN or infinite values.
    #[error(
        "{path}: tensor `{tensor}` holds {count} NaN or infinite values (first at index {first})"
    )]
    NonFinite {
        /// The weight file.
        path: PathBuf,
        /// The HF tensor name.
        tensor: String,
        /// How many values are not finite.
        count: usize,
        /// The first such value's flat index.
        first: usize,
    },

    /// A config of a model type kiln has no backbone for.
    #[error("{path}: model_type `{model_type}` is not supported (kiln loads: bert, gpt2)")]
    UnsupportedModel {
        /// The config file.
        path: PathBuf,
        /// Its `model_type`.
        model_type: String,
    },

    /// A tokenizer that cannot be loaded, or a text it cannot encode.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer {
        /// The tokenizer's directory or file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// An input or setting that does not fit the model.
    #[error("{0}")]
    InvalidInput(String),

    /// A backend this build was compiled without.
    #[error(
        "device `{name}` was not compiled into this build of kiln; rebuild with `--features {name}`"
    )]
    BackendNotCompiled {
        /// The backend's name.
        name: String,
    },
}

/// A result with a [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;
