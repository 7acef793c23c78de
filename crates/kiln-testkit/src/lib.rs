//! kiln-testkit: what kiln's integration tests share (a dev-dependency only). The committed
//! fixtures, the backend under test, the lock around Burn's process-wide RNG, reference
//! outputs, tolerant comparison, and classifiers on the tiny fixtures.

pub mod fuzz;
pub mod hub;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_models::{
    Activation, AdapterConfig, AdapterInit, DeviceChoice, HeadConfig, Pretrained,
    SequenceClassifier,
};
use kiln_tuning::MethodConfig;
use serde::Deserialize;

/// The committed fixtures, or `$KILN_FIXTURES` (the GPU bundle carries them beside the test
/// binaries, away from the source tree).
pub fn fixtures() -> PathBuf {
    std::env::var_os("KILN_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"))
}

/// One fixture: `bert-tiny`, `gpt2-tiny`, `tasks/fire-water.csv`, ...
pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// The backend named by `KILN_TEST_DEVICE`: `cpu` (flex) when unset, or `ndarray`, `wgpu`.
pub fn choice_under_test() -> DeviceChoice {
    std::env::var("KILN_TEST_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .expect("KILN_TEST_DEVICE must be cpu, ndarray or wgpu")
}

/// The device of [`choice_under_test`].
pub fn cpu() -> Device {
    choice_under_test()
        .device()
        .expect("the backend under test is compiled in")
}

/// The device under test and its parity tolerance: 1e-4 on the CPU backends, 1e-3 on wgpu,
/// whose kernels sum in another order.
pub fn device_under_test() -> (Device, f32) {
    let tolerance = match choice_under_test() {
        DeviceChoice::Cpu | DeviceChoice::NdArray => 1e-4,
        DeviceChoice::Wgpu => 1e-3,
    };
    (cpu(), tolerance)
}

/// Burn keeps two things process-wide that tests running in parallel disturb: the backend RNG
/// (a test that seeds it, or initialises a model while another trains from a seed, changes that
/// test's draws), and, in Burn 0.22, the autodiff graph registry: one thread's `backward()` can
/// free graph steps another thread still needs, and a leaf used again after a backward then
/// silently loses gradient (tracel-ai/burn#5573; measured here as 1 failure in 25-60 runs of the
/// fused-against-unfused test). A test that seeds, initialises or runs backward holds this lock.
pub fn seeded_section() -> MutexGuard<'static, ()> {
    static RNG: Mutex<()> = Mutex::new(());
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `method`'s classifier on the fixture `name` (the backbone's default readout, `outputs`
/// classes, no head dropout), before the method applies.
pub fn classifier(
    name: &str,
    method: &MethodConfig,
    outputs: usize,
    device: &Device,
) -> SequenceClassifier {
    let pretrained = Pretrained::load(&fixture(name), device).expect("fixture loads");
    let readout = pretrained.backbone.default_readout();
    let head = HeadConfig {
        layers: method.method().head_layers(),
        outputs,
        dropout: 0.0,
    };
    SequenceClassifier::new(pretrained.backbone, readout, head, device).expect("classifier")
}

/// Adds fresh adapters called `names` after every feed-forward (Pfeiffer's placement,
/// bottleneck 4): what AdapterFusion mixes.
pub fn add_feed_forward_adapters(model: &mut SequenceClassifier, names: &[&str]) {
    let layout = AdapterConfig {
        after_attention: false,
        after_feed_forward: true,
        parallel: false,
        bottleneck: 4,
        activation: Activation::Relu,
        scale: 1.0,
        init: AdapterInit::NearIdentity,
        prefix_len: 0,
        original_ln_before: true,
        phm: None,
        gated: false,
        reft: None,
    };
    for name in names {
        model.add_adapter(name, &layout).expect("adds an adapter");
    }
}

/// A tensor of the reference outputs transformers wrote.
#[derive(Deserialize)]
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// `fixtures/reference/{name}` parsed as `T`.
pub fn read_reference<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = fixtures().join("reference").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Rows of ids as an `[rows, cols]` tensor.
pub fn int_tensor(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

/// A tensor's values, flat.
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
