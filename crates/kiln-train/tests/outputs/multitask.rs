//! Several tasks' adapters in one pass (`kiln_train::multitask`, AdapterHub's Parallel block):
//! each task's outputs are what it gives on its own, AdapterDrop's lower layers included, and
//! AdapterHub's own Parallel outputs (heads per copy of the batch) are reproduced.

use kiln_data::TaskKind;
use kiln_models::{BertInput, HeadConfig, Pretrained, Readout, SequenceClassifier};
use kiln_testkit::{cpu, fixtures};
use kiln_train::adapterhub::{load_adapterhub, read_adapterhub_config};
use kiln_train::multitask::ParallelTasks;
use kiln_tuning::MethodConfig;

use crate::common::{assert_close, ids, read_json};

fn kind(classes: usize) -> TaskKind {
    TaskKind::Classification {
        labels: (0..classes).map(|c| format!("c{c}")).collect(),
    }
}

fn classifier(fixture: &str, readout: Readout) -> (SequenceClassifier, Pretrained) {
    let device = cpu();
    let pretrained = Pretrained::load(&fixtures().join(fixture), &device).expect("fixture");
    let head = HeadConfig {
        layers: 1,
        outputs: 3,
        dropout: 0.0,
    };
    let backbone = Pretrained::load(&fixtures().join(fixture), &device)
        .expect("fixture")
        .backbone;
    let model = SequenceClassifier::new(backbone, readout, head, &device).expect("classifier");
    (model, pretrained)
}

fn floats(t: burn::tensor::Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("floats")
}

#[test]
fn parallel_tasks_give_each_tasks_own_outputs_with_and_without_adapter_drop() {
    let device = cpu();
    for (fixture, readout, method) in [
        ("bert-tiny", Readout::Mean, "pfeiffer"),
        ("bert-tiny", Readout::Cls, "compacter++"),
        ("bert-tiny", Readout::Mean, "houlsby"),
        ("gpt2-tiny", Readout::Last, "pfeiffer"),
    ] {
        let (base, pretrained) = classifier(fixture, readout);
        let method = MethodConfig::parse(method, &[("reduction-factor", "4")]).expect("method");
        let mut models = Vec::new();
        for _ in 0..3 {
            let (mut model, _) = method.apply(base.clone()).expect("applies");
            // Different adapters and heads per task, and adapters that matter.
            model = burn::module::Module::valid(&model);
            model.head = HeadConfig {
                layers: 1,
                outputs: 3,
                dropout: 0.0,
            }
            .init(model.hidden_size(), &device)
            .expect("head");
            models.push(model);
        }
        let singles: Vec<SequenceClassifier> = models.clone();
        let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let mut tasks = ParallelTasks::new(names, models, vec![kind(3); 3], pretrained.tokenizer)
            .expect("tasks");
        let encoded = tasks
            .tokenizer
            .encode_batch(&[
                kiln_models::TextInput::Single("hello world".into()),
                kiln_models::TextInput::Single("a longer text than the other one".into()),
            ])
            .expect("encodes");
        let input: BertInput = encoded.bert_input(&device);
        for drop in [0, 1] {
            tasks.set_adapter_drop(drop).expect("drop");
            let together = tasks.forward(input.clone());
            let apart = tasks.forward_one_by_one(input.clone()).expect("one by one");
            for (i, (a, b)) in together.into_iter().zip(apart).enumerate() {
                let (a, b) = (floats(a), floats(b));
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() < 1e-5,
                        "{fixture} task {i} drop {drop}: {x} vs {y}"
                    );
                }
                if drop == 0 {
                    // And each is what the task's own model says.
                    let own = floats(singles[i].forward(input.clone()));
                    for (x, y) in a.iter().zip(&own) {
                        assert!(
                            (x - y).abs() < 1e-5,
                            "{fixture} task {i}: {x} vs its own {y}"
                        );
                    }
                }
            }
        }
        assert!(
            tasks.set_adapter_drop(3).is_err(),
            "the tiny models have 2 layers"
        );
    }
}

#[test]
fn parallel_heads_give_adapterhubs_logits() {
    let dir = fixtures().join("adapterhub").join("ah-bert-compose");
    let recorded = read_json(&dir.join("compositions.json"));
    let mut models = Vec::new();
    for name in ["a", "b"] {
        let (mut model, _) = classifier("bert-tiny", Readout::Cls);
        let adapter = read_adapterhub_config(&dir.join(name)).expect("config");
        model.add_adapter(name, &adapter.layout).expect("adds");
        load_adapterhub(&mut model, name, &dir.join(name)).expect("loads");
        models.push(model);
    }
    let (_, pretrained) = classifier("bert-tiny", Readout::Cls);
    let names = vec!["a".to_string(), "b".to_string()];
    let tasks =
        ParallelTasks::new(names, models, vec![kind(3); 2], pretrained.tokenizer).expect("tasks");
    let input_ids = ids(&recorded, "input_ids");
    let input = BertInput {
        token_type_ids: input_ids.zeros_like(),
        attention_mask: ids(&recorded, "attention_mask"),
        input_ids,
    };
    // AdapterHub's logits are head a's on the first copy of the batch, then head b's.
    let logits: Vec<f32> = tasks.forward(input).into_iter().flat_map(floats).collect();
    assert_close(
        &logits,
        &recorded["parallel"]["logits"],
        &recorded,
        "parallel heads",
    );
}

#[test]
fn compositions_are_parsed_and_refused_with_the_reason() {
    let (mut model, _) = classifier("bert-tiny", Readout::Mean);
    for name in ["lang", "a", "b"] {
        let pfeiffer = MethodConfig::parse("pfeiffer", &[("adapter-name", name)]).expect("method");
        pfeiffer.method().prepare(&mut model).expect("adds");
    }
    let parsed = model
        .parse_composition("stack(lang, parallel(a, b))")
        .expect("parses");
    model.set_composition(parsed).expect("sets");
    assert!(model.composition().is_some());
    model.check_composition_batch(3).expect("no split");
    let split = model
        .parse_composition("batch-split(a, b; 2, 1)")
        .expect("parses");
    model.set_composition(split).expect("sets");
    let err = model
        .check_composition_batch(4)
        .expect_err("3 rows of 4")
        .to_string();
    assert!(err.contains("add up to 3"), "{err}");
    for (text, needle) in [
        ("stack(a, zzz)", "no adapter called `zzz`"),
        ("stack(a, stack(b))", "cannot be nested"),
        (
            "parallel(a, parallel(a, b))",
            "cannot be nested in parallel",
        ),
        ("average(a, b; 1)", "one finite weight per adapter"),
        ("batch-split(a, b; 1.5, 2)", "whole number"),
        ("shuffle(a, b)", "unknown block `shuffle`"),
        ("stack(a, b", "expected `)`"),
        ("stack(a, b) c", "nothing may follow"),
    ] {
        let err = model.parse_composition(text).expect_err(text).to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
    // A prefix adapter is no sequential bottleneck.
    let mam =
        MethodConfig::parse("mam", &[("prefix-hidden", "0"), ("prefix-len", "2")]).expect("method");
    mam.method().prepare(&mut model).expect("adds");
    let parsed = model.parse_composition("parallel(a, mam)").expect("parses");
    let err = model.set_composition(parsed).expect_err("MAM").to_string();
    assert!(
        err.contains("`mam` is not a sequential bottleneck adapter"),
        "{err}"
    );
}
