//! Shared by the kiln-models integration tests: fixture paths, the device under test, and
//! tolerant comparison.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_models::DeviceChoice;
use serde::Deserialize;

/// The committed fixtures, or `$KILN_FIXTURES` (the GPU bundle carries them beside the test
/// binaries, away from the source tree).
pub fn fixtures() -> PathBuf {
    std::env::var_os("KILN_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"))
}

/// The backend named by `KILN_TEST_DEVICE` (`cpu`, i.e. flex, when unset; or `ndarray`, `wgpu`),
/// and its parity tolerance: 1e-4 on the CPU backends, 1e-3 on wgpu whose kernels sum in
/// another order.
pub fn device_under_test() -> (Device, f32) {
    let choice: DeviceChoice = std::env::var("KILN_TEST_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .expect("KILN_TEST_DEVICE must be cpu, ndarray or wgpu");
    let tolerance = match choice {
        DeviceChoice::Cpu | DeviceChoice::NdArray => 1e-4,
        DeviceChoice::Wgpu => 1e-3,
    };
    (choice.device().expect("device is compiled in"), tolerance)
}

#[derive(Deserialize)]
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

pub fn read_reference<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = fixtures().join("reference").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn int_tensor(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

pub fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

/// Largest |actual - expected| over the entries where `keep(i)` holds.
pub fn max_abs_diff(actual: &[f32], expected: &[f32], keep: impl Fn(usize) -> bool) -> f32 {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    actual
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, (a, e))| (a - e).abs())
        .fold(0.0, f32::max)
}

/// Where `cargo xtask assets` puts downloaded models: `$KILN_HOME`, default `<workspace>/.kiln`.
pub fn kiln_home() -> PathBuf {
    std::env::var_os("KILN_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.kiln"))
}

/// A fetched asset directory; fails with the command that fetches it when absent.
pub fn asset(relative: &str) -> PathBuf {
    let path = kiln_home().join(relative);
    assert!(
        path.is_dir(),
        "{} is missing: run `cargo xtask assets` (the README's test command does)",
        path.display()
    );
    path
}
