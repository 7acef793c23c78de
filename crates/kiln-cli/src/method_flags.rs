//! `--method NAME` and every method option as a flag, built from the registry
//! ([`kiln_tuning::registry`]) at run time: a method's options are declared once, in its file,
//! and the CLI, its help and `kiln methods` follow.

use std::collections::BTreeMap;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

use kiln_tuning::{MethodConfig, OptionSpec, registry};

/// The method and the options given for it, in registry order.
#[derive(Debug, Clone, Default)]
pub struct MethodFlags {
    pub method: String,
    /// `(flag, text)` of each option given.
    pub options: Vec<(String, String)>,
}

impl MethodFlags {
    /// The method with its options set over its defaults.
    pub fn config(&self) -> kiln_tuning::Result<MethodConfig> {
        let options: Vec<(&str, &str)> = self
            .options
            .iter()
            .map(|(flag, text)| (flag.as_str(), text.as_str()))
            .collect();
        MethodConfig::parse(&self.method, &options)
    }
}

/// Every option of every registered method, one entry per flag, in registry order.
fn flags() -> Vec<(&'static str, Vec<OptionSpec>)> {
    let mut order = Vec::new();
    let mut by_flag: BTreeMap<&'static str, Vec<OptionSpec>> = BTreeMap::new();
    for option in registry().into_iter().flat_map(|m| m.options) {
        if !by_flag.contains_key(option.flag) {
            order.push(option.flag);
        }
        by_flag.entry(option.flag).or_default().push(option);
    }
    order
        .into_iter()
        .map(|flag| (flag, by_flag.remove(flag).unwrap_or_default()))
        .collect()
}

/// One line of help for a flag several methods may share: their help texts, then each
/// method's default, methods with the same default together (`[houlsby, pfeiffer: 16; mam: 2]`).
fn help(specs: &[OptionSpec]) -> String {
    let mut texts: Vec<&str> = Vec::new();
    let mut defaults: Vec<(&str, Vec<&str>)> = Vec::new();
    for spec in specs {
        if !texts.contains(&spec.help) {
            texts.push(spec.help);
        }
        match defaults.iter_mut().find(|(d, _)| *d == spec.default) {
            Some((_, methods)) => methods.push(spec.method),
            None => defaults.push((&spec.default, vec![spec.method])),
        }
    }
    let defaults: Vec<String> = defaults
        .iter()
        .map(|(default, methods)| format!("{}: {default}", methods.join(", ")))
        .collect();
    let text = texts.join("; ");
    let mut chars = text.chars();
    let capitalised: String = chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default();
    format!("{capitalised} [{}]", defaults.join("; "))
}

/// Whether an option's value is a comma-separated list (`a,b`, `DIR,DIR`).
fn is_list(value: &str) -> bool {
    value.contains(',')
}

impl Args for MethodFlags {
    fn augment_args(cmd: Command) -> Command {
        let cmd = cmd.arg(
            Arg::new("method")
                .long("method")
                .required(true)
                .value_name("METHOD")
                .help("Transfer method; `kiln methods` lists them with their options"),
        );
        flags().into_iter().fold(cmd, |cmd, (flag, specs)| {
            let arg = Arg::new(flag).long(flag).help(help(&specs));
            cmd.arg(match specs[0].value {
                // A list may come in several flags (`--targets query --targets value`).
                Some(value) if is_list(value) => arg.value_name(value).action(ArgAction::Append),
                Some(value) => arg.value_name(value).action(ArgAction::Set),
                None => arg.action(ArgAction::SetTrue),
            })
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for MethodFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let method = matches
            .get_one::<String>("method")
            .cloned()
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::MissingRequiredArgument))?;
        let mut options = Vec::new();
        for (flag, specs) in flags() {
            if specs[0].value.is_none() {
                if matches.get_flag(flag) {
                    options.push((flag.to_string(), "true".to_string()));
                }
            } else if let Some(texts) = matches.get_many::<String>(flag) {
                let texts: Vec<&str> = texts.map(String::as_str).collect();
                options.push((flag.to_string(), texts.join(",")));
            }
        }
        Ok(Self { method, options })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// `kiln methods`: every method with its summary, learning rate and options.
pub fn print_methods() {
    let methods = registry();
    let width = methods.iter().map(|m| m.name.len()).max().unwrap_or(0);
    for method in methods {
        let mut line = format!("{:width$}  {}", method.name, method.summary);
        if let Some(command) = method.command {
            line.push_str(&format!("; `{command}`"));
        }
        if let Some(lr) = method.default_lr {
            line.push_str(&format!(" (lr {lr:e})"));
        }
        let options = method.options_line();
        if !options.is_empty() {
            line.push_str(&format!("  [{options}]"));
        }
        println!("{line}");
    }
}
