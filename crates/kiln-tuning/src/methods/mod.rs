//! One file per method.

mod adapter_drop;
mod bitfit;
mod full;
mod fusion;
mod houlsby;
mod linear_probe;
mod lora;
mod mam;
mod mlp;
mod parallel;
mod partial;
mod pfeiffer;
mod side;

pub use adapter_drop::AdapterDropConfig;
pub use bitfit::BitFitConfig;
pub use full::FullConfig;
pub use fusion::FusionConfig;
pub use houlsby::HoulsbyConfig;
pub use linear_probe::LinearProbeConfig;
pub use lora::LoraConfig;
pub use mam::MamConfig;
pub use mlp::MlpConfig;
pub use parallel::ParallelConfig;
pub use partial::PartialConfig;
pub use pfeiffer::PfeifferConfig;
pub use side::SideTuningConfig;
