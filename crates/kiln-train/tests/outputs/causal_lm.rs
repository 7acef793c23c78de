//! The language-model objective against transformers and peft
//! (`scripts/make_causal_lm_fixture.py`): on the tiny GPT-2, kiln's next-token loss of two blocks
//! equals `GPT2LMHeadModel`'s with `labels=input_ids`, bare and under peft CAUSAL_LM adapters
//! (LoRA, prompt tuning, prefix tuning) imported into kiln's methods; greedy generation with each
//! adapter gives peft's tokens, with the key/value cache and without.

use burn::module::Module;
use serde_json::Value;

use kiln_models::{HeadConfig, Pretrained, Readout, SequenceClassifier};
use kiln_testkit::{cpu, fixtures};
use kiln_train::TaskModel;
use kiln_train::causal_lm::{LanguageModeling, language_model_trainable};
use kiln_train::generate::{GenerateSettings, generate_ids};
use kiln_train::peft::{import_peft, method_from_adapter};
use kiln_tuning::MethodConfig;

use crate::common::read_json;

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("ids")
        .iter()
        .map(|t| t.as_u64().expect("id") as u32)
        .collect()
}

/// The tiny GPT-2 with `method` (from the peft adapter `adapter` when given), its trainable set
/// set for language modelling.
fn model(method: &str, adapter: Option<&str>) -> (SequenceClassifier, kiln_tuning::ParamReport) {
    let device = cpu();
    let pretrained = Pretrained::load(&fixtures().join("gpt2-tiny"), &device).expect("fixture");
    let head = HeadConfig {
        layers: 1,
        outputs: 1,
        dropout: 0.0,
    };
    let classifier =
        SequenceClassifier::new(pretrained.backbone, Readout::Last, head, &device).expect("model");
    let config = match adapter {
        Some(dir) => {
            method_from_adapter(method, &fixtures().join("peft").join(dir)).expect("adapter")
        }
        None => MethodConfig::parse(method, &[]).expect("method"),
    };
    let (mut model, _) = config.apply(classifier).expect("applies");
    if let Some(dir) = adapter {
        model = import_peft(model, &fixtures().join("peft").join(dir))
            .expect("imports")
            .0;
    }
    language_model_trainable(model, &config).expect("a language-model method")
}

#[test]
fn next_token_loss_and_greedy_tokens_match_transformers_and_peft() {
    let device = cpu();
    let reference = read_json(&fixtures().join("reference/gpt2_causal_lm.json"));
    let blocks: Vec<Vec<u32>> = reference["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .map(ids)
        .collect();
    let blocks: Vec<&Vec<u32>> = blocks.iter().collect();
    let prompt = ids(&reference["generation_prompt"]);
    let new_tokens = reference["new_tokens"].as_u64().expect("count") as usize;
    for (case, method, adapter) in [
        ("base", "full", None),
        ("lora", "lora", Some("peft-gpt2-clm-lora")),
        ("prompt", "prompt", Some("peft-gpt2-clm-prompt")),
        ("prefix", "p-tuning-v2", Some("peft-gpt2-clm-prefix")),
    ] {
        let (model, _) = model(method, adapter);
        let model = model.valid();
        let metrics =
            TaskModel::<LanguageModeling>::evaluate(&model, &LanguageModeling, &blocks, &device, 8)
                .expect("evaluates");
        let want = reference[case]["loss"].as_f64().expect("loss");
        assert!(
            (metrics.loss - want).abs() < 1e-4,
            "{case}: kiln {} vs transformers {want}",
            metrics.loss
        );
        assert_eq!(metrics.perplexity, Some(metrics.loss.exp()));
        let gpt2 = model.gpt2.as_ref().expect("GPT-2");
        for cache in [true, false] {
            let settings = GenerateSettings {
                max_new_tokens: new_tokens,
                cache,
                ..GenerateSettings::default()
            };
            let (tokens, _) =
                generate_ids(gpt2, &prompt, &settings, None, &device).expect("generates");
            assert_eq!(
                tokens,
                ids(&reference[case]["generated"]),
                "{case}, cache {cache}"
            );
        }
    }
}

#[test]
fn the_trainable_set_leaves_the_head_out_and_head_only_methods_are_refused() {
    let (_, report) = model("lora", None);
    let trainable = report.trainable_paths();
    assert!(!trainable.is_empty());
    assert!(
        trainable.iter().all(|p| p.contains(".lora.")),
        "{trainable:?}"
    );
    assert!(report.entries.iter().all(|e| !e.path.starts_with("head.")));

    let (_, report) = model("full", None);
    assert_eq!(
        report.trainable(),
        report.total(),
        "full trains the whole GPT-2"
    );
    assert!(
        report
            .trainable_paths()
            .iter()
            .any(|p| p.starts_with("gpt2.wte.")),
        "the tied embedding trains under full fine-tuning"
    );

    let device = cpu();
    for (method, options, expected) in [
        ("linear-probe", vec![], "trains only the task head"),
        (
            "side",
            vec![],
            "trains only the task head or a side network",
        ),
        ("p-tuning", vec![("template", "2,2")], "follow the text"),
    ] {
        let pretrained = Pretrained::load(&fixtures().join("gpt2-tiny"), &device).expect("fixture");
        let head = HeadConfig {
            layers: 1,
            outputs: 1,
            dropout: 0.0,
        };
        let classifier = SequenceClassifier::new(pretrained.backbone, Readout::Last, head, &device)
            .expect("model");
        let config = MethodConfig::parse(method, &options).expect("method");
        let (model, _) = config.apply(classifier).expect("applies");
        let message = match language_model_trainable(model, &config) {
            Ok(_) => panic!("{method} has nothing a language model trains"),
            Err(e) => e.to_string(),
        };
        assert!(message.contains(expected), "{method}: {message}");
    }
}
