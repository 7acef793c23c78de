//! Reading a HF `config.json` and telling which backbone it describes.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{ModelError, Result};

/// Parses `path` as JSON into `T`, naming the file and the serde error on failure.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|cause| ModelError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The backbone families kiln loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// BERT (`model_type` `bert`).
    Bert,
    /// GPT-2 (`model_type` `gpt2`).
    Gpt2,
    /// Monarch Mixer BERT: `model_type` `bert` with the M2 fields (`hyena_filter_order`, ...).
    M2Bert,
}

#[derive(serde::Deserialize)]
struct ModelTypeOnly {
    model_type: Option<String>,
    #[serde(default)]
    monarch_mixer_sequence_mixing: Option<bool>,
    #[serde(default)]
    hyena_filter_order: Option<usize>,
}

impl ModelKind {
    /// How a classifier reads this family's token states by default: the mean for the
    /// encoders, the last token for GPT-2 (which sees only what came before).
    pub fn default_readout(self) -> crate::states::Readout {
        match self {
            ModelKind::Bert | ModelKind::M2Bert => crate::states::Readout::Mean,
            ModelKind::Gpt2 => crate::states::Readout::Last,
        }
    }

    /// Reads `model_type` from `dir/config.json`.
    pub fn detect(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let header: ModelTypeOnly = read_json(&path)?;
        match header.model_type.as_deref() {
            Some("bert")
                if header.monarch_mixer_sequence_mixing == Some(true)
                    || header.hyena_filter_order.is_some() =>
            {
                Ok(ModelKind::M2Bert)
            }
            Some("bert") => Ok(ModelKind::Bert),
            Some("gpt2") => Ok(ModelKind::Gpt2),
            Some(other) => Err(ModelError::UnsupportedModel {
                path,
                model_type: other.to_string(),
            }),
            None => Err(ModelError::Config {
                path,
                message: "missing field `model_type`".into(),
            }),
        }
    }
}

/// Rejects a config value that cannot describe a model, naming the field.
/// Every named size at least 1, and the weights (`params` floats) small enough for this
/// machine's memory: checked before anything is allocated, so a broken config is an error, not
/// an out-of-bounds panic or an allocation abort.
pub(crate) fn require_sizes(path: &Path, sizes: &[(&str, usize)], params: u128) -> Result<()> {
    for (name, size) in sizes {
        require(
            path,
            *size > 0,
            format!("{name} must be at least 1 (got {size})"),
        )?;
    }
    let bytes = params.saturating_mul(4);
    let limit = physical_memory_bytes().unwrap_or(1 << 40);
    require(
        path,
        bytes <= limit,
        format!(
            "its {params} parameters would need {:.1} GiB as f32, more than this machine's {:.1} \
             GiB of memory",
            bytes as f64 / f64::from(1 << 30),
            limit as f64 / f64::from(1 << 30)
        ),
    )
}

/// `MemTotal` from `/proc/meminfo`, where there is one.
pub fn physical_memory_bytes() -> Option<u128> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub(crate) fn require(path: &Path, ok: bool, message: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(ModelError::Config {
            path: path.to_path_buf(),
            message: message.into(),
        })
    }
}
