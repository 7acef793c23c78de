//! Shared by the CLI tests: the fixtures folder and running the built `kiln` binary.

use std::process::Command;

pub use kiln_testkit::fixtures;

/// Runs `kiln args...`: whether it succeeded, its stdout and its stderr.
pub fn kiln(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("kiln runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
