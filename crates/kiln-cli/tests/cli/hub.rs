//! `--model ORG/NAME` through the HF cache, against a loopback stand-in for the Hub: the first
//! run downloads into `HF_HUB_CACHE`, later ones with `HF_HUB_OFFLINE=1` read the cache and
//! make no request; unknown and uncached names fail naming the model.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{fixtures, path, read_json};
use kiln_testkit::hub::{COMMIT, FakeHub};

/// `kiln args...` against `hub` with the cache in `cache`, nothing else of the environment's
/// HF or proxy settings.
fn kiln(hub: &FakeHub, cache: &Path, offline: bool, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    for var in [
        "HF_HOME",
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        command.env_remove(var);
    }
    command
        .env("RUST_BACKTRACE", "0")
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", cache.join("home"));
    if offline {
        command.env("HF_HUB_OFFLINE", "1");
    }
    command.args(args).output().expect("kiln runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_hub_name_downloads_once_then_runs_offline_from_the_cache() {
    let hub = FakeHub::serve("kiln-test/bert-tiny", &fixtures().join("bert-tiny"));
    let dir = tempfile::tempdir().expect("dir");
    let cache = dir.path().join("hub");
    let task = fixtures().join("tasks/fire-water.csv");
    let run = dir.path().join("run");
    let train = |offline: bool, out: &Path| {
        kiln(
            &hub,
            &cache,
            offline,
            &[
                "train",
                "--model",
                "kiln-test/bert-tiny",
                "--task",
                path(&task),
                "--method",
                "lora",
                "--epochs",
                "1",
                "--max-len",
                "16",
                "--out",
                path(out),
            ],
        )
    };
    let output = train(false, &run);
    assert!(output.status.success(), "{}", stderr(&output));
    let snapshot = cache.join(format!("models--kiln-test--bert-tiny/snapshots/{COMMIT}"));
    for file in [
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "tokenizer.json",
    ] {
        assert!(snapshot.join(file).is_file(), "{file} not cached");
    }
    let downloaded = hub.requests();
    assert!(downloaded > 0);
    assert_eq!(
        read_json(&run.join("run.json"))["model"],
        "kiln-test/bert-tiny"
    );

    // Offline: eval, a second training run and an export use the cache and ask nothing.
    let output = kiln(&hub, &cache, true, &["eval", "--run", path(&run)]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = train(true, &dir.path().join("again"));
    assert!(output.status.success(), "{}", stderr(&output));
    let adapter = dir.path().join("adapter");
    let output = kiln(
        &hub,
        &cache,
        true,
        &["export", "--run", path(&run), "--out", path(&adapter)],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let config = read_json(&adapter.join("adapter_config.json"));
    assert_eq!(config["base_model_name_or_path"], "kiln-test/bert-tiny");
    assert_eq!(hub.requests(), downloaded, "offline runs made requests");

    // A name the cache lacks, offline, and one the hub lacks, online: both named.
    let output = kiln(
        &hub,
        &cache,
        true,
        &["plan", "--model", "kiln-test/other", "--method", "lora"],
    );
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("kiln-test/other@main") && message.contains("HF_HUB_OFFLINE"),
        "{message}"
    );
    let output = kiln(
        &hub,
        &cache,
        false,
        &["plan", "--model", "kiln-test/other", "--method", "lora"],
    );
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("kiln-test/other@main") && message.contains("404"),
        "{message}"
    );
}
