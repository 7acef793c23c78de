//! What every method shares, and the registry that maps names to their configs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use kiln_models::{Activation, AdapterInit, FrozenCut, SequenceClassifier};

use crate::adapters::{BOTTLENECK_FLAGS, BottleneckOptions};
use crate::error::{Result, TuningError};
use crate::methods::{
    AdapterDropConfig, BitFitConfig, FullConfig, FusionConfig, HoulsbyConfig, LinearProbeConfig,
    LoraConfig, MamConfig, MlpConfig, PTuningConfig, PTuningV2Config, ParallelConfig,
    PartialConfig, PfeifferConfig, PrefixTuningConfig, PromptTuningConfig, SideTuningConfig,
};
use crate::prompts::PromptInit;
use crate::trainable::{ParamReport, set_trainable};

/// A transfer method: which slots it fills and which parameters it trains.
pub trait Method {
    /// Linear layers in the task head the method wants (mlp-k: `k`).
    fn head_layers(&self) -> usize {
        1
    }

    /// Virtual tokens the method adds to every input (they take positions too).
    fn virtual_tokens(&self) -> usize {
        0
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

    /// Where the frozen part ends when everything the method trains sits above it, so that the
    /// trainer can compute that part once and cache it; `None` when trained parameters reach
    /// into the input side of the backbone.
    fn frozen_cut(&self, _model: &SequenceClassifier) -> Option<FrozenCut> {
        None
    }
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
    Houlsby(HoulsbyConfig),
    Pfeiffer(PfeifferConfig),
    Parallel(ParallelConfig),
    Fusion(FusionConfig),
    AdapterDrop(AdapterDropConfig),
    Mam(MamConfig),
    Side(SideTuningConfig),
    Prompt(PromptTuningConfig),
    Prefix(PrefixTuningConfig),
    PTuning(PTuningConfig),
    PTuningV2(PTuningV2Config),
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
    MethodInfo {
        name: "houlsby",
        summary: "bottleneck adapters after attention and feed-forward, layer norms train (Houlsby et al. 2019)",
        options: "--reduction-factor 16 | --bottleneck M, --adapter-activation swish, --adapter-init near-identity, --train-norms true, --adapter-name",
    },
    MethodInfo {
        name: "pfeiffer",
        summary: "one bottleneck adapter after each feed-forward (Pfeiffer et al. 2021)",
        options: "--reduction-factor 16 | --bottleneck M, --adapter-activation relu, --adapter-init near-identity, --train-norms false, --adapter-name",
    },
    MethodInfo {
        name: "parallel",
        summary: "scaled adapter beside each feed-forward (He et al. 2022); --scale 1 is unscaled",
        options: "--scale 4, --reduction-factor 2 | --bottleneck M, --adapter-activation relu, --adapter-init lora, --train-norms false, --adapter-name",
    },
    MethodInfo {
        name: "fusion",
        summary: "AdapterFusion: attention over frozen trained adapters (Pfeiffer et al. 2021)",
        options: "--adapters DIR,DIR (saved adapters, e.g. RUN/adapter)",
    },
    MethodInfo {
        name: "adapter-drop",
        summary: "Pfeiffer adapters dropped from the lowest layers, robust training (Rücklé et al. 2021)",
        options: "--drop-layers N (L/2, inference) --drop-max N (L-1, training), Pfeiffer's adapter options",
    },
    MethodInfo {
        name: "mam",
        summary: "prefix tuning plus a scaled parallel adapter (He et al. 2022)",
        options: "--prefix-len 30, --scale 4, --reduction-factor 2 | --bottleneck M, --adapter-activation relu, --adapter-init lora, --adapter-name",
    },
    MethodInfo {
        name: "side",
        summary: "side-tuning: frozen backbone blended with a small side network (Zhang et al. 2020)",
        options: "--side-width W (h) --side-alpha 0.5 --side-alpha-end A (fixed)",
    },
    MethodInfo {
        name: "prompt",
        summary: "prompt tuning: trained virtual tokens in front of the text (Lester et al. 2021)",
        options: "--prompt-len 20, --prompt-init-text TEXT (sampled vocabulary), \
                  --prompt-at-start (before [CLS], peft's layout)",
    },
    MethodInfo {
        name: "prefix",
        summary: "prefix tuning: MLP-reparameterised key/value prefixes, folded after training (Li and Liang 2021)",
        options: "--prefix-len 20 --prefix-hidden 512, --adapter-name, --prefix-positions (GPT-2: \
                  peft's layout)",
    },
    MethodInfo {
        name: "p-tuning",
        summary: "P-tuning: virtual tokens from a prompt encoder, placed by a template (Liu et al. 2021)",
        options: "--template 5,5 (before,after) --prompt-encoder lstm|mlp, --prompt-init-text TEXT",
    },
    MethodInfo {
        name: "p-tuning-v2",
        summary: "P-tuning v2: deep prompts in every layer's attention (Liu et al. 2022; VPT-deep)",
        options: "--prefix-len 20, --adapter-name, --prefix-positions (GPT-2: peft's layout)",
    },
    MethodInfo {
        name: "icl",
        summary: "in-context learning: k labelled demonstrations in a GPT-2 prompt, label words scored, nothing trains (Brown et al. 2020); `kiln icl`",
        options: "--shots 4 --template T --label-words a,b --text-words 40",
    },
    MethodInfo {
        name: "fpt",
        summary: "Frozen Pretrained Transformer on non-language tasks: new input and output layers, layer norms and positions train (Lu et al. 2021); `kiln fpt`",
        options: "--freeze-input --freeze-output --freeze-norms --freeze-positions --train-attention --train-feed-forward --full",
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
    pub bottleneck: Option<usize>,
    pub reduction_factor: Option<usize>,
    pub adapter_activation: Option<Activation>,
    pub adapter_init: Option<AdapterInit>,
    pub train_norms: Option<bool>,
    pub adapter_name: Option<String>,
    pub scale: Option<f64>,
    pub prefix_len: Option<usize>,
    pub adapters: Option<Vec<PathBuf>>,
    pub drop_layers: Option<usize>,
    pub drop_max: Option<usize>,
    pub side_width: Option<usize>,
    pub side_alpha: Option<f64>,
    pub side_alpha_end: Option<f64>,
    pub prompt_len: Option<usize>,
    pub prompt_init_text: Option<String>,
    pub prompt_at_start: Option<bool>,
    /// The token ids of `prompt_init_text`, filled in by the caller that has the tokenizer.
    pub prompt_init_ids: Vec<u32>,
    pub template: Option<(usize, usize)>,
    pub prompt_encoder: Option<String>,
    pub prefix_hidden: Option<usize>,
    pub prefix_positions: Option<bool>,
}

impl MethodOptions {
    /// Names of the options that were given, as CLI flags.
    fn given(&self) -> Vec<&'static str> {
        [
            ("k", self.k.is_some()),
            ("rank", self.rank.is_some()),
            ("alpha", self.alpha.is_some()),
            ("lora-dropout", self.lora_dropout.is_some()),
            ("targets", self.targets.is_some()),
            ("bottleneck", self.bottleneck.is_some()),
            ("reduction-factor", self.reduction_factor.is_some()),
            ("adapter-activation", self.adapter_activation.is_some()),
            ("adapter-init", self.adapter_init.is_some()),
            ("train-norms", self.train_norms.is_some()),
            ("adapter-name", self.adapter_name.is_some()),
            ("scale", self.scale.is_some()),
            ("prefix-len", self.prefix_len.is_some()),
            ("adapters", self.adapters.is_some()),
            ("drop-layers", self.drop_layers.is_some()),
            ("drop-max", self.drop_max.is_some()),
            ("side-width", self.side_width.is_some()),
            ("side-alpha", self.side_alpha.is_some()),
            ("side-alpha-end", self.side_alpha_end.is_some()),
            ("prompt-len", self.prompt_len.is_some()),
            ("prompt-init-text", self.prompt_init_text.is_some()),
            ("prompt-at-start", self.prompt_at_start.is_some()),
            ("template", self.template.is_some()),
            ("prompt-encoder", self.prompt_encoder.is_some()),
            ("prefix-hidden", self.prefix_hidden.is_some()),
            ("prefix-positions", self.prefix_positions.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }
}

impl MethodOptions {
    /// How the prompt methods initialise their virtual tokens.
    pub fn prompt_init(&self) -> PromptInit {
        PromptInit {
            text: self.prompt_init_text.clone(),
            ids: self.prompt_init_ids.clone(),
        }
    }
}

impl MethodConfig {
    /// The method called `name` with `options` applied over its defaults. An option the method
    /// does not take is an error, not silently ignored.
    pub fn from_options(name: &str, options: &MethodOptions) -> Result<Self> {
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            BOTTLENECK_FLAGS.iter().chain(extra).copied().collect()
        };
        let (config, accepted): (Self, Vec<&str>) = match name {
            "full" => (Self::Full(FullConfig {}), vec![]),
            "linear-probe" => (Self::LinearProbe(LinearProbeConfig {}), vec![]),
            "partial-k" => {
                let mut c = PartialConfig::default();
                c.k = options.k.unwrap_or(c.k);
                (Self::PartialK(c), vec!["k"])
            }
            "mlp-k" => {
                let mut c = MlpConfig::default();
                c.k = options.k.unwrap_or(c.k);
                (Self::MlpK(c), vec!["k"])
            }
            "bitfit" => (Self::Bitfit(BitFitConfig {}), vec![]),
            "lora" => {
                let mut c = LoraConfig::default();
                c.rank = options.rank.unwrap_or(c.rank);
                c.alpha = options.alpha.unwrap_or(c.alpha);
                c.dropout = options.lora_dropout.unwrap_or(c.dropout);
                c.targets = options.targets.clone();
                (
                    Self::Lora(c),
                    vec!["rank", "alpha", "lora-dropout", "targets"],
                )
            }
            "houlsby" => (
                Self::Houlsby(HoulsbyConfig::with_options(options)),
                with(&[]),
            ),
            "pfeiffer" => (
                Self::Pfeiffer(PfeifferConfig::with_options(options)),
                with(&[]),
            ),
            "parallel" => (
                Self::Parallel(ParallelConfig::with_options(options)),
                with(&["scale"]),
            ),
            "fusion" => (
                Self::Fusion(FusionConfig {
                    adapters: options.adapters.clone().unwrap_or_default(),
                }),
                vec!["adapters"],
            ),
            "adapter-drop" => (
                Self::AdapterDrop(AdapterDropConfig::with_options(options)),
                with(&["drop-layers", "drop-max"]),
            ),
            "mam" => (
                Self::Mam(MamConfig::with_options(options)),
                with(&["scale", "prefix-len"]),
            ),
            "side" => (
                Self::Side(SideTuningConfig::with_options(options)),
                vec!["side-width", "side-alpha", "side-alpha-end"],
            ),
            "prompt" => (
                Self::Prompt(PromptTuningConfig::with_options(options)),
                vec!["prompt-len", "prompt-init-text", "prompt-at-start"],
            ),
            "prefix" => (
                Self::Prefix(PrefixTuningConfig::with_options(options)),
                vec![
                    "prefix-len",
                    "prefix-hidden",
                    "adapter-name",
                    "prefix-positions",
                ],
            ),
            "p-tuning" => (
                Self::PTuning(PTuningConfig::with_options(options)?),
                vec!["template", "prompt-encoder", "prompt-init-text"],
            ),
            "p-tuning-v2" => (
                Self::PTuningV2(PTuningV2Config::with_options(options)),
                vec!["prefix-len", "adapter-name", "prefix-positions"],
            ),
            "icl" => {
                return Err(TuningError::Option {
                    option: "method",
                    message: "in-context learning trains nothing: run `kiln icl` (or list `icl` \
                              in `kiln compare --methods`)"
                        .into(),
                });
            }
            "fpt" => {
                return Err(TuningError::Option {
                    option: "method",
                    message: "fpt trains on non-language tasks (bit memory, bit XOR, ListOps, \
                              images): run `kiln fpt`"
                        .into(),
                });
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
            Self::Houlsby(_) => "houlsby",
            Self::Pfeiffer(_) => "pfeiffer",
            Self::Parallel(_) => "parallel",
            Self::Fusion(_) => "fusion",
            Self::AdapterDrop(_) => "adapter-drop",
            Self::Mam(_) => "mam",
            Self::Side(_) => "side",
            Self::Prompt(_) => "prompt",
            Self::Prefix(_) => "prefix",
            Self::PTuning(_) => "p-tuning",
            Self::PTuningV2(_) => "p-tuning-v2",
        }
    }

    /// A short label with the option that tells runs apart: `partial-2`, `mlp-2`, `lora-r8`.
    pub fn label(&self) -> String {
        match self {
            Self::PartialK(c) => format!("partial-{}", c.k),
            Self::MlpK(c) => format!("mlp-{}", c.k),
            Self::Lora(c) => format!("lora-r{}", c.rank),
            Self::Parallel(c) => format!("parallel-s{}", c.scale),
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
            Self::Houlsby(c) => c,
            Self::Pfeiffer(c) => c,
            Self::Parallel(c) => c,
            Self::Fusion(c) => c,
            Self::AdapterDrop(c) => c,
            Self::Mam(c) => c,
            Self::Side(c) => c,
            Self::Prompt(c) => c,
            Self::Prefix(c) => c,
            Self::PTuning(c) => c,
            Self::PTuningV2(c) => c,
        }
    }

    /// The name of the adapter this method trains, if any: what `kiln train` saves on its own.
    /// Prefix tuning's adapter exists once its encoder is folded.
    pub fn adapter_name(&self) -> Option<&str> {
        fn bottleneck(options: &BottleneckOptions) -> &str {
            &options.name
        }
        match self {
            Self::Houlsby(c) => Some(bottleneck(&c.adapter)),
            Self::Pfeiffer(c) => Some(bottleneck(&c.adapter)),
            Self::Parallel(c) => Some(bottleneck(&c.adapter)),
            Self::AdapterDrop(c) => Some(bottleneck(&c.adapter)),
            Self::Mam(c) => Some(bottleneck(&c.adapter)),
            Self::Prefix(c) => Some(&c.name),
            Self::PTuningV2(c) => Some(&c.name),
            _ => None,
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
