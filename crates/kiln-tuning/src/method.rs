//! What every method shares, and the registry that maps names to their configs.

use serde::{Deserialize, Serialize};

use kiln_models::SequenceClassifier;

use crate::error::{Result, TuningError};
use crate::methods::{
    BitFitConfig, FullConfig, LinearProbeConfig, LoraConfig, MlpConfig, PartialConfig,
};
use crate::trainable::{ParamReport, set_trainable};

/// A transfer method: which slots it fills and which parameters it trains.
pub trait Method {
    /// Linear layers in the task head the method wants (mlp-k: `k`).
    fn head_layers(&self) -> usize {
        1
    }

    /// Refuses options that do not fit `model` (a `k` above its depth, say).
    fn check(&self, _model: &SequenceClassifier) -> Result<()> {
        Ok(())
    }

    /// Fills the model's tuning slots (LoRA deltas, adapters, prompts).
    fn prepare(&self, _model: &mut SequenceClassifier) -> Result<()> {
        Ok(())
    }

    /// Path patterns of the parameters that train (see [`crate::trainable`]).
    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String>;
}

/// A registered method with its settings; serialised into run directories as
/// `{"method": "lora", "rank": 8, ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum MethodConfig {
    Full(FullConfig),
    LinearProbe(LinearProbeConfig),
    PartialK(PartialConfig),
    MlpK(MlpConfig),
    Bitfit(BitFitConfig),
    Lora(LoraConfig),
}

/// One line of `kiln methods`.
pub struct MethodInfo {
    pub name: &'static str,
    pub summary: &'static str,
    /// CLI options the method takes, with defaults.
    pub options: &'static str,
}

/// Every registered method, in the order `kiln methods` lists them.
pub const METHODS: &[MethodInfo] = &[
    MethodInfo {
        name: "full",
        summary: "full fine-tuning: every parameter trains",
        options: "",
    },
    MethodInfo {
        name: "linear-probe",
        summary: "frozen backbone, one linear layer on pooled features",
        options: "",
    },
    MethodInfo {
        name: "partial-k",
        summary: "the last k layers (and what sits above them) plus the head train",
        options: "--k K (2)",
    },
    MethodInfo {
        name: "mlp-k",
        summary: "frozen backbone, k-layer MLP head",
        options: "--k K (2)",
    },
    MethodInfo {
        name: "bitfit",
        summary: "only bias terms (projections and layer norms) plus the head (Ben Zaken et al. 2022)",
        options: "",
    },
    MethodInfo {
        name: "lora",
        summary: "low-rank deltas on chosen projections, mergeable (Hu et al. 2022)",
        options: "--rank R (8) --alpha A (16) --lora-dropout P (0.1) --targets a,b (query,value | c_attn)",
    },
];

/// Method options as the CLI collects them; each method takes the ones it understands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodOptions {
    pub k: Option<usize>,
    pub rank: Option<usize>,
    pub alpha: Option<f64>,
    pub lora_dropout: Option<f64>,
    pub targets: Option<Vec<String>>,
}

impl MethodOptions {
    /// Names of the options that were given, as CLI flags.
    fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        if self.k.is_some() {
            given.push("k");
        }
        if self.rank.is_some() {
            given.push("rank");
        }
        if self.alpha.is_some() {
            given.push("alpha");
        }
        if self.lora_dropout.is_some() {
            given.push("lora-dropout");
        }
        if self.targets.is_some() {
            given.push("targets");
        }
        given
    }
}

impl MethodConfig {
    /// The method called `name` with `options` applied over its defaults. An option the method
    /// does not take is an error, not silently ignored.
    pub fn from_options(name: &str, options: &MethodOptions) -> Result<Self> {
        let (config, accepted): (Self, &[&str]) = match name {
            "full" => (Self::Full(FullConfig {}), &[]),
            "linear-probe" => (Self::LinearProbe(LinearProbeConfig {}), &[]),
            "partial-k" => {
                let mut c = PartialConfig::default();
                c.k = options.k.unwrap_or(c.k);
                (Self::PartialK(c), &["k"])
            }
            "mlp-k" => {
                let mut c = MlpConfig::default();
                c.k = options.k.unwrap_or(c.k);
                (Self::MlpK(c), &["k"])
            }
            "bitfit" => (Self::Bitfit(BitFitConfig {}), &[]),
            "lora" => {
                let mut c = LoraConfig::default();
                c.rank = options.rank.unwrap_or(c.rank);
                c.alpha = options.alpha.unwrap_or(c.alpha);
                c.dropout = options.lora_dropout.unwrap_or(c.dropout);
                c.targets = options.targets.clone();
                (Self::Lora(c), &["rank", "alpha", "lora-dropout", "targets"])
            }
            other => return Err(TuningError::UnknownMethod(other.to_string())),
        };
        if let Some(option) = options.given().into_iter().find(|o| !accepted.contains(o)) {
            return Err(TuningError::Option {
                option,
                message: format!("method `{name}` does not take this option"),
            });
        }
        Ok(config)
    }

    /// The registry name (`partial-k`), without options.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Full(_) => "full",
            Self::LinearProbe(_) => "linear-probe",
            Self::PartialK(_) => "partial-k",
            Self::MlpK(_) => "mlp-k",
            Self::Bitfit(_) => "bitfit",
            Self::Lora(_) => "lora",
        }
    }

    /// A short label with the option that tells runs apart: `partial-2`, `mlp-2`, `lora-r8`.
    pub fn label(&self) -> String {
        match self {
            Self::PartialK(c) => format!("partial-{}", c.k),
            Self::MlpK(c) => format!("mlp-{}", c.k),
            Self::Lora(c) => format!("lora-r{}", c.rank),
            other => other.name().to_string(),
        }
    }

    pub fn method(&self) -> &dyn Method {
        match self {
            Self::Full(c) => c,
            Self::LinearProbe(c) => c,
            Self::PartialK(c) => c,
            Self::MlpK(c) => c,
            Self::Bitfit(c) => c,
            Self::Lora(c) => c,
        }
    }

    /// Fills `model`'s slots and sets which parameters train; the report counts both.
    pub fn apply(&self, model: SequenceClassifier) -> Result<(SequenceClassifier, ParamReport)> {
        let method = self.method();
        method.check(&model)?;
        let mut model = model;
        method.prepare(&mut model)?;
        let patterns = method.trainable_patterns(&model);
        Ok(set_trainable(model, &patterns))
    }
}
