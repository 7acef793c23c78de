//! A method's options as it declares them: each is a CLI flag with its help, how the method's
//! default shows it, and how a given value sets it. The registry (see [`crate::method`]) builds
//! the CLI's flags, `kiln methods` and the "does not take this option" check from these tables,
//! so an option is declared once, in its method's file.

use std::str::FromStr;

use crate::error::{Result, TuningError};

/// Shows an option's value in a config (its default, for `kiln methods`).
type Show<C> = Box<dyn Fn(&C) -> String + Send + Sync>;
/// Sets an option of a config from the text given on the command line.
type Set<C> = Box<dyn Fn(&mut C, &str) -> Result<()> + Send + Sync>;

/// One option of method config `C`: `--flag VALUE`, or a switch.
pub struct MethodOption<C> {
    /// The flag without its dashes (`rank`).
    pub flag: &'static str,
    /// What the value looks like (`R`, `a,b`); `None` for a switch, which takes no value and
    /// is set with `"true"`.
    pub value: Option<&'static str>,
    /// One line of help.
    pub help: &'static str,
    show: Show<C>,
    set: Set<C>,
}

impl<C> MethodOption<C> {
    /// An option taking a value of type `T`, parsed from its text.
    pub fn new<T>(
        flag: &'static str,
        value: &'static str,
        help: &'static str,
        show: impl Fn(&C) -> String + Send + Sync + 'static,
        set: impl Fn(&mut C, T) + Send + Sync + 'static,
    ) -> Self
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        Self::parsed(flag, value, help, show, move |c, text| {
            set(c, parse(flag, text)?);
            Ok(())
        })
    }

    /// An option whose text `set` reads itself (a pair, a choice that maps to a flag).
    pub fn parsed(
        flag: &'static str,
        value: &'static str,
        help: &'static str,
        show: impl Fn(&C) -> String + Send + Sync + 'static,
        set: impl Fn(&mut C, &str) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        Self {
            flag,
            value: Some(value),
            help,
            show: Box::new(show),
            set: Box::new(set),
        }
    }

    /// A switch: given means on.
    pub fn switch(
        flag: &'static str,
        help: &'static str,
        get: impl Fn(&C) -> bool + Send + Sync + 'static,
        set: impl Fn(&mut C, bool) + Send + Sync + 'static,
    ) -> Self {
        Self {
            flag,
            value: None,
            help,
            show: Box::new(move |c| if get(c) { "on" } else { "off" }.into()),
            set: Box::new(move |c, text| {
                set(c, parse(flag, text)?);
                Ok(())
            }),
        }
    }

    /// How `config` shows this option.
    pub fn show(&self, config: &C) -> String {
        (self.show)(config)
    }

    /// Sets this option of `config` from `text`.
    pub fn set(&self, config: &mut C, text: &str) -> Result<()> {
        (self.set)(config, text)
    }

    /// The option without its config type, with `default`'s value shown.
    pub fn spec(&self, method: &'static str, default: &C) -> OptionSpec {
        OptionSpec {
            method,
            flag: self.flag,
            value: self.value,
            help: self.help,
            default: self.show(default),
        }
    }
}

/// An option of a registered method, as the CLI and `kiln methods` list it.
#[derive(Debug, Clone, PartialEq)]
pub struct OptionSpec {
    /// The method that takes it.
    pub method: &'static str,
    /// The flag without its dashes.
    pub flag: &'static str,
    /// What the value looks like; `None` for a switch.
    pub value: Option<&'static str>,
    /// One line of help.
    pub help: &'static str,
    /// The method's default, as text.
    pub default: String,
}

/// `text` as a `T`, or an error naming `--flag`.
pub fn parse<T: FromStr>(flag: &'static str, text: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| TuningError::Option {
        option: flag,
        message: format!("`{text}`: {e}"),
    })
}

/// A comma-separated list of `T`s (`query,value`), or an error naming `--flag`.
pub fn parse_list<T: FromStr>(flag: &'static str, text: &str) -> Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    text.split(',').map(|item| parse(flag, item)).collect()
}

/// Shows an optional value, or `otherwise` when it is `None`.
pub fn show_or<T: ToString>(value: &Option<T>, otherwise: &str) -> String {
    value
        .as_ref()
        .map_or_else(|| otherwise.to_string(), T::to_string)
}

/// A value shown by its serde name (`relu`, `near-identity`).
pub fn show_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// Refuses a dropout rate outside `[0, 1)`, naming `option`.
pub fn probability(option: &'static str, value: f64) -> Result<()> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(TuningError::Option {
            option,
            message: format!("{value} is not a probability in [0, 1)"),
        })
    }
}
