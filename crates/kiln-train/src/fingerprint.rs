//! What a run was made from, as SHA-256 digests: the model directory's config, weights and
//! tokenizer files, and every file of the task. `run.json` records them; reloading a run
//! (eval, predict, export, merge) compares them with the files as they are now and refuses a
//! changed base model or task, naming what changed, unless the caller allows it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use kiln_data::TaskSpec;

use crate::error::{Result, TrainError};

/// The files of a model directory a run reads.
const MODEL_FILES: [&str; 9] = [
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
];

/// SHA-256 (hex) of each input file, by name: model files relative to the model directory,
/// task files by their absolute paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprints {
    /// The model directory's files.
    pub model: BTreeMap<String, String>,
    /// The task's files.
    pub task: BTreeMap<String, String>,
}

impl Fingerprints {
    /// The digests of `model_dir`'s files and of `task`'s.
    pub fn of(model_dir: &Path, task: &TaskSpec) -> Result<Self> {
        Ok(Self {
            model: model_files(model_dir)?,
            task: task_files(task)?,
        })
    }
}

/// Digests of the model directory's files that exist.
pub fn model_files(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut digests = BTreeMap::new();
    for name in MODEL_FILES {
        let path = dir.join(name);
        if path.is_file() {
            digests.insert(name.to_string(), digest(&path)?);
        }
    }
    Ok(digests)
}

/// Digests of every file of the task: its file, or every file under its directory, and its
/// held-out files.
pub fn task_files(task: &TaskSpec) -> Result<BTreeMap<String, String>> {
    let mut digests = BTreeMap::new();
    for root in std::iter::once(&task.path)
        .chain(&task.validation)
        .chain(&task.test)
    {
        let mut files = Vec::new();
        collect_files(root, &mut files)?;
        for file in files {
            digests.insert(file.display().to_string(), digest(&file)?);
        }
    }
    Ok(digests)
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_file() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    if !path.is_dir() {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| TrainError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    entries.sort();
    for entry in entries {
        collect_files(&entry, files)?;
    }
    Ok(())
}

/// SHA-256 of a file, as lowercase hex.
pub fn digest(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|e| TrainError::io(path, e))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// What differs between `recorded` and `now`: `name changed`, `name is gone`, `name is new`.
pub fn changes(
    what: &str,
    recorded: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut changes = Vec::new();
    for (name, digest) in recorded {
        match now.get(name) {
            Some(current) if current == digest => {}
            Some(_) => changes.push(format!("{what} file {name} changed")),
            None => changes.push(format!("{what} file {name} is gone")),
        }
    }
    for name in now.keys().filter(|n| !recorded.contains_key(*n)) {
        changes.push(format!("{what} file {name} is new"));
    }
    changes
}
