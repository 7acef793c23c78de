//! Errors of kiln-data: each names the file, and the row where there is one.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    /// One bad row (or document, in a folder layout): 1-based line number in the file.
    #[error("{path}, row {row}: {message}")]
    Row {
        path: PathBuf,
        row: usize,
        message: String,
    },

    /// A document of a folder-per-class layout that cannot be used.
    #[error("{path}: {message}")]
    Document { path: PathBuf, message: String },

    /// The file or directory does not have the layout asked for.
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },

    #[error("{0}")]
    InvalidInput(String),
}

pub type Result<T> = std::result::Result<T, DataError>;

impl From<kiln_models::ModelError> for DataError {
    fn from(error: kiln_models::ModelError) -> Self {
        DataError::InvalidInput(error.to_string())
    }
}
