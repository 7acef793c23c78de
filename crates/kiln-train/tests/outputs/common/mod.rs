//! What the format tests share: fixture JSON, inputs, comparisons, deterministic weights.

#![allow(dead_code)]

use std::path::Path;

use burn::module::Param;
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::Value;

use kiln_models::paths::ParamMapper;
use kiln_testkit::cpu;

/// `KILN_WRITE_FIXTURES=1`: write kiln's side of the fixtures and skip the comparisons (the
/// fixture script records transformers' side next).
pub fn writing_fixtures() -> bool {
    std::env::var_os("KILN_WRITE_FIXTURES").is_some()
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("json")
}

pub fn floats(value: &Value) -> Vec<f32> {
    value["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect()
}

pub fn ids(value: &Value, key: &str) -> Tensor<2, Int> {
    let rows: Vec<Vec<i64>> = serde_json::from_value(value[key].clone()).expect("rows");
    let shape = [rows.len(), rows[0].len()];
    Tensor::from_data(TensorData::new(rows.concat(), shape), &cpu())
}

/// Compares within 1e-4; token states (`[batch, positions, width]`) only where the input's
/// mask attends, virtual tokens in front counting as attended (GPT-2's states at padding are not
/// comparable: HF numbers padded positions on, kiln repeats the last real one).
pub fn assert_close(got: &[f32], want: &Value, inputs: &Value, what: &str) {
    let values = floats(want);
    assert_eq!(got.len(), values.len(), "{what}: sizes");
    let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).expect("shape");
    let mask: Vec<Vec<i64>> =
        serde_json::from_value(inputs["attention_mask"].clone()).expect("mask");
    let attended = |i: usize| match shape.as_slice() {
        &[_, positions, width] => {
            // A Parallel composition's rows repeat the batch.
            let row = (i / (positions * width)) % mask.len();
            let position = (i / width) % positions;
            let virtual_tokens = positions - mask[row].len();
            position < virtual_tokens || mask[row][position - virtual_tokens] == 1
        }
        _ => true,
    };
    for (i, (a, b)) in got.iter().zip(&values).enumerate() {
        if attended(i) {
            assert!(
                (a - b).abs() < 1e-4,
                "{what}: element {i}: kiln {a} vs the reference {b}"
            );
        }
    }
}

/// Gives the parameters whose paths contain one of its patterns fixed values, so that an
/// export is the same file every time (initialisation would draw from the backend's RNG).
pub struct Deterministic(pub usize, pub &'static [&'static str]);

impl ParamMapper for Deterministic {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !self.1.iter().any(|p| path.contains(p)) {
            return param;
        }
        let shape = param.lazy_shape();
        let values: Vec<f32> = (0..shape.num_elements())
            .map(|_| {
                self.0 += 1;
                ((self.0 as f32 * 0.618_034).fract() - 0.5) * 0.4
            })
            .collect();
        let device = param.lazy_device();
        Param::initialized(
            param.id,
            Tensor::from_data(TensorData::new(values, shape), &device),
        )
    }
}

pub fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).expect("read");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut all: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}
