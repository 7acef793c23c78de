//! Runs of a comparison or study in `kiln` processes of their own, so that each run's peak
//! memory is its own: the parent writes the [`RunRequest`] as JSON and starts the hidden
//! `kiln run-request`, which runs it and leaves its error, if any, in a file for the parent.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;

use kiln_models::DeviceChoice;
use kiln_train::TrainError;
use kiln_train::compare::{Launcher, RunRequest, run_request};
use kiln_train::run::{RunSettings, RunSummary};
use kiln_train::trainer::{read_json, write_json};
use kiln_tuning::MethodConfig;

use crate::train::TaskArgs;

/// What every run of a comparison or a study shares.
#[derive(Args)]
pub struct SharedRunArgs {
    /// HF model directory (BERT, GPT-2 or M2-BERT) or hub name.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub task: TaskArgs,
    /// The first seed: the runs of each cell use --seed, --seed + 1, ...
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
}

impl SharedRunArgs {
    /// Full fine-tuning with these settings on `device`: what a comparison or study varies.
    pub fn base(&self, device: DeviceChoice) -> Result<RunSettings> {
        let method = MethodConfig::parse("full", &[])?;
        let mut base = RunSettings::new(&self.model, self.task.spec(), method);
        base.train.seed = self.seed;
        base.train.epochs = self.epochs;
        base.train.batch_size = self.batch_size;
        base.max_len = self.max_len;
        base.device = device;
        Ok(base)
    }
}

/// Starts `kiln run-request` processes on one device.
pub struct ProcessLauncher {
    exe: PathBuf,
    device: DeviceChoice,
}

impl ProcessLauncher {
    pub fn new(device: DeviceChoice) -> Result<Self> {
        Ok(Self {
            exe: std::env::current_exe().context("finding the kiln executable")?,
            device,
        })
    }
}

impl Launcher for ProcessLauncher {
    fn launch(
        &self,
        request: &RunRequest,
        dir: &Path,
        resume: bool,
    ) -> kiln_train::Result<RunSummary> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
        let temp = |what| {
            tempfile::Builder::new()
                .prefix(&format!(".kiln-{what}-"))
                .tempfile_in(parent)
                .map_err(|e| TrainError::io(parent, e))
        };
        let (request_file, error_file) = (temp("request")?, temp("error")?);
        write_json(request_file.path(), request)?;
        let mut command = Command::new(&self.exe);
        command
            .arg("--device")
            .arg(self.device.to_string())
            .arg("run-request")
            .arg(request_file.path())
            .arg("--out")
            .arg(dir)
            .arg("--error-file")
            .arg(error_file.path());
        if resume {
            command.arg("--resume");
        }
        let status = command.status().map_err(|e| TrainError::io(&self.exe, e))?;
        if !status.success() {
            let error = std::fs::read_to_string(error_file.path()).unwrap_or_default();
            return Err(TrainError::Invalid(if error.trim().is_empty() {
                format!("the run's process ended with {status}")
            } else {
                error.trim().to_string()
            }));
        }
        read_json(&dir.join(kiln_train::run::SUMMARY_FILE))
    }
}

/// `kiln run-request`: one run of a comparison or study, as its parent process asked.
#[derive(Args)]
pub struct RunRequestArgs {
    /// The request as JSON.
    request: PathBuf,
    /// Run directory.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out.
    #[arg(long)]
    resume: bool,
    /// Where to write the error when the run fails.
    #[arg(long)]
    error_file: Option<PathBuf>,
}

pub fn run(args: RunRequestArgs, device: DeviceChoice) -> Result<()> {
    let outcome = read_json::<RunRequest>(&args.request)
        .and_then(|request| run_request(&request, &args.out, args.resume, device));
    if let (Err(error), Some(file)) = (&outcome, &args.error_file) {
        std::fs::write(file, format!("{error:#}"))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    outcome?;
    Ok(())
}
