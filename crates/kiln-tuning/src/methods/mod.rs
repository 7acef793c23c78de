//! The method registry: one file per method, one line per method below. A line names the
//! [`MethodConfig`] variant and the method's config, which implements [`Registered`] (name,
//! summary, options) and [`Method`] in its own file. Nothing else in the workspace lists
//! methods: the CLI's flags, `kiln methods`, `kiln compare` and the tests read [`registry`].

use crate::error::Result;
use crate::method::Method;
use crate::method::{MethodInfo, Registered, Tagged, methods, set_option, specs};
use serde::Serialize;

// FPT trains on non-language tasks with `kiln fpt`: its config is not a registry line.
mod fpt;
pub use fpt::FptTuningConfig;

/// The registry, one line per method: `Variant => module::Config`. Calls `$callback!` with the
/// lines: [`MethodConfig`] and [`registry`] are built by one such call below, and tests build one
/// test per method with another, so that each method fails under its own name.
#[macro_export]
macro_rules! for_each_method {
    ($callback:ident) => {
        $callback! {
            Full => full::FullConfig,
            LinearProbe => linear_probe::LinearProbeConfig,
            PartialK => partial::PartialConfig,
            MlpK => mlp::MlpConfig,
            Bitfit => bitfit::BitFitConfig,
            Lora => lora::LoraConfig,
            Houlsby => houlsby::HoulsbyConfig,
            Pfeiffer => pfeiffer::PfeifferConfig,
            Parallel => parallel::ParallelConfig,
            Fusion => fusion::FusionConfig,
            AdapterDrop => adapter_drop::AdapterDropConfig,
            Mam => mam::MamConfig,
            Side => side::SideTuningConfig,
            Prompt => prompt::PromptTuningConfig,
            Prefix => prefix::PrefixTuningConfig,
            PTuning => p_tuning::PTuningConfig,
            PTuningV2 => p_tuning_v2::PTuningV2Config,
        }
    };
}

crate::for_each_method!(methods);
