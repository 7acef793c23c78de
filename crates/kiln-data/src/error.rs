//! Errors of kiln-data: each names the file, and the row where there is one.

use std::path::PathBuf;

/// What goes wrong reading a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory cannot be read.
    #[error("cannot read {path}: {cause}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        cause: std::io::Error,
    },

    /// One bad row (or document, in a folder layout): 1-based line number in the file.
    #[error("{path}, row {row}: {message}")]
    Row {
        /// The file.
        path: PathBuf,
        /// The 1-based row.
        row: usize,
        /// What is wrong with it.
        message: String,
    },

    /// A document of a folder-per-class layout that cannot be used.
    #[error("{path}: {message}")]
    Document {
        /// The document's file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// The file or directory does not have the layout asked for.
    #[error("{path}: {message}")]
    Layout {
        /// The file or directory.
        path: PathBuf,
        /// What layout was expected.
        message: String,
    },

    /// Settings that do not fit the data (a split with no room, a bound of zero).
    #[error("{0}")]
    InvalidInput(String),
}

/// A result with a [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;

impl From<kiln_models::ModelError> for DataError {
    fn from(error: kiln_models::ModelError) -> Self {
        DataError::InvalidInput(error.to_string())
    }
}
