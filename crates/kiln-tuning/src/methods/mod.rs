//! One file per method.

mod bitfit;
mod full;
mod linear_probe;
mod lora;
mod mlp;
mod partial;

pub use bitfit::BitFitConfig;
pub use full::FullConfig;
pub use linear_probe::LinearProbeConfig;
pub use lora::LoraConfig;
pub use mlp::MlpConfig;
pub use partial::PartialConfig;
