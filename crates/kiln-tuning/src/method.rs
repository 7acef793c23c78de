//! What every method shares: the [`Method`] trait the trainer and the run builder call, the
//! [`Registered`] trait a method file implements to join the registry, and the `methods!` macro
//! that turns the registry's lines (in [`crate::methods`]) into [`MethodConfig`], its serde form
//! and the list `kiln methods` prints.

use std::path::PathBuf;

use kiln_models::{FrozenCut, SequenceClassifier, TextTokenizer};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, TuningError};
use crate::options::{MethodOption, OptionSpec};
use crate::trainable::{ParamReport, set_trainable};

/// A transfer method: which slots it fills, which parameters it train, and what the run around
/// it needs to know (learning rate, adapters to load first, folding after training, export).
pub trait Method {
    /// Linear layers in the task head the method wants (mlp-k: `k`).
    fn head_layers(&self) -> usize {
        1
    }

    /// Virtual tokens the method adds to every input (they take positions too).
    fn virtual_tokens(&self) -> usize {
        0
    }

    /// The peak learning rate the method trains at unless the user gives one.
    fn default_lr(&self) -> f64 {
        1e-3
    }

    /// A label with the setting that tells runs of this method apart (`lora-r8`), if the name
    /// alone does not.
    fn label(&self) -> Option<String> {
        None
    }

    /// Turns words the method was given into token ids (prompt initialisation from text).
    fn tokenize(&mut self, _tokenizer: &TextTokenizer) -> Result<()> {
        Ok(())
    }

    /// Directories of saved adapters the model must hold before [`Method::prepare`] (fusion).
    fn saved_adapters(&self) -> &[PathBuf] {
        &[]
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

    /// Turns the trained model into the one that is evaluated, saved and exported (prefix
    /// tuning folds its reparameterisation away).
    fn after_fit(&self, _model: &mut SequenceClassifier) -> Result<()> {
        Ok(())
    }

    /// The name of the adapter this method trains, if any: what a run saves on its own.
    fn adapter_name(&self) -> Option<&str> {
        None
    }

    /// The HF peft `peft_type` the trained method exports as, if peft has its format.
    fn peft_type(&self) -> Option<&'static str> {
        None
    }
}

/// A method in the registry: its name, one line of summary, its options and defaults.
pub trait Registered:
    Method + Default + Clone + PartialEq + std::fmt::Debug + Serialize + DeserializeOwned + 'static
{
    /// The registry name (`partial-k`), also the `"method"` tag of its serde form.
    const NAME: &'static str;
    /// One line for `kiln methods`, with the paper.
    const SUMMARY: &'static str;
    /// What the method needs beyond its defaults, if anything (fusion: trained adapters); such a
    /// method cannot run in `kiln compare`, which gives every method its defaults.
    const NEEDS: Option<&'static str> = None;

    /// The options the method takes.
    fn options() -> Vec<MethodOption<Self>> {
        Vec::new()
    }
}

/// One line of `kiln methods`.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    pub name: &'static str,
    pub summary: &'static str,
    /// Its options, with the defaults shown.
    pub options: Vec<OptionSpec>,
    /// What it needs beyond its defaults (see [`Registered::NEEDS`]).
    pub needs: Option<&'static str>,
    /// Its default learning rate ([`Method::default_lr`]); `None` for a method that does not
    /// train with `kiln train`.
    pub default_lr: Option<f64>,
    /// The command that runs it when `kiln train` does not (`kiln icl`).
    pub command: Option<&'static str>,
}

impl MethodInfo {
    /// The options as `kiln methods` shows them: `--rank R (8) --alpha A (16)`.
    pub fn options_line(&self) -> String {
        self.options
            .iter()
            .map(|o| match o.value {
                Some(value) => format!("--{} {value} ({})", o.flag, o.default),
                None => format!("--{} ({})", o.flag, o.default),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A method with a command of its own instead of `kiln train`.
pub(crate) struct OwnCommand {
    pub name: &'static str,
    pub summary: &'static str,
    pub command: &'static str,
    /// Why `kiln train` refuses it.
    pub refusal: &'static str,
}

/// In-context learning trains nothing and FPT trains on non-language tasks: both have their own
/// commands (and FPT its own config, [`crate::methods::FptTuningConfig`]).
const OWN_COMMANDS: &[OwnCommand] = &[
    OwnCommand {
        name: "icl",
        summary: "in-context learning: k labelled demonstrations in a GPT-2 prompt, label words \
                  scored, nothing trains (Brown et al. 2020)",
        command: "kiln icl --shots 4 --template T --label-words a,b --text-words 40",
        refusal: "in-context learning trains nothing: run `kiln icl` (or list `icl` in `kiln \
                  compare --methods`)",
    },
    OwnCommand {
        name: "fpt",
        summary: "Frozen Pretrained Transformer on non-language tasks: new input and output \
                  layers, layer norms and positions train (Lu et al. 2021)",
        command: "kiln fpt --freeze-input --freeze-output --freeze-norms --freeze-positions \
                  --train-attention --train-feed-forward --full",
        refusal: "fpt trains on non-language tasks (bit memory, bit XOR, ListOps, images): run \
                  `kiln fpt`",
    },
];

/// The option specs of method `C` with its defaults shown.
pub(crate) fn specs<C: Registered>() -> Vec<OptionSpec> {
    let default = C::default();
    C::options()
        .iter()
        .map(|o| o.spec(C::NAME, &default))
        .collect()
}

/// Sets option `flag` of `config` from `text`; an option the method does not take is an error.
pub(crate) fn set_option<C: Registered>(config: &mut C, flag: &str, text: &str) -> Result<()> {
    let options = C::options();
    let Some(option) = options.iter().find(|o| o.flag == flag) else {
        let known = registry()
            .into_iter()
            .flat_map(|m| m.options)
            .find(|o| o.flag == flag);
        return Err(match known {
            Some(o) => TuningError::Option {
                option: o.flag,
                message: format!("method `{}` does not take this option", C::NAME),
            },
            None => TuningError::UnknownOption(flag.to_string()),
        });
    };
    option.set(config, text)
}

/// The registry's lines (see `for_each_method!` in [`crate::methods`]) become the method
/// modules, [`MethodConfig`] (one variant per method, serialised as `{"method": NAME, ...the
/// config's fields}`), its dispatch, and [`registry`].
macro_rules! methods {
    ($($variant:ident => $module:ident :: $config:ident),* $(,)?) => {
        $(
            mod $module;
            pub use $module::$config;
        )*

        /// A registered method with its settings; serialised into run directories as
        /// `{"method": "lora", "rank": 8, ...}`.
        #[derive(Debug, Clone, PartialEq)]
        pub enum MethodConfig {
            $(
                #[doc = concat!("`", stringify!($config), "`")]
                $variant($config),
            )*
        }

        impl MethodConfig {
            /// The registry name (`partial-k`), without options.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => <$config as Registered>::NAME,)*
                }
            }

            /// The method behind the config.
            pub fn method(&self) -> &dyn Method {
                match self {
                    $(Self::$variant(c) => c,)*
                }
            }

            /// The method behind the config, to change.
            pub fn method_mut(&mut self) -> &mut dyn Method {
                match self {
                    $(Self::$variant(c) => c,)*
                }
            }

            /// The method called `name` with its defaults.
            pub fn default_named(name: &str) -> Option<Self> {
                $(
                    if name == <$config as Registered>::NAME {
                        return Some(Self::$variant(<$config>::default()));
                    }
                )*
                None
            }

            /// Sets one option from its command-line text (`"rank"`, `"8"`).
            pub fn set_option(&mut self, flag: &str, text: &str) -> Result<()> {
                match self {
                    $(Self::$variant(c) => set_option(c, flag, text),)*
                }
            }

            pub(crate) fn serialize_tagged<S: serde::Serializer>(
                &self,
                serializer: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                match self {
                    $(Self::$variant(config) => Tagged {
                        method: <$config as Registered>::NAME,
                        config,
                    }
                    .serialize(serializer),)*
                }
            }

            pub(crate) fn from_json(name: &str, fields: serde_json::Value) -> Option<serde_json::Result<Self>> {
                $(
                    if name == <$config as Registered>::NAME {
                        return Some(serde_json::from_value(fields).map(Self::$variant));
                    }
                )*
                None
            }
        }

        /// Every method, in the order `kiln methods` lists them: the registered ones, then those
        /// with a command of their own.
        pub fn registry() -> Vec<MethodInfo> {
            let mut methods = vec![
                $(MethodInfo {
                    name: <$config as Registered>::NAME,
                    summary: <$config as Registered>::SUMMARY,
                    options: specs::<$config>(),
                    needs: <$config as Registered>::NEEDS,
                    default_lr: Some(<$config>::default().default_lr()),
                    command: None,
                },)*
            ];
            methods.extend(crate::method::own_commands());
            methods
        }
    };
}
pub(crate) use methods;

/// The methods with their own commands, as registry lines.
pub(crate) fn own_commands() -> impl Iterator<Item = MethodInfo> {
    OWN_COMMANDS.iter().map(|c| MethodInfo {
        name: c.name,
        summary: c.summary,
        options: Vec::new(),
        needs: None,
        default_lr: None,
        command: Some(c.command),
    })
}

pub use crate::methods::{MethodConfig, registry};

impl MethodConfig {
    /// The method called `name` with `options` (flag, text) set over its defaults, in order. An
    /// option the method does not take is an error, not silently ignored.
    pub fn parse(name: &str, options: &[(&str, &str)]) -> Result<Self> {
        if let Some(own) = OWN_COMMANDS.iter().find(|c| c.name == name) {
            return Err(TuningError::Option {
                option: "method",
                message: own.refusal.into(),
            });
        }
        let mut config =
            Self::default_named(name).ok_or_else(|| TuningError::UnknownMethod(name.into()))?;
        for (flag, text) in options {
            config.set_option(flag, text)?;
        }
        Ok(config)
    }

    /// A short label with the option that tells runs apart: `partial-2`, `mlp-2`, `lora-r8`.
    pub fn label(&self) -> String {
        self.method()
            .label()
            .unwrap_or_else(|| self.name().to_string())
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

/// A config with its method's name in front, as serde's internally tagged enums write it.
#[derive(Serialize)]
pub(crate) struct Tagged<'a, T> {
    pub method: &'static str,
    #[serde(flatten)]
    pub config: &'a T,
}

impl Serialize for MethodConfig {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        self.serialize_tagged(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for MethodConfig {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let mut value = serde_json::Value::deserialize(deserializer)?;
        let name = value
            .as_object_mut()
            .and_then(|fields| fields.remove("method"))
            .ok_or_else(|| D::Error::missing_field("method"))?;
        let name = name
            .as_str()
            .ok_or_else(|| D::Error::custom("`method` must be a method name"))?
            .to_string();
        match Self::from_json(&name, value) {
            Some(parsed) => parsed.map_err(D::Error::custom),
            None => Err(D::Error::custom(format!(
                "unknown method `{name}`; `kiln methods` lists them"
            ))),
        }
    }
}
