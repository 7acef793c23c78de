//! The one error type of kiln-models. Every variant names the file, tensor or option at fault.

use std::path::PathBuf;

/// Why a model directory, weight file, config or tokenizer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The I/O error is part of the message rather than a `source`, so it is printed once.
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("{path}: malformed config: {message}")]
    Config { path: PathBuf, message: String },

    #[error("{path}: not a readable safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },

    #[error("{path}: not a readable PyTorch checkpoint: {message}")]
    Pytorch { path: PathBuf, message: String },

    #[error("{dir}: no weights found (looked for model.safetensors and pytorch_model.bin)")]
    NoWeights { dir: PathBuf },

    #[error("{path}: tensor `{tensor}` is missing (kiln parameter `{param}` needs it)")]
    MissingTensor {
        path: PathBuf,
        tensor: String,
        param: String,
    },

    #[error("{path}: tensor `{tensor}` has shape {found:?}, but the config asks for {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{path}: tensor `{tensor}` has element type {dtype}, which kiln cannot read as float")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },

    #[error("{path}: model_type `{model_type}` is not supported (kiln loads: bert, gpt2)")]
    UnsupportedModel { path: PathBuf, model_type: String },

    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("{0}")]
    InvalidInput(String),

    #[error(
        "device `{name}` was not compiled into this build of kiln; rebuild with `--features {name}`"
    )]
    BackendNotCompiled { name: String },
}

pub type Result<T> = std::result::Result<T, ModelError>;
