//! A whole model with kiln's fused kernels against the same model on Burn's plain ops: the
//! kernels' own gradient checks (kiln-kernels/tests) cover each operation alone; this checks
//! how BERT and GPT-2 wire them (which tensor is the residual, which bias goes where, which
//! epsilon), forward and backward, on every parameter. Dropout is off, so both paths compute the
//! same function.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use common::*;
use kiln_models::{Bert, BertInput, Gpt2, Gpt2Input};

/// A copy of fixture `name` with every dropout probability in its config set to 0.
fn without_dropout(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(fixtures().join(name)).expect("fixture exists") {
        let path = entry.expect("entry").path();
        std::fs::copy(
            &path,
            dir.path().join(path.file_name().expect("a file name")),
        )
        .expect("copies");
    }
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).expect("config reads"))
            .expect("config parses");
    for (key, value) in config.as_object_mut().expect("config is an object") {
        if key.contains("dropout") || key.ends_with("_pdrop") {
            *value = serde_json::json!(0.0);
        }
    }
    std::fs::write(&config_path, config.to_string()).expect("config writes");
    dir
}

/// Every parameter's gradient, by its path in the module tree.
struct Gradients<'a> {
    grads: &'a GradientsParams,
    path: Vec<String>,
    found: BTreeMap<String, Vec<f32>>,
}

impl ModuleVisitor for Gradients<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            self.found.insert(self.path.join("."), values(grad));
        }
    }
}

fn gradients<M: Module>(model: &M, loss: Tensor<1>) -> BTreeMap<String, Vec<f32>> {
    let grads = GradientsParams::from_grads(loss.backward(), model);
    let mut visitor = Gradients {
        grads: &grads,
        path: Vec::new(),
        found: BTreeMap::new(),
    };
    model.visit(&mut visitor);
    visitor.found
}

/// A loss that reaches every output position with its own weight, so no gradient cancels out.
fn weighted_sum(output: Tensor<3>, weights: &Tensor<3>) -> Tensor<1> {
    (output * weights.clone()).sum()
}

/// Output and gradients of `run` with the fused kernels and on Burn's ops must agree to 1e-4 of
/// each tensor's largest entry (at least 1: the key biases' gradients are zero in exact
/// arithmetic, since softmax ignores a shift of a whole row, and come out as rounding noise),
/// and the same parameters must get gradients on both paths.
fn check(run: impl Fn() -> (Vec<f32>, BTreeMap<String, Vec<f32>>)) {
    let (fused_output, fused_grads) = run();
    let (plain_output, plain_grads) = kiln_kernels::unfused(&run);
    let scale = |v: &[f32]| v.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let output_diff = max_abs_diff(&fused_output, &plain_output, |_| true);
    assert!(
        output_diff <= 1e-4 * scale(&plain_output),
        "output differs by {output_diff}"
    );
    assert_eq!(
        fused_grads.keys().collect::<Vec<_>>(),
        plain_grads.keys().collect::<Vec<_>>(),
        "the same parameters get gradients"
    );
    assert!(fused_grads.len() > 10, "{} gradients", fused_grads.len());
    for (name, plain) in &plain_grads {
        let diff = max_abs_diff(&fused_grads[name], plain, |_| true);
        assert!(
            diff <= 1e-4 * scale(plain),
            "{name}: gradient differs by {diff} (largest entry {})",
            scale(plain)
        );
    }
}

fn autodiff_cpu() -> Device {
    kiln_models::DeviceChoice::Cpu
        .device()
        .expect("flex is compiled in")
        .autodiff()
}

fn bert_case(dir: &Path, device: &Device) -> (Vec<f32>, BTreeMap<String, Vec<f32>>) {
    let (model, _) = Bert::from_pretrained(dir, device).expect("loads");
    let rows = vec![vec![2, 15, 27, 99, 3, 0], vec![2, 40, 41, 42, 43, 3]];
    let mask = vec![vec![1, 1, 1, 1, 1, 0], vec![1; 6]];
    let types = vec![vec![0, 0, 0, 1, 1, 0], vec![0; 6]];
    let output = model.forward(BertInput {
        input_ids: int_tensor(&rows, device),
        attention_mask: int_tensor(&mask, device),
        token_type_ids: int_tensor(&types, device),
    });
    device.seed(5);
    let weights = Tensor::random([2, 6, 32], Distribution::Normal(0.0, 1.0), device);
    let pooled_weights = Tensor::<2>::random([2, 32], Distribution::Normal(0.0, 1.0), device);
    let hidden = output.last_hidden_state;
    let loss = weighted_sum(hidden.clone(), &weights)
        + (output.pooled.expect("bert-tiny has a pooler") * pooled_weights).sum();
    (values(hidden), gradients(&model, loss))
}

fn gpt2_case(dir: &Path, device: &Device) -> (Vec<f32>, BTreeMap<String, Vec<f32>>) {
    let (model, _) = Gpt2::from_pretrained(dir, device).expect("loads");
    let rows = vec![vec![5, 17, 29, 64, 3], vec![8, 9, 10, 11, 12]];
    let mask = vec![vec![1, 1, 1, 1, 0], vec![1; 5]];
    let output = model.forward(Gpt2Input {
        input_ids: int_tensor(&rows, device),
        attention_mask: int_tensor(&mask, device),
    });
    device.seed(5);
    let hidden = output;
    let weights = Tensor::random(hidden.dims(), Distribution::Normal(0.0, 1.0), device);
    let loss = weighted_sum(hidden.clone(), &weights);
    (values(hidden), gradients(&model, loss))
}

#[test]
fn bert_with_fused_kernels_matches_burn_ops_forward_and_backward() {
    let _serial = kiln_testkit::seeded_section();
    let dir = without_dropout("bert-tiny");
    let device = autodiff_cpu();
    check(|| bert_case(dir.path(), &device));
}

#[test]
fn gpt2_with_fused_kernels_matches_burn_ops_forward_and_backward() {
    let _serial = kiln_testkit::seeded_section();
    let dir = without_dropout("gpt2-tiny");
    let device = autodiff_cpu();
    check(|| gpt2_case(dir.path(), &device));
}
