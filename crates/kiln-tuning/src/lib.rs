//! kiln-tuning: the transfer methods. Each method fills the backbone's tuning slots and names
//! the parameters that train through one mechanism (path patterns, [`trainable`]). The registry
//! in [`methods`] (one line per method) is what the CLI, `kiln compare` and the docs list.

#![warn(missing_docs)]

pub mod adapters;
/// What goes wrong applying a method, named as the CLI flag at fault.
pub mod error;
pub mod method;
pub mod methods;
pub mod options;
pub mod prompts;
pub mod targets;
pub mod trainable;

pub use adapters::{BottleneckOptions, Slots};
pub use error::{Result, TuningError};
pub use method::{Method, MethodInfo, Registered};
pub use methods::{MethodConfig, nearest_method, registry};
pub use options::{MethodOption, OptionSpec};
pub use prompts::PromptInit;
pub use trainable::{ParamEntry, ParamReport, glob_match, set_trainable, tracked_report};
