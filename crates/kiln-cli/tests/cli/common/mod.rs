//! Shared by the CLI tests: the fixtures folder, running the built `kiln` binary, and the
//! small helpers every test file needs. (Each test file uses a part of it.)
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

pub use kiln_testkit::fixtures;

/// Runs `kiln args...`: whether it succeeded, its stdout and its stderr.
pub fn kiln(args: &[&str]) -> (bool, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_kiln")).args(args))
}

/// [`kiln`] with `dir` as the working directory.
pub fn kiln_in(dir: &Path, args: &[&str]) -> (bool, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(dir)
        .args(args))
}

fn run(command: &mut Command) -> (bool, String, String) {
    let output = command
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("kiln runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `kiln train` of BitFit for one epoch at 16 tokens: the quickest real run (add `--out`).
pub fn quick_train_args<'a>(model: &'a str, task: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        model,
        "--task",
        task,
        "--method",
        "bitfit",
        "--epochs",
        "1",
        "--max-len",
        "16",
    ]
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A JSON file a run wrote.
pub fn read_json(file: &Path) -> Value {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    serde_json::from_str(&text).expect("json")
}

/// The tensor names of a safetensors file (read from its JSON header).
pub fn tensor_names(file: &Path) -> Vec<String> {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let size = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + size]).expect("header");
    header
        .as_object()
        .expect("an object")
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect()
}
