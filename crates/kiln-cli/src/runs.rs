//! Runs of `kiln train` in processes of their own, as `kiln study` and `kiln compare` launch
//! them: each run is then reproducible from its seed and its peak memory is its own. A run whose
//! `summary.json` exists is read, not repeated; one that was interrupted is resumed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use kiln_models::DeviceChoice;
use kiln_train::trainer::read_json;

use kiln_train::run::RunSummary;

use crate::train::TaskArgs;

/// Launches `kiln train` runs of one model on one task.
pub struct Launcher<'a> {
    exe: PathBuf,
    device: DeviceChoice,
    model: &'a Path,
    task: &'a TaskArgs,
}

impl<'a> Launcher<'a> {
    pub fn new(device: DeviceChoice, model: &'a Path, task: &'a TaskArgs) -> Result<Self> {
        Ok(Self {
            exe: std::env::current_exe().context("finding the kiln executable")?,
            device,
            model,
            task,
        })
    }

    /// The summary of the run in `dir`: trained now with `options` (method and trainer flags),
    /// resumed, or read back when it finished before.
    pub fn train(&self, options: &[String], dir: &Path) -> Result<RunSummary> {
        self.launch("train", options, dir)
    }

    /// In-context learning (`kiln icl`) on the same model and task: nothing trains, so an
    /// unfinished run starts again.
    pub fn icl(&self, options: &[String], dir: &Path) -> Result<RunSummary> {
        self.launch("icl", options, dir)
    }

    fn launch(&self, subcommand: &str, options: &[String], dir: &Path) -> Result<RunSummary> {
        let summary_path = dir.join("summary.json");
        if summary_path.is_file() {
            return Ok(read_json(&summary_path)?);
        }
        let mut command = Command::new(&self.exe);
        command
            .arg("--device")
            .arg(self.device.to_string())
            .arg(subcommand)
            .arg("--model")
            .arg(self.model)
            .args(self.task.to_cli_args())
            .args(options)
            .arg("--out")
            .arg(dir);
        if subcommand == "train" && dir.join("run.json").is_file() {
            command.arg("--resume");
        }
        let status = command
            .status()
            .with_context(|| format!("running {}", self.exe.display()))?;
        if !status.success() {
            bail!("the run in {} failed ({status})", dir.display());
        }
        Ok(read_json(&summary_path)?)
    }
}
