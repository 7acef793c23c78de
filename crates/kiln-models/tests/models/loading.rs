//! Loading HF checkpoints: broken directories are refused with errors that name the file and
//! tensor at fault; the layouts real checkpoints come in (task-class prefixes, legacy buffers and
//! names) load.

use std::fs;
use std::path::Path;

use crate::common::*;
use kiln_models::{Bert, Gpt2, ModelError};

/// Copies a fixture directory into a fresh temporary one that the test may damage.
fn scratch_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in fs::read_dir(fixtures().join(name)).expect("fixture dir") {
        let entry = entry.expect("entry");
        fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    dir
}

fn load_bert(dir: &Path) -> Result<Bert, ModelError> {
    let (device, _) = device_under_test();
    Bert::from_pretrained(dir, &device).map(|(model, _)| model)
}

/// Rewrites a safetensors file through a transformation of its tensor map.
fn rewrite_safetensors(path: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let bytes = fs::read(path).expect("read");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("valid");
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .expect("view");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write");
}

#[test]
fn truncated_safetensors_is_refused() {
    let dir = scratch_copy("bert-tiny");
    let path = dir.path().join("model.safetensors");
    let bytes = fs::read(&path).expect("read");
    fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    let error = load_bert(dir.path()).expect_err("must fail").to_string();
    assert!(error.contains("model.safetensors"), "{error}");
    assert!(error.contains("not a readable safetensors file"), "{error}");
}

#[test]
fn truncated_pytorch_bin_is_refused() {
    let dir = scratch_copy("bert-tiny-bin");
    let path = dir.path().join("pytorch_model.bin");
    let bytes = fs::read(&path).expect("read");
    fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    let error = load_bert(dir.path()).expect_err("must fail").to_string();
    assert!(error.contains("pytorch_model.bin"), "{error}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = scratch_copy("bert-tiny");
    let name = "encoder.layer.1.attention.self.value.weight";
    rewrite_safetensors(&dir.path().join("model.safetensors"), |tensors| {
        tensors.retain(|(n, _, _)| n != name)
    });
    let error = load_bert(dir.path()).expect_err("must fail");
    assert!(
        matches!(&error, ModelError::MissingTensor { tensor, param, .. }
            if tensor == name && param == "layers.1.attention.value.weight"),
        "{error}"
    );
    assert!(error.to_string().contains(name));
}

#[test]
fn wrong_shape_names_tensor_and_both_shapes() {
    let dir = scratch_copy("bert-tiny");
    let name = "encoder.layer.0.intermediate.dense.weight";
    rewrite_safetensors(&dir.path().join("model.safetensors"), |tensors| {
        let entry = tensors
            .iter_mut()
            .find(|(n, _, _)| n == name)
            .expect("present");
        // [64, 32] stored as [32, 64]: same bytes, wrong shape.
        entry.1 = vec![32, 64];
    });
    let error = load_bert(dir.path()).expect_err("must fail");
    let text = error.to_string();
    assert!(
        matches!(&error, ModelError::ShapeMismatch { tensor, expected, found, .. }
            if tensor == name && expected == &vec![64, 32] && found == &vec![32, 64]),
        "{text}"
    );
    assert!(
        text.contains("[32, 64]") && text.contains("[64, 32]"),
        "{text}"
    );
}

#[test]
fn malformed_config_is_refused_with_file_and_reason() {
    let dir = scratch_copy("bert-tiny");
    let path = dir.path().join("config.json");
    fs::write(&path, "{ \"model_type\": \"bert\", \"hidden_size\": 32, ").expect("write");
    let error = load_bert(dir.path()).expect_err("must fail").to_string();
    assert!(
        error.contains("config.json") && error.contains("malformed config"),
        "{error}"
    );

    fs::write(&path, r#"{"model_type":"bert","vocab_size":10,"hidden_size":30,"num_hidden_layers":1,"num_attention_heads":4,"intermediate_size":8}"#).expect("write");
    let error = load_bert(dir.path()).expect_err("must fail").to_string();
    assert!(
        error.contains("not a multiple of num_attention_heads"),
        "{error}"
    );

    fs::write(&path, r#"{"model_type":"bert","vocab_size":"many"}"#).expect("write");
    let error = load_bert(dir.path()).expect_err("must fail").to_string();
    assert!(
        error.contains("vocab_size") || error.contains("invalid type"),
        "{error}"
    );
}

#[test]
fn directory_without_weights_is_refused() {
    let dir = scratch_copy("gpt2-tiny");
    fs::remove_file(dir.path().join("model.safetensors")).expect("remove");
    let (device, _) = device_under_test();
    let error = Gpt2::from_pretrained(dir.path(), &device)
        .expect_err("must fail")
        .to_string();
    assert!(error.contains("no weights found"), "{error}");
}

#[test]
fn unsupported_model_type_is_named() {
    let dir = scratch_copy("bert-tiny");
    fs::write(dir.path().join("config.json"), r#"{"model_type":"llama"}"#).expect("write");
    let (device, _) = device_under_test();
    let error = match kiln_models::Pretrained::load(dir.path(), &device) {
        Ok(_) => panic!("llama must be refused"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("llama") && error.contains("config.json"),
        "{error}"
    );
}

/// `BertForSequenceClassification` saves `bert.`-prefixed names plus a classifier; old
/// checkpoints name LayerNorm parameters gamma/beta. Both load as the base model.
#[test]
fn task_class_prefix_and_legacy_names_load() {
    let dir = scratch_copy("bert-tiny");
    let path = dir.path().join("model.safetensors");
    rewrite_safetensors(&path, |tensors| {
        for (name, _, _) in tensors.iter_mut() {
            let renamed = name
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            *name = format!("bert.{renamed}");
        }
        tensors.push(("classifier.weight".into(), vec![2, 32], vec![0; 2 * 32 * 4]));
    });
    let (device, _) = device_under_test();
    let (original, _) =
        Bert::from_pretrained(&fixtures().join("bert-tiny"), &device).expect("loads");
    let renamed = load_bert(dir.path()).expect("prefixed checkpoint loads");
    let a = values(original.embeddings.norm.gamma.val());
    let b = values(renamed.embeddings.norm.gamma.val());
    assert_eq!(a, b);
    let a = values(original.layers[1].output.weight.val());
    let b = values(renamed.layers[1].output.weight.val());
    assert_eq!(a, b);
}

/// GPT-2 checkpoints from older `transformers` carry `attn.bias` / `attn.masked_bias` buffers;
/// they are masks, not parameters, and are ignored.
#[test]
fn gpt2_attention_buffers_are_ignored() {
    let dir = scratch_copy("gpt2-tiny");
    rewrite_safetensors(&dir.path().join("model.safetensors"), |tensors| {
        let ones: Vec<u8> = std::iter::repeat_n(1.0f32.to_le_bytes(), 64 * 64)
            .flatten()
            .collect();
        tensors.push(("transformer.h.0.attn.bias".into(), vec![1, 1, 64, 64], ones));
        tensors.push((
            "transformer.h.0.attn.masked_bias".into(),
            vec![],
            (-1e4f32).to_le_bytes().to_vec(),
        ));
    });
    let (device, _) = device_under_test();
    Gpt2::from_pretrained(dir.path(), &device).expect("buffers are skipped");
}

/// A checkpoint saved without the pooler (`add_pooling_layer=False`) loads with no pooler.
#[test]
fn bert_without_pooler_loads_without_one() {
    let dir = scratch_copy("bert-tiny");
    rewrite_safetensors(&dir.path().join("model.safetensors"), |tensors| {
        tensors.retain(|(name, _, _)| !name.starts_with("pooler."))
    });
    let model = load_bert(dir.path()).expect("loads");
    assert!(model.pooler.is_none());
}
