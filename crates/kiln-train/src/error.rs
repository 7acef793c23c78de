use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Data(#[from] kiln_data::DataError),
    #[error(transparent)]
    Model(#[from] kiln_models::ModelError),
    #[error(transparent)]
    Tuning(#[from] kiln_tuning::TuningError),
    /// An error with what was being done when it happened (`reading task data/x.csv`).
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Adds what was being done to an error, as `anyhow::Context` does, for library code.
pub trait Context<T> {
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
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TrainError::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn io(path: &Path, cause: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            cause,
        }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
