//! Bottleneck adapters, MAM and AdapterFusion in AdapterHub's format, both ways, against
//! fixtures written by `scripts/make_adapterhub_fixtures.py` (adapters 1.3.0, transformers
//! 4.57): adapters the library made load into kiln and give its outputs (which pins kiln's
//! Pfeiffer, Houlsby, parallel, MAM, AdapterDrop, fusion, Compacter, LoReFT, UniPELT and
//! composition semantics to the reference implementation); adapters kiln writes are what that
//! script loaded with `load_adapter` and recorded outputs for. `KILN_WRITE_FIXTURES=1` rewrites
//! kiln's side (then re-run the script).

use std::path::{Path, PathBuf};

use burn::module::Module;
use serde_json::Value;

use kiln_models::paths::map_params;
use kiln_models::{BertInput, HeadConfig, Pretrained, Readout, SequenceClassifier};
use kiln_testkit::{cpu, fixtures};
use kiln_train::adapterhub::{
    ADAPTERHUB_CONFIG_FILE, ADAPTERHUB_HEAD_WEIGHTS_FILE, ADAPTERHUB_WEIGHTS_FILE,
    AdapterHubExport, export_adapterhub, export_adapterhub_fusion, import_adapterhub,
    is_adapterhub_dir, load_adapterhub, load_adapterhub_fusion, method_from_adapterhub,
    read_adapterhub_config,
};
use kiln_tuning::MethodConfig;

use crate::common::{Deterministic, assert_close, ids, read_json, tensors, writing_fixtures};

fn fixture_dir(name: &str) -> PathBuf {
    fixtures().join("adapterhub").join(name)
}

/// The tiny BERT reading `readout` into a one-layer head of `outputs`.
fn bert(readout: Readout, outputs: usize) -> SequenceClassifier {
    let device = cpu();
    let pretrained = Pretrained::load(&fixtures().join("bert-tiny"), &device).expect("fixture");
    let head = HeadConfig {
        layers: 1,
        outputs,
        dropout: 0.1,
    };
    SequenceClassifier::new(pretrained.backbone, readout, head, &device).expect("classifier")
}

fn input(inputs: &Value) -> BertInput {
    let input_ids = ids(inputs, "input_ids");
    BertInput {
        token_type_ids: input_ids.zeros_like(),
        attention_mask: ids(inputs, "attention_mask"),
        input_ids,
    }
}

/// The base model's last hidden state under the active adapters.
fn hidden(model: &SequenceClassifier, inputs: &Value) -> Vec<f32> {
    let model = model.valid();
    let bert = model.bert.as_ref().expect("a BERT model");
    bert.forward(input(inputs))
        .last_hidden_state
        .flatten::<1>(0, 2)
        .into_data()
        .try_to_vec::<f32>()
        .expect("floats")
}

fn logits(model: &SequenceClassifier, inputs: &Value) -> Vec<f32> {
    model
        .valid()
        .forward(input(inputs))
        .flatten::<1>(0, 1)
        .into_data()
        .try_to_vec::<f32>()
        .expect("floats")
}

/// Checks the last hidden state (and the logits, where recorded) against `want`.
fn assert_outputs(model: &SequenceClassifier, want: &Value, inputs: &Value, what: &str) {
    let state = &want["last_hidden_state"];
    assert_close(&hidden(model, inputs), state, inputs, what);
    if !want["logits"].is_null() {
        assert_close(&logits(model, inputs), &want["logits"], inputs, what);
    }
}

/// Builds the kiln method an AdapterHub directory asks for and fills it from the directory.
fn imported(dir: &Path, method: &str, readout: Readout, outputs: usize) -> SequenceClassifier {
    let method = method_from_adapterhub(method, dir).expect("a method");
    let (model, _) = method.apply(bert(readout, outputs)).expect("applies");
    import_adapterhub(model, &method, dir).expect("imports").0
}

#[test]
fn adapterhub_adapters_load_into_kiln_with_the_librarys_outputs() {
    for (adapter, method) in [
        ("ah-bert-pfeiffer", "pfeiffer"),
        ("ah-bert-houlsby", "houlsby"),
        ("ah-bert-parallel", "parallel"),
        ("ah-bert-drop", "adapter-drop"),
        ("ah-bert-mam", "mam"),
        ("ah-bert-compacter++", "compacter++"),
        ("ah-bert-compacter", "compacter"),
        ("ah-bert-loreft", "loreft"),
        ("ah-bert-loreft-tied", "loreft"),
        ("ah-bert-unipelt", "unipelt"),
    ] {
        let dir = fixture_dir(adapter);
        assert!(is_adapterhub_dir(&dir), "{adapter}");
        let expected = read_json(&dir.join("expected.json"));
        // The Pfeiffer fixture carries AdapterHub's default head: 2 layers, tanh, [CLS], 3 labels.
        let model = imported(&dir, method, Readout::Cls, 3);
        assert_outputs(&model, &expected, &expected, adapter);
    }
    // The head arrived with its own shape and non-linearity.
    let pfeiffer = imported(
        &fixture_dir("ah-bert-pfeiffer"),
        "pfeiffer",
        Readout::Cls,
        3,
    );
    assert_eq!(pfeiffer.head.hidden.len(), 1);
    assert_eq!(pfeiffer.head.activation, kiln_models::Activation::Tanh);
}

#[test]
fn an_adapterhub_fusion_loads_into_kiln_with_the_librarys_outputs() {
    let dir = fixture_dir("ah-bert-fusion");
    let expected = read_json(&dir.join("expected.json"));
    let mut model = bert(Readout::Cls, 2);
    for name in ["a", "b"] {
        let adapter = read_adapterhub_config(&dir.join(name)).expect("config");
        model.add_adapter(name, &adapter.layout).expect("adds");
        load_adapterhub(&mut model, name, &dir.join(name)).expect("loads");
    }
    model.add_fusion(None, 0.01).expect("fuses");
    load_adapterhub_fusion(&mut model, &dir.join("fusion")).expect("loads the fusion");
    assert_outputs(&model, &expected, &expected, "ah-bert-fusion");
}

/// kiln's own adapters with fixed weights: each method's shape, the tensors deterministic.
fn kiln_adapter(method: &str, options: &[(&str, &str)], readout: Readout) -> SequenceClassifier {
    let method = MethodConfig::parse(method, options).expect("method");
    let (model, _) = method.apply(bert(readout, 3)).expect("applies");
    // UniPELT's gated LoRA deltas sit on the projections.
    map_params(
        model,
        &mut Deterministic(0, &[".adapters.", ".lora.", "head."]),
    )
}

fn kiln_fusion() -> SequenceClassifier {
    let mut model = bert(Readout::Cls, 2);
    for name in ["a", "b"] {
        let pfeiffer = MethodConfig::parse(
            "pfeiffer",
            &[("reduction-factor", "8"), ("adapter-name", name)],
        )
        .expect("method");
        let (with_adapter, _) = pfeiffer.apply(model).expect("applies");
        model = with_adapter;
    }
    model.add_fusion(None, 0.01).expect("fuses");
    map_params(model, &mut Deterministic(7, &[".adapters.", "head."]))
}

/// One safetensors file's tensors: name, shape, bytes.
type Tensors = Vec<(String, Vec<usize>, Vec<u8>)>;

/// Every safetensors file under `dir`, by relative path, with its tensors.
fn all_tensors(dir: &Path) -> Vec<(String, Tensors)> {
    let mut found = Vec::new();
    for entry in walk(dir) {
        if entry.extension().is_some_and(|e| e == "safetensors") {
            let name = entry
                .strip_prefix(dir)
                .expect("inside")
                .display()
                .to_string();
            found.push((name, tensors(&entry)));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn export(model: &SequenceClassifier, name: Option<&str>, out: &Path) {
    match name {
        Some(name) => {
            export_adapterhub(model, name, out, "fixtures/bert-tiny").expect("exports");
        }
        None => {
            export_adapterhub_fusion(model, out, "fixtures/bert-tiny").expect("exports");
        }
    }
}

#[test]
fn kiln_adapters_export_to_adapterhub_with_kiln_outputs() {
    let cases: Vec<(&str, Option<&str>, SequenceClassifier)> = vec![
        (
            "kiln-bert-pfeiffer",
            Some("pfeiffer"),
            kiln_adapter("pfeiffer", &[("reduction-factor", "8")], Readout::Cls),
        ),
        (
            "kiln-bert-houlsby",
            Some("houlsby"),
            kiln_adapter("houlsby", &[("reduction-factor", "8")], Readout::Pooler),
        ),
        (
            "kiln-bert-parallel",
            Some("parallel"),
            kiln_adapter("parallel", &[("reduction-factor", "8")], Readout::Mean),
        ),
        (
            "kiln-bert-drop",
            Some("adapter-drop"),
            kiln_adapter(
                "adapter-drop",
                &[("reduction-factor", "8"), ("drop-layers", "1")],
                Readout::Mean,
            ),
        ),
        (
            "kiln-bert-mam",
            Some("mam"),
            kiln_adapter(
                "mam",
                &[
                    ("reduction-factor", "8"),
                    ("prefix-len", "3"),
                    ("prefix-hidden", "0"),
                ],
                Readout::Mean,
            ),
        ),
        ("kiln-bert-fusion", None, kiln_fusion()),
        (
            "kiln-bert-compacter++",
            Some("compacter++"),
            kiln_adapter("compacter++", &[("reduction-factor", "4")], Readout::Mean),
        ),
        (
            "kiln-bert-loreft",
            Some("loreft"),
            kiln_adapter(
                "loreft",
                &[
                    ("reft-prefix", "2"),
                    ("reft-suffix", "2"),
                    ("reft-rank", "2"),
                ],
                Readout::Mean,
            ),
        ),
        (
            "kiln-bert-unipelt",
            Some("unipelt"),
            kiln_adapter(
                "unipelt",
                &[
                    ("reduction-factor", "8"),
                    ("rank", "4"),
                    ("prefix-len", "3"),
                    ("prefix-hidden", "0"),
                ],
                Readout::Cls,
            ),
        ),
    ];
    let inputs = read_json(&fixture_dir("ah-bert-pfeiffer").join("expected.json"));
    for (fixture, name, model) in cases {
        let committed = fixture_dir(fixture);
        if writing_fixtures() {
            let _ = std::fs::remove_dir_all(&committed);
            export(&model, name, &committed);
            continue;
        }
        let dir = tempfile::tempdir().expect("dir");
        export(&model, name, dir.path());
        assert_eq!(
            all_tensors(dir.path()),
            all_tensors(&committed),
            "{fixture}: re-run KILN_WRITE_FIXTURES=1 and the fixture script"
        );
        // What AdapterHub gave with these files is what kiln gives.
        let recorded = read_json(&committed.join("transformers.json"));
        assert_outputs(&model, &recorded, &inputs, fixture);
        // And the export reads back into kiln to the same outputs.
        if let Some(method) = name {
            let back = imported(dir.path(), method, model.readout, 3);
            assert_outputs(&back, &recorded, &inputs, &format!("{fixture} read back"));
        }
    }
}

#[test]
fn a_head_adapterhub_cannot_hold_is_left_out_and_said() {
    let model = kiln_adapter("pfeiffer", &[("reduction-factor", "8")], Readout::Mean);
    let dir = tempfile::tempdir().expect("dir");
    let written: AdapterHubExport =
        export_adapterhub(&model, "pfeiffer", dir.path(), "base").expect("exports");
    assert!(!written.with_head);
    assert!(dir.path().join(ADAPTERHUB_WEIGHTS_FILE).is_file());
    assert!(!dir.path().join(ADAPTERHUB_HEAD_WEIGHTS_FILE).exists());
}

#[test]
fn what_kiln_cannot_represent_is_refused_with_the_field() {
    let source = fixture_dir("ah-bert-pfeiffer");
    let dir = tempfile::tempdir().expect("dir");
    for file in ["adapter.safetensors", "adapter_config.json"] {
        std::fs::copy(source.join(file), dir.path().join(file)).expect("copy");
    }
    let config_path = dir.path().join(ADAPTERHUB_CONFIG_FILE);
    let original = read_json(&config_path);
    for (field, value) in [
        ("use_gating", serde_json::json!(true)),
        ("ln_after", serde_json::json!(true)),
        ("scaling", serde_json::json!("learned")),
        (
            "reduction_factor",
            serde_json::json!({"default": 8, "0": 4}),
        ),
    ] {
        let mut config = original.clone();
        config["config"][field] = value;
        std::fs::write(&config_path, config.to_string()).expect("write");
        let err = method_from_adapterhub("pfeiffer", dir.path())
            .expect_err(field)
            .to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
    // PHM layers only as Compacter makes them.
    for (field, value) in [
        ("factorized_phm_rule", true),
        ("shared_phm_rule", false),
        ("shared_W_phm", true),
    ] {
        let mut config = original.clone();
        config["config"]["phm_layer"] = serde_json::json!(true);
        config["config"][field] = serde_json::json!(value);
        std::fs::write(&config_path, config.to_string()).expect("write");
        let err = read_adapterhub_config(dir.path())
            .expect_err(field)
            .to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
    // The method must be the adapter's.
    std::fs::write(&config_path, original.to_string()).expect("write");
    let err = method_from_adapterhub("houlsby", dir.path())
        .expect_err("a Pfeiffer adapter is not Houlsby's")
        .to_string();
    assert!(err.contains("--method pfeiffer"), "{err}");
    // A GPT-2 model is refused by name.
    let gpt2 = Pretrained::load(&fixtures().join("gpt2-tiny"), &cpu()).expect("gpt2");
    let head = HeadConfig {
        layers: 1,
        outputs: 2,
        dropout: 0.0,
    };
    let mut model =
        SequenceClassifier::new(gpt2.backbone, Readout::Last, head, &cpu()).expect("model");
    let err = load_adapterhub(&mut model, "pfeiffer", dir.path())
        .expect_err("GPT-2")
        .to_string();
    assert!(err.contains("gpt2"), "{err}");
}

/// Two SeqBn adapters with AdapterHub's heads, composed as AdapterHub composes them: every
/// block's last hidden state, and the heads' logits of Stack (the last adapter's head).
#[test]
fn compositions_give_adapterhubs_outputs() {
    let dir = fixture_dir("ah-bert-compose");
    let recorded = read_json(&dir.join("compositions.json"));
    let mut model = bert(Readout::Cls, 3);
    for name in ["a", "b"] {
        let adapter = read_adapterhub_config(&dir.join(name)).expect("config");
        model.add_adapter(name, &adapter.layout).expect("adds");
        // The last one loaded leaves its head: b's, the head of Stack(a, b).
        load_adapterhub(&mut model, name, &dir.join(name)).expect("loads");
    }
    for (key, spec) in [
        ("stack", "stack(a, b)"),
        ("parallel", "parallel(a, b)"),
        ("batch_split", "batch-split(a, b; 1, 1)"),
        // AdapterHub's weights [1, 3] normalised, and divided once more by the number of
        // adapters as its `mean` does: a weighted sum with 1/8 and 3/8.
        ("average", "weighted-sum(a, b; 0.125, 0.375)"),
    ] {
        let composition = model.parse_composition(spec).expect(spec);
        model.set_composition(composition).expect(spec);
        model.check_composition_batch(2).expect(spec);
        let want = &recorded[key];
        assert_close(
            &hidden(&model, &recorded),
            &want["last_hidden_state"],
            &recorded,
            key,
        );
        if key == "stack" {
            assert_close(&logits(&model, &recorded), &want["logits"], &recorded, key);
        }
    }
}
