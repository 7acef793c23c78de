//! Comparisons: several methods, each with its own options (`lora:rank=4`, `lora:rank=16`), on
//! one model and task with the same trainer settings and seeds, one run directory each, and the
//! report ([`crate::report`]). `icl` (in-context learning) stands beside them as the
//! zero-training baseline.
//!
//! A comparison is honest about what it shows: a finished run in the comparison's directory is
//! reused only when the settings it recorded are the ones asked for now; otherwise the run
//! trains into a fresh folder beside it (`lora-s42-2`) and the differing settings are said. A
//! run that fails is a `failed` line of the table, and the other runs still land.
//!
//! How one run executes is the caller's choice ([`Launcher`]): [`InProcess`] trains in this
//! process; `kiln compare` starts a process per run, so that each run's peak memory is its own.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use kiln_models::DeviceChoice;
use kiln_tuning::{MethodConfig, registry};

use crate::error::{Result, TrainError};
use crate::icl::{IclRecord, IclSettings, run_icl};
use crate::report::{ComparisonRow, escape, html_page, markdown, mean_std, svg_plot};
use crate::run::{
    RUN_FILE, RunConfig, RunSettings, RunSummary, SUMMARY_FILE, json_differences,
    settings_differences, train,
};
use crate::trainer::{read_json, write_json};

/// The method name of in-context learning, the one contender that does not train.
pub const ICL: &str = "icl";

/// One run to make: a training run's settings, or in-context learning on a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RunRequest {
    /// `kiln train` with these settings.
    Train(Box<RunSettings>),
    /// `kiln icl` of these settings on this task.
    Icl(Box<IclRecord>),
}

/// Runs a [`RunRequest`] into a directory and gives its summary.
pub trait Launcher {
    /// Runs `request` into `dir`; with `resume`, the training run there continues.
    fn launch(&self, request: &RunRequest, dir: &Path, resume: bool) -> Result<RunSummary>;
}

/// Runs every request in this process, on `device`.
pub struct InProcess {
    /// The backend to run on.
    pub device: DeviceChoice,
}

impl Launcher for InProcess {
    fn launch(&self, request: &RunRequest, dir: &Path, resume: bool) -> Result<RunSummary> {
        run_request(request, dir, resume, self.device)
    }
}

/// Runs `request` into `dir` on `device`: what a run's own process does.
pub fn run_request(
    request: &RunRequest,
    dir: &Path,
    resume: bool,
    device: DeviceChoice,
) -> Result<RunSummary> {
    match request {
        RunRequest::Train(settings) => {
            let settings = RunSettings {
                device,
                ..(**settings).clone()
            };
            Ok(train(&settings, dir, resume)?.summary)
        }
        RunRequest::Icl(record) => {
            let settings = IclSettings {
                out: dir.to_path_buf(),
                ..record.settings.clone()
            };
            run_icl(&record.task, &settings, device)
        }
    }
}

/// One contender of a comparison: a method with its options, as `name[:option=value...]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Contender {
    /// As written (`lora:rank=4`).
    pub spec: String,
    /// The method with its options; `None` for in-context learning.
    pub method: Option<MethodConfig>,
}

impl Contender {
    /// Parses `name` or `name:option=value:option=value` (options as `kiln train`'s flags name
    /// them, without the dashes; a list's items joined by `+`, as `lora:targets=query+value`). A method that needs more than its defaults (fusion needs
    /// adapters) must be given those options; one with a command of its own other than `icl`
    /// cannot compare.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut parts = spec.split(':');
        let name = parts.next().unwrap_or_default().trim();
        let mut options = Vec::new();
        for part in parts {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                TrainError::Invalid(format!(
                    "--methods {spec}: `{part}` is not option=value (e.g. lora:rank=4)"
                ))
            })?;
            options.push((
                key.trim().trim_start_matches("--"),
                value.trim().replace('+', ","),
            ));
        }
        let options: Vec<(&str, &str)> = options.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let methods = registry();
        let Some(entry) = methods.iter().find(|m| m.name == name) else {
            let hint = kiln_tuning::nearest_method(name)
                .map_or_else(String::new, |near| format!("; did you mean `{near}`?"));
            return Err(TrainError::Invalid(format!(
                "--methods: unknown method `{name}` (`kiln methods` lists them{hint})"
            )));
        };
        if name == ICL {
            if !options.is_empty() {
                return Err(TrainError::Invalid(format!(
                    "--methods {spec}: icl takes its settings from --icl-* flags"
                )));
            }
            return Ok(Self {
                spec: spec.to_string(),
                method: None,
            });
        }
        if let Some(command) = entry.command {
            return Err(TrainError::Invalid(format!(
                "--methods: `{name}` runs with `{command}`, not in a comparison"
            )));
        }
        if let (Some(needs), true) = (entry.needs, options.is_empty()) {
            return Err(TrainError::Invalid(format!(
                "--methods: `{name}` needs {needs}; give it as {name}:option=value"
            )));
        }
        let method = MethodConfig::parse(name, &options)
            .map_err(|e| TrainError::Invalid(format!("--methods {spec}: {e}")))?;
        Ok(Self {
            spec: spec.to_string(),
            method: Some(method),
        })
    }

    /// The folder name of its runs: the spec with `:` and `=` made safe (`lora-rank4`).
    fn folder(&self) -> String {
        self.spec
            .chars()
            .filter_map(|c| match c {
                ':' => Some('-'),
                '=' => None,
                c if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') => Some(c),
                _ => Some('_'),
            })
            .collect()
    }
}

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareSettings {
    /// What every run shares: model, task, trainer settings (the seed is the first seed),
    /// lengths, device. Its method is replaced by each contender's.
    pub base: RunSettings,
    /// One learning rate for every method; `None`: each method's default.
    pub lr: Option<f64>,
    /// The methods with their options, in table order.
    pub contenders: Vec<Contender>,
    /// Seeds per method: the base seed, the base seed + 1, ...
    pub seeds: u64,
    /// In-context learning's settings (its model, seed and folder are set per run).
    pub icl: IclSettings,
    /// The report's title; `None`: the model and task names.
    pub title: Option<String>,
    /// The comparison directory: one run folder per method and seed, and the report.
    pub out: PathBuf,
}

/// One run of a comparison as `results.json` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparedRun {
    /// The contender as written.
    pub spec: String,
    /// The run's label (`lora-r4`).
    pub method: String,
    /// Its seed.
    pub seed: u64,
    /// Its folder.
    pub dir: PathBuf,
    /// The test metric's name.
    pub metric: String,
    /// The test metric.
    pub test: f64,
    /// Share of the parameters that trained, in percent.
    pub trainable_percent: f64,
    /// Mean wall time of an epoch.
    pub seconds_per_epoch: f64,
    /// Peak resident memory of the run's process.
    pub peak_rss_mib: Option<f64>,
    /// Read back from an earlier comparison with the same settings, not run now.
    pub reused: bool,
}

/// A run that did not finish, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedRun {
    /// The contender as written.
    pub spec: String,
    /// Its seed.
    pub seed: u64,
    /// Its folder.
    pub dir: PathBuf,
    /// The error.
    pub error: String,
}

/// What [`compare`] wrote: the table's rows, every run, the failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The report's title.
    pub title: String,
    /// The test metric's name.
    pub metric: String,
    /// One row per contender with at least one finished run.
    pub rows: Vec<ComparisonRow>,
    /// Every finished run.
    pub runs: Vec<ComparedRun>,
    /// Every run that failed.
    pub failed: Vec<FailedRun>,
}

/// Runs (or reuses) every contender and seed of `settings` through `launcher`, then writes
/// `results.json`, `results.md`, `plot.svg` and `report.html` into `settings.out`. Fails only
/// when nothing can be compared; failed runs are in [`Comparison::failed`].
pub fn compare(settings: &CompareSettings, launcher: &dyn Launcher) -> Result<Comparison> {
    if settings.contenders.is_empty() || settings.seeds == 0 {
        return Err(TrainError::Invalid(
            "--methods and --seeds must name at least one run".into(),
        ));
    }
    // One comparison writes a directory's report at a time; each run locks its own folder.
    let _writer = crate::run::lock_run_dir(&settings.out)?;
    let say = settings.base.progress;
    let first_seed = settings.base.train.seed;
    let mut runs = Vec::new();
    let mut failed = Vec::new();
    let mut rows: Vec<(&Contender, ComparisonRow)> = Vec::new();
    for contender in &settings.contenders {
        let mut finished: Vec<RunSummary> = Vec::new();
        for seed in first_seed..first_seed + settings.seeds {
            let request = request_of(settings, contender, seed);
            let base = settings.out.join(format!("{}-s{seed}", contender.folder()));
            let (place, summary) = match launch_or_reuse(&request, &base, launcher, say) {
                Ok(done) => done,
                Err(error) => {
                    eprintln!("{} seed {seed}: failed: {error}", contender.spec);
                    failed.push(FailedRun {
                        spec: contender.spec.clone(),
                        seed,
                        dir: base,
                        error: error.to_string(),
                    });
                    continue;
                }
            };
            let Some(test) = &summary.test else {
                failed.push(FailedRun {
                    spec: contender.spec.clone(),
                    seed,
                    dir: place.dir.clone(),
                    error: "the run has no test split to report".into(),
                });
                continue;
            };
            let (metric, value) = test.primary();
            if say {
                eprintln!("{} seed {seed}: test {metric} {value:.4}", contender.spec);
            }
            runs.push(ComparedRun {
                spec: contender.spec.clone(),
                method: summary.method.clone(),
                seed,
                dir: place.dir.clone(),
                metric: metric.to_string(),
                test: value,
                trainable_percent: summary.trainable_percent,
                seconds_per_epoch: summary.seconds_per_epoch,
                peak_rss_mib: summary.peak_rss_mib,
                reused: place.reused,
            });
            finished.push(summary);
        }
        if let Some(row) = row_of(&finished) {
            rows.push((contender, row));
        }
    }
    let rows = rows_named_apart(rows);
    if rows.is_empty() {
        return Err(TrainError::Invalid(format!(
            "every run failed; the first: {}",
            failed.first().map_or("?", |f| f.error.as_str())
        )));
    }
    let metric = runs
        .first()
        .map_or("metric", |r| r.metric.as_str())
        .to_string();
    let title = settings.title.clone().unwrap_or_else(|| {
        format!(
            "{} on {}",
            name_of(&settings.base.model),
            name_of(&settings.base.task.path)
        )
    });
    let comparison = Comparison {
        title,
        metric,
        rows,
        runs,
        failed,
    };
    write_report(&comparison, &settings.out)?;
    Ok(comparison)
}

/// The run of `contender` at `seed`.
fn request_of(settings: &CompareSettings, contender: &Contender, seed: u64) -> RunRequest {
    let base = &settings.base;
    match &contender.method {
        Some(method) => {
            let mut run = base.clone();
            run.method = method.clone();
            run.train.lr = settings.lr.unwrap_or_else(|| method.method().default_lr());
            run.train.seed = seed;
            RunRequest::Train(Box::new(run))
        }
        None => RunRequest::Icl(Box::new(IclRecord {
            task: base.task.clone(),
            settings: IclSettings {
                model: base.model.clone(),
                seed,
                ..settings.icl.clone()
            },
        })),
    }
}

/// Where a run went.
pub(crate) struct Placed {
    /// Its folder.
    pub dir: PathBuf,
    /// It was read back, not run.
    pub reused: bool,
}

/// Runs `request` through `launcher` into the first of `base`, `base-2`, `base-3`, ... that is
/// empty or holds `request`'s run, or reads that run back when it finished; each folder passed
/// over because it holds other settings is said, with the settings.
pub(crate) fn launch_or_reuse(
    request: &RunRequest,
    base: &Path,
    launcher: &dyn Launcher,
    say: bool,
) -> Result<(Placed, RunSummary)> {
    for attempt in 1.. {
        let dir = if attempt == 1 {
            base.to_path_buf()
        } else {
            let name = base
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into());
            base.with_file_name(format!("{name}-{attempt}"))
        };
        if !dir.join(RUN_FILE).is_file() {
            let summary = launcher.launch(request, &dir, false)?;
            return Ok((Placed { dir, reused: false }, summary));
        }
        let differences = recorded_differences(request, &dir)?;
        if differences.is_empty() {
            let summary_path = dir.join(SUMMARY_FILE);
            if summary_path.is_file() {
                let summary = read_json(&summary_path)?;
                return Ok((Placed { dir, reused: true }, summary));
            }
            // An interrupted training run continues; in-context learning starts again.
            let resume = matches!(request, RunRequest::Train(_));
            let summary = launcher.launch(request, &dir, resume)?;
            return Ok((Placed { dir, reused: false }, summary));
        }
        if say {
            eprintln!(
                "{} holds a run with other settings ({}); not reused",
                dir.display(),
                differences.join(", ")
            );
        }
    }
    unreachable!("the folders to try are unbounded")
}

/// How the run recorded in `dir` differs from `request` (empty: it is that run).
fn recorded_differences(request: &RunRequest, dir: &Path) -> Result<Vec<String>> {
    let path = dir.join(RUN_FILE);
    match request {
        RunRequest::Train(settings) => match read_json::<RunConfig>(&path) {
            Ok(recorded) => settings_differences(&recorded, settings),
            Err(_) => Ok(vec![format!("{} is not a training run's", path.display())]),
        },
        RunRequest::Icl(asked) => match read_json::<IclRecord>(&path) {
            Ok(mut recorded) => {
                recorded.settings.out = asked.settings.out.clone();
                let mut differences = Vec::new();
                json_differences(
                    "",
                    &serde_json::to_value(&recorded).unwrap_or_default(),
                    &serde_json::to_value(&**asked).unwrap_or_default(),
                    &mut differences,
                );
                Ok(differences)
            }
            Err(_) => Ok(vec![format!("{} is not an icl run's", path.display())]),
        },
    }
}

/// One contender's row: the mean and spread of its finished seeds.
fn row_of(finished: &[RunSummary]) -> Option<ComparisonRow> {
    let last = finished.last()?;
    let tests: Vec<f64> = finished
        .iter()
        .filter_map(|s| s.test.as_ref().map(|t| t.primary().1))
        .collect();
    let (mean, std) = mean_std(&tests);
    let seconds: f64 = finished.iter().map(|s| s.seconds_per_epoch).sum();
    let peak = finished
        .iter()
        .filter_map(|s| s.peak_rss_mib)
        .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))));
    Some(ComparisonRow {
        method: last.method.clone(),
        seeds: tests.len(),
        mean,
        std,
        trainable_params: last.trainable_params,
        trainable_percent: last.trainable_percent,
        seconds_per_epoch: seconds / finished.len() as f64,
        peak_rss_mib: peak,
    })
}

/// The rows, two with one label (`lora:alpha=8` and `lora:alpha=16` are both `lora-r8`) told
/// apart by their specs.
fn rows_named_apart(rows: Vec<(&Contender, ComparisonRow)>) -> Vec<ComparisonRow> {
    let labels: Vec<String> = rows.iter().map(|(_, r)| r.method.clone()).collect();
    rows.into_iter()
        .map(|(contender, mut row)| {
            if labels.iter().filter(|l| **l == row.method).count() > 1 {
                row.method = format!("{} ({})", row.method, contender.spec);
            }
            row
        })
        .collect()
}

fn write_report(comparison: &Comparison, out: &Path) -> Result<()> {
    let Comparison {
        title,
        metric,
        rows,
        failed,
        ..
    } = comparison;
    let mut table = markdown(rows, metric);
    for run in failed {
        table.push_str(&format!(
            "| {} (seed {}) | failed: {} | | | | |\n",
            run.spec,
            run.seed,
            run.error.replace('|', "/").replace('\n', " ")
        ));
    }
    let svg = svg_plot(rows, metric, title)?;
    let mut page = html_page(rows, metric, title, &svg);
    if !failed.is_empty() {
        let items: String = failed
            .iter()
            .map(|run| {
                format!(
                    "<li>{} (seed {}): {}</li>",
                    escape(&run.spec),
                    run.seed,
                    escape(&run.error)
                )
            })
            .collect();
        page = page.replace(
            "</body>",
            &format!("<h2>Failed runs</h2>\n<ul>{items}</ul>\n</body>"),
        );
    }
    write_json(&out.join("results.json"), comparison)?;
    for (name, text) in [
        ("results.md", format!("# {title}\n\n{table}")),
        ("plot.svg", svg),
        ("report.html", page),
    ] {
        crate::write_atomically(&out.join(name), text.as_bytes())?;
    }
    Ok(())
}

fn name_of(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}
