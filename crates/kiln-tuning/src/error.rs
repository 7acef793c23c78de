use kiln_models::ModelError;

/// What goes wrong choosing or applying a method.
#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    /// No registered method has this name.
    #[error("unknown method `{name}`{}; `kiln methods` lists them", did_you_mean(.suggestion))]
    UnknownMethod {
        /// The name given.
        name: String,
        /// The registered name nearest to it, if one is close.
        suggestion: Option<&'static str>,
    },
    /// No registered method takes this option.
    #[error("--{0}: no method takes this option; `kiln methods` lists them with theirs")]
    UnknownOption(String),
    /// A method option with a bad or inapplicable value, named as the CLI flag.
    #[error("--{option}: {message}")]
    Option {
        /// The flag, without its dashes.
        option: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// The model refused what the method asked of it.
    #[error(transparent)]
    Model(#[from] ModelError),
}

fn did_you_mean(suggestion: &Option<&'static str>) -> String {
    suggestion.map_or_else(String::new, |s| format!(" (did you mean `{s}`?)"))
}

/// A result with a [`TuningError`].
pub type Result<T> = std::result::Result<T, TuningError>;
