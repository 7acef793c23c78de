//! LoRA adapters in HF peft's format, both ways, against fixtures written by
//! `scripts/make_peft_fixtures.py` (peft 0.21, transformers 5.24): adapters peft made load into
//! kiln and give peft's outputs; adapters kiln writes are what that script loaded with
//! `PeftModel.from_pretrained` and recorded outputs for; the merged checkpoints kiln writes are
//! what it loaded with plain transformers. `KILN_WRITE_FIXTURES=1` rewrites kiln's side of the
//! fixtures (then re-run the script).

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};
use serde_json::Value;

use kiln_models::paths::map_params;
use kiln_models::weights::WeightFile;
use kiln_models::{
    BertInput, Gpt2Input, HeadConfig, LowRankConfig, Pretrained, PromptEncoder, PromptEncoderShape,
    PromptTemplate, Readout, SequenceClassifier,
};
use kiln_testkit::{cpu, fixtures};

use crate::common::{Deterministic, assert_close, ids, read_json, tensors, writing_fixtures};
use kiln_train::merge::{HeadLabels, save_merged};
use kiln_train::peft::{
    PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, PeftExport, export_peft, import_lora, import_peft,
    load_lora_adapter,
};

/// A classifier on a fixture: BERT with the pooler and one linear layer (HF's
/// `BertForSequenceClassification`), GPT-2 with its last token.
pub(crate) fn classifier(fixture: &str) -> SequenceClassifier {
    let device = cpu();
    let pretrained = Pretrained::load(&fixtures().join(fixture), &device).expect("fixture");
    let readout = if fixture.starts_with("bert") {
        Readout::Pooler
    } else {
        Readout::Last
    };
    let head = HeadConfig {
        layers: 1,
        outputs: 2,
        dropout: 0.1,
    };
    SequenceClassifier::new(pretrained.backbone, readout, head, &device).expect("classifier")
}

/// BERT's logits, or GPT-2's last hidden state, on the fixture inputs.
pub(crate) fn outputs(model: &SequenceClassifier, inputs: &Value) -> Vec<f32> {
    let model = model.valid();
    let input_ids = ids(inputs, "input_ids");
    let attention_mask = ids(inputs, "attention_mask");
    let out = match &model.gpt2 {
        Some(gpt2) => gpt2
            .forward(Gpt2Input {
                input_ids,
                attention_mask,
            })
            .flatten::<1>(0, 2),
        None => model
            .forward(BertInput {
                token_type_ids: input_ids.zeros_like(),
                input_ids,
                attention_mask,
            })
            .flatten::<1>(0, 1),
    };
    out.into_data().try_to_vec::<f32>().expect("floats")
}

#[test]
fn peft_lora_adapters_load_into_kiln_with_peft_outputs() {
    for (fixture, adapter, key) in [
        ("bert-tiny", "peft-bert-lora", "logits"),
        ("gpt2-tiny", "peft-gpt2-lora", "last_hidden_state"),
    ] {
        let dir = fixtures().join("peft").join(adapter);
        let expected = read_json(&dir.join("expected.json"));
        let (model, report) = import_lora(classifier(fixture), &dir).expect("imports");
        // r 4 in both layers (BERT: query and value, 32 -> 32; GPT-2: c_attn, 32 -> 96), plus
        // the head.
        let (per_layer, d_in, d_out) = match fixture {
            "bert-tiny" => (2, 32, 32),
            _ => (1, 32, 96),
        };
        let deltas = 2 * per_layer * 4 * (d_in + d_out);
        assert_eq!(report.trainable(), deltas + 32 * 2 + 2, "{adapter}");
        assert_close(
            &outputs(&model, &expected),
            &expected[key],
            &expected,
            adapter,
        );
    }
}

fn kiln_lora(fixture: &str) -> SequenceClassifier {
    let mut model = classifier(fixture);
    let targets: &[&str] = if fixture.starts_with("bert") {
        &["attention.query", "attention.value", "intermediate"]
    } else {
        &["attention.c_attn", "mlp.c_proj"]
    };
    for (path, projection) in model.projections_mut() {
        if targets.iter().any(|t| path.ends_with(t)) {
            projection.add_lora(LowRankConfig::new(4, 8.0, 0.1));
        }
    }
    map_params(model, &mut Deterministic(0, &[".lora.", "head."]))
}

/// Exports `model` (built on the fixture `fixture`) and checks it against the committed
/// kiln-to-peft fixture `adapter`: the tensors are those peft loaded in the fixture script,
/// transformers + peft gave kiln's outputs (`key`) with them, and the export re-imports into a
/// fresh model to the same outputs. With `KILN_WRITE_FIXTURES` it writes the fixture instead.
/// Returns what the export reported and its config.
pub(crate) fn check_export(
    model: &SequenceClassifier,
    fixture: &str,
    adapter: &str,
    key: &str,
) -> (PeftExport, Value) {
    let committed = fixtures().join("peft").join(adapter);
    let base = format!("fixtures/{fixture}");
    let dir = tempfile::tempdir().expect("dir");
    let export = export_peft(model, dir.path(), &base).expect("exports");
    let config = read_json(&dir.path().join(PEFT_CONFIG_FILE));
    if writing_fixtures() {
        export_peft(model, &committed, &base).expect("writes");
        return (export, config);
    }
    assert_eq!(
        tensors(&dir.path().join(PEFT_WEIGHTS_FILE)),
        tensors(&committed.join(PEFT_WEIGHTS_FILE)),
        "{adapter}: re-run KILN_WRITE_FIXTURES=1 and the fixture script"
    );
    let peft = read_json(&committed.join("transformers.json"));
    let ours = outputs(model, &peft);
    assert_close(&ours, &peft[key], &peft, adapter);
    let (reloaded, _) = import_peft(classifier(fixture), dir.path()).expect("re-imports");
    let mut model = model.clone();
    let converted = model.projections_mut().iter().any(|(_, p)| {
        p.lora.as_ref().is_some_and(|d| d.start.is_some())
            || p.adalora.as_ref().is_some_and(|d| d.final_keep.is_some())
    });
    if converted {
        // A PiSSA/OLoRA delta comes back relative to the original base, an AdaLoRA one without
        // its pruned triplets: the same function, summed in another order.
        assert_close(&outputs(&reloaded, &peft), &peft[key], &peft, adapter);
    } else {
        assert_eq!(outputs(&reloaded, &peft), ours, "{adapter}");
    }
    (export, config)
}

#[test]
fn kiln_lora_exports_load_in_peft_with_kiln_outputs() {
    for (fixture, adapter, key, task) in [
        ("bert-tiny", "kiln-bert-lora", "logits", "SEQ_CLS"),
        (
            "gpt2-tiny",
            "kiln-gpt2-lora",
            "last_hidden_state",
            "FEATURE_EXTRACTION",
        ),
    ] {
        let (export, config) = check_export(&kiln_lora(fixture), fixture, adapter, key);
        assert_eq!(export.task_type, task);
        assert_eq!(export.with_classifier, task == "SEQ_CLS");
        assert_eq!(config["r"], 4);
        assert_eq!(config["lora_alpha"], 8.0);
        assert_eq!(config["peft_type"], "LORA");
    }
}

#[test]
fn what_kiln_cannot_represent_is_refused_with_the_field() {
    let source = fixtures().join("peft/peft-bert-lora");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::copy(
        source.join(PEFT_WEIGHTS_FILE),
        dir.path().join(PEFT_WEIGHTS_FILE),
    )
    .expect("copy");
    let config = read_json(&source.join(PEFT_CONFIG_FILE));
    for (field, value, says) in [
        ("peft_type", Value::from("PROMPT_TUNING"), "peft_type"),
        (
            "init_lora_weights",
            Value::from("pissa"),
            "residual base weights",
        ),
        ("bias", Value::from("all"), "bias"),
    ] {
        let mut changed = config.clone();
        changed[field] = value;
        std::fs::write(dir.path().join(PEFT_CONFIG_FILE), changed.to_string()).expect("write");
        let error = import_lora(classifier("bert-tiny"), dir.path())
            .expect_err("refused")
            .to_string();
        assert!(error.contains(says), "{field}: {error}");
        assert!(error.contains(PEFT_CONFIG_FILE), "{error}");
    }
    // A classifier needs the model HF's class is: pooler readout, one linear layer.
    std::fs::write(dir.path().join(PEFT_CONFIG_FILE), config.to_string()).expect("write");
    let device = cpu();
    let pretrained = Pretrained::load(&fixtures().join("bert-tiny"), &device).expect("fixture");
    let head = HeadConfig {
        layers: 1,
        outputs: 2,
        dropout: 0.1,
    };
    let mean =
        SequenceClassifier::new(pretrained.backbone, Readout::Mean, head, &device).expect("model");
    let error = import_lora(mean, dir.path())
        .expect_err("refused")
        .to_string();
    assert!(error.contains("--readout pooler"), "{error}");
}

#[test]
fn merged_checkpoints_load_in_transformers_with_kiln_outputs() {
    for (fixture, merged, key, architecture) in [
        (
            "bert-tiny",
            "kiln-bert-merged",
            "logits",
            "BertForSequenceClassification",
        ),
        (
            "gpt2-tiny",
            "kiln-gpt2-merged",
            "last_hidden_state",
            "GPT2Model",
        ),
    ] {
        let model = kiln_lora(fixture);
        let base = fixtures().join(fixture);
        let committed = fixtures().join("peft").join(merged);
        let dir = tempfile::tempdir().expect("dir");
        let written = save_merged(&model, &base, dir.path(), None).expect("merges");
        assert_eq!(written.architecture, architecture);
        assert!(written.merged_deltas > 0);
        if writing_fixtures() {
            save_merged(&model, &base, &committed, None).expect("writes");
            continue;
        }
        assert_eq!(
            tensors(&dir.path().join("model.safetensors")),
            tensors(&committed.join("model.safetensors")),
            "{merged}: re-run KILN_WRITE_FIXTURES=1 and the fixture script"
        );
        // transformers, loading the merged directory with no kiln or peft code, gave the
        // unmerged kiln model's outputs.
        let hf = read_json(&committed.join("transformers.json"));
        assert_close(&outputs(&model, &hf), &hf[key], &hf, merged);
    }
    // Modules transformers has no class for are refused.
    let mut model = classifier("bert-tiny");
    kiln_tuning::MethodConfig::parse("pfeiffer", &[])
        .expect("method")
        .method()
        .prepare(&mut model)
        .expect("adapter");
    let dir = tempfile::tempdir().expect("dir");
    let error = save_merged(&model, &fixtures().join("bert-tiny"), dir.path(), None)
        .expect_err("refused")
        .to_string();
    assert!(error.contains("adapters"), "{error}");
}

/// Rows of `values` (`[examples, per_example]` flattened) for the example at `row`.
fn row(values: &[f32], examples: usize, row: usize) -> &[f32] {
    let width = values.len() / examples;
    &values[row * width..(row + 1) * width]
}

#[test]
fn several_lora_adapters_serve_one_base_and_a_mixed_batch_routes_each_example() {
    let peft_adapter = fixtures().join("peft/peft-bert-lora");
    let kiln_adapter = fixtures().join("peft/kiln-bert-lora");
    let mut model = classifier("bert-tiny");
    // Three examples: the fixture's two rows and the first again.
    let fixture = read_json(&peft_adapter.join("expected.json"));
    let mut inputs = fixture.clone();
    for key in ["input_ids", "attention_mask"] {
        let mut rows: Vec<Value> = fixture[key].as_array().expect("rows").clone();
        rows.push(rows[0].clone());
        inputs[key] = Value::from(rows);
    }
    let base = outputs(&model, &inputs);
    assert!(load_lora_adapter(&mut model, "peft", &peft_adapter).expect("loads"));
    assert!(load_lora_adapter(&mut model, "kiln", &kiln_adapter).expect("loads"));
    assert_eq!(model.lora_adapters, ["peft", "kiln"]);
    assert!(
        load_lora_adapter(&mut model, "kiln", &kiln_adapter).is_err(),
        "names are unique"
    );
    // Loaded adapters start inactive: the base's outputs.
    assert_eq!(outputs(&model, &inputs), base);

    model.set_active_lora(Some("peft")).expect("known");
    let peft_all = outputs(&model, &inputs);
    model.set_active_lora(Some("kiln")).expect("known");
    let kiln_all = outputs(&model, &inputs);
    assert_ne!(peft_all, kiln_all);
    // Served, an adapter gives what it gives in the model's own LoRA slots (the head is the
    // base model's here, so compare with an import whose head is the same).
    let (imported, _) = import_lora(classifier("bert-tiny"), &peft_adapter).expect("imports");
    let mut same_head = imported.clone();
    same_head.head = model.head.clone();
    let served = outputs(&same_head, &inputs);
    assert!(
        served
            .iter()
            .zip(&peft_all)
            .all(|(a, b)| (a - b).abs() < 1e-5)
    );

    // One mixed batch: each example through its own adapter, or none.
    model
        .route_lora(&[Some("peft"), Some("kiln"), None])
        .expect("known names");
    let mixed = outputs(&model, &inputs);
    for (i, want) in [&peft_all, &kiln_all, &base].iter().enumerate() {
        let (got, want) = (row(&mixed, 3, i), row(want, 3, i));
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "example {i}: {a} vs {b}");
        }
    }
    assert!(model.route_lora(&[Some("nope")]).is_err());

    // Deleting one keeps the other's routing; deleting the active one falls back to the base.
    model.set_active_lora(Some("kiln")).expect("known");
    model.delete_lora_adapter("peft").expect("deletes");
    assert_eq!(model.lora_adapters, ["kiln"]);
    assert_eq!(outputs(&model, &inputs), kiln_all);
    model.delete_lora_adapter("kiln").expect("deletes");
    assert_eq!(outputs(&model, &inputs), base);
    model.set_active_lora(None).expect("off");
    assert!(model.set_active_lora(Some("kiln")).is_err());
}

#[test]
fn peft_prompts_load_into_kiln_with_peft_outputs() {
    for (fixture, adapter, key) in [
        ("bert-tiny", "peft-bert-prompt", "logits"),
        ("gpt2-tiny", "peft-gpt2-prompt", "last_hidden_state"),
    ] {
        let dir = fixtures().join("peft").join(adapter);
        let expected = read_json(&dir.join("expected.json"));
        // Dispatched on `peft_type`.
        let (model, report) = import_peft(classifier(fixture), &dir).expect("imports");
        assert_eq!(report.trainable(), 3 * 32 + 32 * 2 + 2, "{adapter}");
        assert_close(
            &outputs(&model, &expected),
            &expected[key],
            &expected,
            adapter,
        );
    }
}

/// A prompt-tuning model with fixed virtual tokens and head, in peft's layout.
fn kiln_prompt(fixture: &str) -> SequenceClassifier {
    let mut model = classifier(fixture);
    let device = cpu();
    let initial = Tensor::<2>::zeros([3, 32], &device);
    let template = PromptTemplate {
        before: 3,
        after: 0,
        at_start: true,
    };
    model.add_prompt(template, initial, None).expect("prompt");
    map_params(model, &mut Deterministic(0, &["prompt", "head."]))
}

#[test]
fn kiln_prompts_export_to_peft_with_kiln_outputs() {
    for (fixture, adapter, key, task) in [
        ("bert-tiny", "kiln-bert-prompt", "logits", "SEQ_CLS"),
        (
            "gpt2-tiny",
            "kiln-gpt2-prompt",
            "last_hidden_state",
            "FEATURE_EXTRACTION",
        ),
    ] {
        let (export, _) = check_export(&kiln_prompt(fixture), fixture, adapter, key);
        assert_eq!(export.task_type, task);
    }
    // kiln's own BERT layout (after [CLS]) has no peft counterpart.
    let mut model = classifier("bert-tiny");
    let template = PromptTemplate {
        before: 3,
        after: 0,
        at_start: false,
    };
    model
        .add_prompt(template, Tensor::zeros([3, 32], &cpu()), None)
        .expect("prompt");
    let dir = tempfile::tempdir().expect("dir");
    let error = export_peft(&model, dir.path(), "x")
        .expect_err("refused")
        .to_string();
    assert!(error.contains("--prompt-at-start"), "{error}");
}

/// A GPT-2 classifier with P-tuning v2's deep prompts (3 rows per layer) in peft's layout.
fn kiln_prefix(prefix_positions: bool) -> SequenceClassifier {
    let mut model = classifier("gpt2-tiny");
    let positions = if prefix_positions { "true" } else { "false" };
    let options = [("prefix-len", "3"), ("prefix-positions", positions)];
    kiln_tuning::MethodConfig::parse("p-tuning-v2", &options)
        .expect("method")
        .method()
        .prepare(&mut model)
        .expect("prefix");
    map_params(model, &mut Deterministic(0, &[".adapters."]))
}

#[test]
fn peft_prefixes_load_into_gpt2_with_peft_outputs() {
    let dir = fixtures().join("peft/peft-gpt2-prefix");
    let expected = read_json(&dir.join("expected.json"));
    let (model, report) = import_peft(classifier("gpt2-tiny"), &dir).expect("imports");
    // Key and value rows, 3 per layer in both layers, plus the head.
    assert_eq!(report.trainable(), 2 * 2 * 3 * 32 + 32 * 2 + 2);
    let ours = outputs(&model, &expected);
    assert_close(&ours, &expected["last_hidden_state"], &expected, "prefix");
    // The positions matter: with the prefix taking none, the outputs are not peft's.
    let mut unshifted = model;
    unshifted
        .gpt2
        .as_mut()
        .expect("gpt2")
        .prefix_takes_positions = false;
    let other = outputs(&unshifted, &expected);
    assert!(ours.iter().zip(&other).any(|(a, b)| (a - b).abs() > 1e-2));
}

#[test]
fn kiln_prefixes_export_to_peft_with_kiln_outputs() {
    let (export, config) = check_export(
        &kiln_prefix(true),
        "gpt2-tiny",
        "kiln-gpt2-prefix",
        "last_hidden_state",
    );
    assert_eq!(export.task_type, "FEATURE_EXTRACTION");
    assert_eq!(config["peft_type"], "PREFIX_TUNING");
    assert_eq!(config["num_virtual_tokens"], 3);
    let dir = tempfile::tempdir().expect("dir");
    // Without peft's positions, or on BERT, there is no export.
    let error = export_peft(&kiln_prefix(false), dir.path(), "x")
        .expect_err("refused")
        .to_string();
    assert!(error.contains("--prefix-positions"), "{error}");
    let error = kiln_tuning::MethodConfig::parse("p-tuning-v2", &[("prefix-positions", "true")])
        .expect("method")
        .method()
        .prepare(&mut classifier("bert-tiny"))
        .expect_err("refused")
        .to_string();
    assert!(error.contains("GPT-2 only"), "{error}");
}

/// Texts inside both tiny vocabularies, of different lengths (so padding matters).
const PREDICT_TEXTS: [&str; 4] = [
    "the fire was long",
    "water",
    "some clay in the kiln when it was up",
    "sound of water and fire",
];

/// A LoRA model on `fixture` with `readout` and a head of `layers` linear layers, every trained
/// tensor deterministic.
fn kiln_lora_with_head(fixture: &str, readout: Readout, layers: usize) -> SequenceClassifier {
    let device = cpu();
    let pretrained = Pretrained::load(&fixtures().join(fixture), &device).expect("fixture");
    let head = HeadConfig {
        layers,
        outputs: 2,
        dropout: 0.1,
    };
    let mut model =
        SequenceClassifier::new(pretrained.backbone, readout, head, &device).expect("model");
    for (path, projection) in model.projections_mut() {
        if path.ends_with("attention.query") || path.ends_with("attention.c_attn") {
            projection.add_lora(LowRankConfig::new(2, 4.0, 0.1));
        }
    }
    map_params(model, &mut Deterministic(7, &[".lora.", "head."]))
}

/// `kiln predict`'s predictor on merged and exported models whose head transformers cannot hold
/// (mean, `[CLS]` and last-token readouts, a two-layer head) and on one it can (pooler): the
/// README's own Python function, run on the committed folder by the fixture script, gave the
/// same labels and probabilities.
#[test]
fn predictions_match_the_readme_functions_in_transformers_and_peft() {
    use kiln_data::TaskKind;
    use kiln_models::{PaddingSide, TextInput};
    use kiln_train::head_files::{HEAD_WEIGHTS_FILE, HeadFile, README_FILE, Written, write_beside};
    use kiln_train::predict::{Prediction, Predictor};

    let labels = vec!["fire".to_string(), "water".to_string()];
    let kind = TaskKind::Classification {
        labels: labels.clone(),
    };
    for (fixture, readout, layers, name, peft) in [
        (
            "bert-tiny",
            Readout::Mean,
            2,
            "kiln-bert-mean-merged",
            false,
        ),
        ("bert-tiny", Readout::Cls, 1, "kiln-bert-cls-lora", true),
        (
            "gpt2-tiny",
            Readout::Last,
            1,
            "kiln-gpt2-last-merged",
            false,
        ),
        (
            "bert-tiny",
            Readout::Pooler,
            1,
            "kiln-bert-pooler-merged",
            false,
        ),
    ] {
        let model = kiln_lora_with_head(fixture, readout, layers);
        let base = fixtures().join(fixture);
        let committed = fixtures().join("peft").join(name);
        let dir = tempfile::tempdir().expect("dir");
        let out = if writing_fixtures() {
            committed.clone()
        } else {
            dir.path().to_path_buf()
        };
        let written = if peft {
            let export =
                export_peft(&model, &out, &format!("fixtures/{fixture}")).expect("exports");
            Written::Peft {
                peft_type: "LORA".into(),
                task_type: export.task_type,
                base_model: format!("fixtures/{fixture}"),
            }
        } else {
            let merged = save_merged(&model, &base, &out, Some(HeadLabels::Classes(&labels)))
                .expect("merges");
            Written::Merged {
                architecture: merged.architecture,
            }
        };
        let head = HeadFile {
            readout,
            hidden_layers: layers - 1,
            labels: Some(labels.clone()),
            multi_label: false,
            threshold: None,
            max_len: 16,
            virtual_tokens: 0,
        };
        let apart = write_beside(&model, &out, &written, &head).expect("head files");
        assert_eq!(apart, readout != Readout::Pooler, "{name}");
        assert!(out.join(README_FILE).is_file());
        let mut tokenizer = Pretrained::load(&base, &cpu()).expect("fixture").tokenizer;
        tokenizer.configure(16, PaddingSide::Right).expect("length");
        let inputs: Vec<TextInput> = PREDICT_TEXTS.iter().map(|&t| t.into()).collect();
        let valid = model.valid();
        let predictions = Predictor {
            model: &valid,
            tokenizer: &tokenizer,
            kind: &kind,
            device: &cpu(),
            batch_size: 3,
            threshold: 0.5,
        }
        .predict(&inputs)
        .expect("predicts");
        if writing_fixtures() {
            continue;
        }
        if apart {
            assert_eq!(
                tensors(&out.join(HEAD_WEIGHTS_FILE)),
                tensors(&committed.join(HEAD_WEIGHTS_FILE)),
                "{name}: re-run KILN_WRITE_FIXTURES=1 and the fixture script"
            );
        }
        if !peft {
            let config = read_json(&out.join("config.json"));
            if !apart {
                assert_eq!(config["id2label"]["1"], "water", "{name}");
                assert_eq!(config["label2id"]["fire"], 0, "{name}");
            }
        }
        let python = read_json(&committed.join("readme_predictions.json"));
        assert_eq!(python["texts"], serde_json::json!(PREDICT_TEXTS), "{name}");
        for (i, prediction) in predictions.iter().enumerate() {
            let Prediction::Class {
                label,
                probabilities,
            } = prediction
            else {
                panic!("a class");
            };
            assert_eq!(
                python["labels"][i].as_str(),
                Some(label.as_str()),
                "{name}: text {i}"
            );
            let logits: Vec<f32> = python["logits"][i]
                .as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_f64().expect("number") as f32)
                .collect();
            let top = logits.iter().copied().fold(f32::MIN, f32::max);
            let sum: f32 = logits.iter().map(|l| (l - top).exp()).sum();
            for (p, l) in probabilities.iter().zip(&logits) {
                let theirs = (l - top).exp() / sum;
                assert!(
                    (p - theirs).abs() < 1e-5,
                    "{name}: text {i}: kiln {p} vs Python {theirs}"
                );
            }
        }
    }
}

/// The `[rows, cols]` block of rows `first..first + rows` of a PyTorch `[_, cols]` matrix, as
/// kiln's `[cols, rows]` weight.
fn torch_rows(raw: &kiln_models::weights::RawTensor, first: usize, rows: usize) -> Tensor<2> {
    let cols = raw.shape[1];
    let block = raw.values[first * cols..(first + rows) * cols].to_vec();
    Tensor::<2>::from_data(TensorData::new(block, [rows, cols]), &cpu()).transpose()
}

fn vector(values: &[f32]) -> Param<Tensor<1>> {
    Param::from_tensor(Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        &cpu(),
    ))
}

/// peft's `PromptEncoder` state dict loaded into kiln's encoder: PyTorch's LSTM keeps the four
/// gates (input, forget, cell, output) stacked in `weight_ih_l{k}` / `weight_hh_l{k}` with two
/// biases each; Burn's LSTM has a linear pair per gate.
fn load_prompt_encoder(encoder: &mut PromptEncoder, file: &WeightFile) {
    let get = |name: &str| file.get(name).unwrap_or_else(|| panic!("`{name}`")).clone();
    for (layer, lstm) in encoder.lstm.iter_mut().enumerate() {
        for (suffix, direction) in [("", &mut lstm.forward), ("_reverse", &mut lstm.reverse)] {
            let w_ih = get(&format!("lstm_head.weight_ih_l{layer}{suffix}"));
            let w_hh = get(&format!("lstm_head.weight_hh_l{layer}{suffix}"));
            let b_ih = get(&format!("lstm_head.bias_ih_l{layer}{suffix}"));
            let b_hh = get(&format!("lstm_head.bias_hh_l{layer}{suffix}"));
            let h = w_hh.shape[1];
            let forget = direction.forget_gate.as_mut().expect("a forget gate");
            let gates = [
                &mut direction.input_gate,
                forget,
                &mut direction.cell_gate,
                &mut direction.output_gate,
            ];
            for (k, gate) in gates.into_iter().enumerate() {
                gate.input_transform.weight = Param::from_tensor(torch_rows(&w_ih, k * h, h));
                gate.input_transform.bias = Some(vector(&b_ih.values[k * h..(k + 1) * h]));
                gate.hidden_transform.weight = Param::from_tensor(torch_rows(&w_hh, k * h, h));
                gate.hidden_transform.bias = Some(vector(&b_hh.values[k * h..(k + 1) * h]));
            }
        }
    }
    for (k, linear) in encoder.mlp.iter_mut().enumerate() {
        // peft's Sequential puts a ReLU between the linear layers: indices 0, 2, 4.
        let weight = get(&format!("mlp_head.{}.weight", 2 * k));
        linear.weight = Param::from_tensor(torch_rows(&weight, 0, weight.shape[0]));
        linear.bias = Some(vector(&get(&format!("mlp_head.{}.bias", 2 * k)).values));
    }
}

#[test]
fn p_tuning_encoders_compute_what_pefts_compute() {
    let dir = fixtures().join("peft").join("peft-p-tuning");
    let expected = read_json(&dir.join("expected.json"));
    for (kind, lstm) in [("lstm", true), ("mlp", false)] {
        let file = WeightFile::open(&dir.join(format!("{kind}.safetensors"))).expect("weights");
        let shape = PromptEncoderShape {
            lstm,
            hidden: 16,
            lstm_layers: 2,
        };
        let mut encoder = PromptEncoder::new(32, shape, &cpu());
        assert_eq!(
            encoder.num_params(),
            file.names()
                .filter(|n| *n != "embedding.weight")
                .map(|n| file.get(n).expect("listed").values.len())
                .sum::<usize>(),
            "{kind}: peft's encoder has exactly kiln's parameters"
        );
        load_prompt_encoder(&mut encoder, &file);
        let embedding = file.get("embedding.weight").expect("embedding");
        let tokens =
            Tensor::<2>::from_data(TensorData::new(embedding.values.clone(), [4, 32]), &cpu());
        let ours: Vec<f32> = encoder
            .forward(tokens)
            .into_data()
            .try_to_vec::<f32>()
            .expect("floats");
        // `[n, h]` embeddings: every element compares (no token mask applies).
        let inputs = serde_json::json!({"attention_mask": [[1, 1, 1, 1]]});
        assert_close(
            &ours,
            &expected[kind],
            &inputs,
            &format!("p-tuning {kind} encoder"),
        );
    }
}
