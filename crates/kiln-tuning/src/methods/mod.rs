//! The method registry: one file per method, one line per method below. A line names the
//! [`MethodConfig`] variant and the method's config, which implements [`Registered`] (name,
//! summary, options) and [`Method`] in its own file. Nothing else in the workspace lists
//! methods: the CLI's flags, `kiln methods`, `kiln compare` and the tests read [`registry`].

use kiln_models::SequenceClassifier;
use serde::Serialize;

use crate::error::{Result, TuningError};
use crate::method::{Method, MethodInfo, Registered};
use crate::options::OptionSpec;
use crate::trainable::{ParamReport, set_trainable};

/// A method with a command of its own instead of `kiln train`.
struct OwnCommand {
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
fn specs<C: Registered>() -> Vec<OptionSpec> {
    let default = C::default();
    C::options()
        .iter()
        .map(|o| o.spec(C::NAME, &default))
        .collect()
}

/// Sets option `flag` of `config` from `text`; an option the method does not take is an error.
fn set_option<C: Registered>(config: &mut C, flag: &str, text: &str) -> Result<()> {
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

/// The registry's lines (see [`for_each_method!`](crate::for_each_method)) become the method
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
            methods.extend(own_commands());
            methods
        }
    };
}

/// The methods with their own commands, as registry lines.
fn own_commands() -> impl Iterator<Item = MethodInfo> {
    OWN_COMMANDS.iter().map(|c| MethodInfo {
        name: c.name,
        summary: c.summary,
        options: Vec::new(),
        needs: None,
        default_lr: None,
        command: Some(c.command),
    })
}

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
        let mut config = Self::default_named(name).ok_or_else(|| TuningError::UnknownMethod {
            name: name.into(),
            suggestion: nearest_method(name),
        })?;
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

/// The registered method nearest to `name`: the same name in other case, or one at most two
/// edits away (`LoRA`, `lroa` -> `lora`).
pub fn nearest_method(name: &str) -> Option<&'static str> {
    let wanted = name.to_lowercase();
    let names: Vec<&'static str> = registry().into_iter().map(|m| m.name).collect();
    if let Some(&same) = names.iter().find(|n| **n == wanted) {
        return Some(same);
    }
    names
        .into_iter()
        .map(|n| (edit_distance(n, &wanted), n))
        .filter(|&(d, _)| d <= 2)
        .min()
        .map(|(_, n)| n)
}

/// Edit distance between `a` and `b` counting a swap of neighbours as one edit (optimal string
/// alignment), the commonest typo: `lroa` is one edit from `lora`, two from `loha`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// A config with its method's name in front, as serde's internally tagged enums write it.
#[derive(Serialize)]
struct Tagged<'a, T> {
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
            Ia3 => ia3::Ia3Config,
            Loha => loha::LohaConfig,
            Lokr => lokr::LokrConfig,
            Vera => vera::VeraConfig,
            Oft => oft::OftConfig,
            AdaLora => adalora::AdaLoraConfig,
            Houlsby => houlsby::HoulsbyConfig,
            Pfeiffer => pfeiffer::PfeifferConfig,
            Compacter => compacter::CompacterConfig,
            CompacterPlusPlus => compacter_plus_plus::CompacterPlusPlusConfig,
            Parallel => parallel::ParallelConfig,
            Fusion => fusion::FusionConfig,
            AdapterDrop => adapter_drop::AdapterDropConfig,
            Mam => mam::MamConfig,
            UniPelt => unipelt::UniPeltConfig,
            Side => side::SideTuningConfig,
            LoReft => loreft::LoReftConfig,
            Prompt => prompt::PromptTuningConfig,
            Prefix => prefix::PrefixTuningConfig,
            PTuning => p_tuning::PTuningConfig,
            PTuningV2 => p_tuning_v2::PTuningV2Config,
        }
    };
}

crate::for_each_method!(methods);
