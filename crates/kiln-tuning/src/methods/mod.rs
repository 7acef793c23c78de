//! One file per method.

mod adapter_drop;
mod bitfit;
mod fpt;
mod full;
mod fusion;
mod houlsby;
mod linear_probe;
mod lora;
mod mam;
mod mlp;
mod p_tuning;
mod p_tuning_v2;
mod parallel;
mod partial;
mod pfeiffer;
mod prefix;
mod prompt;
mod side;

pub use adapter_drop::AdapterDropConfig;
pub use bitfit::BitFitConfig;
pub use fpt::FptTuningConfig;
pub use full::FullConfig;
pub use fusion::FusionConfig;
pub use houlsby::HoulsbyConfig;
pub use linear_probe::LinearProbeConfig;
pub use lora::LoraConfig;
pub use mam::MamConfig;
pub use mlp::MlpConfig;
pub use p_tuning::PTuningConfig;
pub use p_tuning_v2::PTuningV2Config;
pub use parallel::ParallelConfig;
pub use partial::PartialConfig;
pub use pfeiffer::PfeifferConfig;
pub use prefix::PrefixTuningConfig;
pub use prompt::PromptTuningConfig;
pub use side::SideTuningConfig;
