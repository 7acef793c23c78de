use kiln_models::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    #[error("unknown method `{0}`; `kiln methods` lists them")]
    UnknownMethod(String),
    #[error("--{0}: no method takes this option; `kiln methods` lists them with theirs")]
    UnknownOption(String),
    /// A method option with a bad or inapplicable value, named as the CLI flag.
    #[error("--{option}: {message}")]
    Option {
        option: &'static str,
        message: String,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
}

pub type Result<T> = std::result::Result<T, TuningError>;
