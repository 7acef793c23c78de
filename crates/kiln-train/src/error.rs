use std::path::{Path, PathBuf};

/// What goes wrong in a run: the file, checkpoint, setting or library error at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}: {cause}", path.display())]
    /// A file or directory cannot be read or written.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        cause: std::io::Error,
    },
    #[error("checkpoint {}: {message}", path.display())]
    /// A checkpoint that cannot be read, or does not fit the model.
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    #[error("{0}")]
    /// Settings or inputs that do not fit (a flag's value, a split too small).
    Invalid(String),
    #[error(transparent)]
    /// Reading the data failed.
    Data(#[from] kiln_data::DataError),
    #[error(transparent)]
    /// Loading or changing the model failed.
    Model(#[from] kiln_models::ModelError),
    #[error(transparent)]
    /// The method refused its options or the model.
    Tuning(#[from] kiln_tuning::TuningError),
    /// An error with what was being done when it happened (`reading task data/x.csv`).
    #[error("{context}")]
    Context {
        /// What was being done.
        context: String,
        /// The error it ran into.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Adds what was being done to an error, as `anyhow::Context` does, for library code.
pub trait Context<T> {
    /// The error, if any, wrapped with `what()` was being done.
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| TrainError::Context {
            context: what(),
            source: Box::new(e),
        })
    }
}

impl TrainError {
    /// A [`TrainError::Checkpoint`] for `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TrainError::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A [`TrainError::Io`] for `path`.
    pub fn io(path: &Path, cause: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            cause,
        }
    }
}

/// A result with a [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;
