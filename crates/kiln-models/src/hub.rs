//! Models by hub name: `--model ORG/NAME[@REVISION]` (or a legacy `NAME`) resolves to a local
//! directory through the `hf-hub` crate and the standard HF cache, as `transformers` does. A
//! local directory of that name always wins. The configuration comes from the usual environment
//! ([`HubOptions::from_env`]): `HF_HUB_CACHE` (else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`), `HF_ENDPOINT`, `HF_HUB_OFFLINE`, and the token from `HF_TOKEN` or
//! `$HF_HOME/token`. The config, the weights (safetensors preferred over `pytorch_model.bin`) and
//! the tokenizer files are downloaded when the cache lacks them; offline, only the cache is read.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{ModelError, Result};

/// The files a model directory is read from, in the order they are fetched: the config first
/// (a wrong name fails fast), then the tokenizer, then the weights.
const CONFIG: &str = "config.json";
const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
];
/// Weight files by preference: the first the repository has is fetched.
const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// Where and how models are fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// The cache's `hub` directory.
    pub cache: PathBuf,
    /// The hub's address.
    pub endpoint: String,
    /// Read the cache only.
    pub offline: bool,
    /// Bearer token for private or gated models.
    pub token: Option<String>,
    /// Show download progress bars.
    pub progress: bool,
}

impl HubOptions {
    /// The options the HF environment variables give, as `huggingface_hub` reads them.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let user = var("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            var("XDG_CACHE_HOME")
                .map_or_else(|| user.join(".cache"), PathBuf::from)
                .join("huggingface")
        });
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        Self {
            cache: var("HF_HUB_CACHE").map_or_else(|| home.join("hub"), PathBuf::from),
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            offline: var("HF_HUB_OFFLINE")
                .is_some_and(|v| matches!(v.to_lowercase().as_str(), "1" | "true" | "yes" | "on")),
            token,
            progress: true,
        }
    }
}

/// A hub model name split into repository and revision (`main` when none is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubName {
    /// `org/name`, or a legacy `name`.
    pub repo: String,
    /// Branch, tag or commit.
    pub revision: String,
}

impl HubName {
    /// `model` read as `ORG/NAME[@REVISION]` or `NAME[@REVISION]`; `None` when it cannot be one
    /// (an absolute or dotted path, more than one `/`, characters the hub does not allow).
    pub fn parse(model: &str) -> Option<Self> {
        let (repo, revision) = match model.split_once('@') {
            Some((repo, revision)) if !revision.is_empty() => (repo, revision),
            Some(_) => return None,
            None => (model, "main"),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let part_ok = |p: &&str| {
            !p.is_empty()
                && !p.starts_with('.')
                && !p.starts_with('-')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (parts.len() <= 2 && parts.iter().all(part_ok)).then(|| Self {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }
}

/// The local directory of `model`: the directory itself when it exists, else the hub model of
/// that name in the cache, downloaded first when needed (see the [module](self) documentation).
pub fn resolve(model: &Path) -> Result<PathBuf> {
    if model.is_dir() {
        return Ok(model.to_path_buf());
    }
    let text = model.to_string_lossy();
    let Some(name) = HubName::parse(&text) else {
        return Err(ModelError::Io {
            path: model.to_path_buf(),
            cause: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such model directory (nor a hub name like org/name)",
            ),
        });
    };
    resolve_hub(&name, &HubOptions::from_env()).map_err(|e| match e {
        ModelError::Hub {
            model: name,
            message,
        } => ModelError::Hub {
            model: name,
            message: format!("{message} (there is no local directory `{text}` either)"),
        },
        other => other,
    })
}

/// The cached snapshot directory of `name`, fetched with `options`.
pub fn resolve_hub(name: &HubName, options: &HubOptions) -> Result<PathBuf> {
    let hub_error = |message: String| ModelError::Hub {
        model: format!("{}@{}", name.repo, name.revision),
        message,
    };
    let repo = Repo::with_revision(name.repo.clone(), RepoType::Model, name.revision.clone());
    if options.offline {
        let cached = Cache::new(options.cache.clone()).repo(repo);
        let config = cached.get(CONFIG).ok_or_else(|| {
            hub_error(format!(
                "not in the HF cache {} and HF_HUB_OFFLINE is set: unset it to download the \
                 model, or pass a local directory",
                options.cache.display()
            ))
        })?;
        if !WEIGHT_FILES.iter().any(|f| cached.get(f).is_some()) {
            return Err(hub_error(format!(
                "the HF cache {} has its config but no weights, and HF_HUB_OFFLINE is set",
                options.cache.display()
            )));
        }
        return snapshot_dir(&config, &hub_error);
    }
    let api = ApiBuilder::from_cache(Cache::new(options.cache.clone()))
        .with_endpoint(options.endpoint.clone())
        .with_token(options.token.clone())
        .with_progress(options.progress)
        .build()
        .map_err(|e| hub_error(format!("cannot start the hub client: {e}")))?;
    let remote = api.repo(repo);
    let unreachable = |e: hf_hub::api::sync::ApiError| {
        hub_error(format!(
            "cannot fetch it from {}: {e}. Check the name (and HF_TOKEN for a private model), \
             set HF_HUB_OFFLINE=1 to use the cache only, or pass a local directory",
            options.endpoint
        ))
    };
    let listing = remote.info().map_err(unreachable)?;
    let has = |file: &str| listing.siblings.iter().any(|s| s.rfilename == file);
    if !has(CONFIG) {
        return Err(hub_error("the repository has no config.json".into()));
    }
    let config = remote.get(CONFIG).map_err(unreachable)?;
    for file in TOKENIZER_FILES.iter().filter(|f| has(f)) {
        remote.get(file).map_err(unreachable)?;
    }
    let weights = WEIGHT_FILES.iter().find(|f| has(f)).ok_or_else(|| {
        hub_error(format!(
            "the repository has none of {} (sharded checkpoints are not read yet)",
            WEIGHT_FILES.join(", ")
        ))
    })?;
    remote.get(weights).map_err(unreachable)?;
    snapshot_dir(&config, &hub_error)
}

fn snapshot_dir(config: &Path, hub_error: &dyn Fn(String) -> ModelError) -> Result<PathBuf> {
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| hub_error(format!("{}: no parent directory", config.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_names_and_local_paths_are_told_apart() {
        let name = |s| HubName::parse(s).map(|n| (n.repo, n.revision));
        assert_eq!(
            name("sentence-transformers/all-MiniLM-L6-v2"),
            Some((
                "sentence-transformers/all-MiniLM-L6-v2".into(),
                "main".into()
            ))
        );
        assert_eq!(name("gpt2@v1.0"), Some(("gpt2".into(), "v1.0".into())));
        for path in [
            "/models/bert",
            "./bert",
            "../bert",
            "a/b/c",
            "org/",
            "x@",
            "a b",
        ] {
            assert_eq!(name(path), None, "{path}");
        }
    }
}
