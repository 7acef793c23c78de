//! kiln-tuning: the transfer methods. Each method fills the backbone's tuning slots and names
//! the parameters that train through one mechanism (path patterns, [`trainable`]); the
//! [`method::METHODS`] registry is what the CLI and the docs list.

pub mod adapters;
pub mod error;
pub mod method;
pub mod methods;
pub mod prompts;
pub mod trainable;

pub use adapters::{BottleneckOptions, Slots};
pub use error::{Result, TuningError};
pub use method::{METHODS, Method, MethodConfig, MethodInfo, MethodOptions};
pub use prompts::PromptInit;
pub use trainable::{ParamEntry, ParamReport, glob_match, set_trainable, tracked_report};
