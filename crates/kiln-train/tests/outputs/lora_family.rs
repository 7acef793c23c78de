//! The LoRA variants (rsLoRA, DoRA, PiSSA, OLoRA), IA3, LoHa and LoKr in peft's format, both
//! ways, against the fixtures `scripts/make_peft_fixtures.py lora-family` wrote with peft 0.21:
//! peft's adapters (random factors, magnitudes and vectors) load into kiln with peft's outputs;
//! kiln's exports are what the script loaded with `PeftModel.from_pretrained` and recorded
//! outputs for; and kiln's PiSSA and OLoRA starts are peft's.

use kiln_models::SequenceClassifier;
use kiln_models::paths::map_params;
use kiln_models::weights::WeightFile;
use kiln_testkit::fixtures;
use kiln_train::peft::import_peft;
use kiln_tuning::MethodConfig;

use crate::common::{Deterministic, assert_close, read_json};
use crate::peft::{check_export, classifier, outputs};

/// The output each fixture backbone's expected.json records.
fn key(fixture: &str) -> &'static str {
    if fixture.starts_with("bert") {
        "logits"
    } else {
        "last_hidden_state"
    }
}

#[test]
fn peft_lora_variants_and_ia3_load_into_kiln_with_peft_outputs() {
    for (fixture, adapter, trainable) in [
        // r 4 on query and value: 2 layers x 2 x 4 x (32 + 32), plus the head.
        ("bert-tiny", "peft-bert-rslora", 1024 + 66),
        // ... plus a 32-wide magnitude per module.
        ("bert-tiny", "peft-bert-dora", 1024 + 128 + 66),
        // c_attn 32 -> 96: 2 x 4 x 128 plus 2 x 96; no head in GPT2Model.
        ("gpt2-tiny", "peft-gpt2-dora", 1024 + 192 + 66),
        // key, value (32 each, output side), attention output (32, input side) and the
        // feed-forward output (64, input side) in 2 layers, plus the head.
        ("bert-tiny", "peft-bert-ia3", 2 * (32 + 32 + 32 + 64) + 66),
        // c_attn's 96 outputs and mlp.c_proj's 128 inputs in 2 layers.
        ("gpt2-tiny", "peft-gpt2-ia3", 2 * (96 + 128) + 66),
        // r 4 on query and value: 2 layers x 2 x 2 x 4 x (32 + 32).
        ("bert-tiny", "peft-bert-loha", 2048 + 66),
        // r 2 on query, value (32 = 4 x 8: W1 4 x 4, W2 2 x (8 + 8)), the attention output (the
        // same) and the feed-forward output (64 -> 32: W1 8 x 4, W2 2 x (8 + 8)).
        (
            "bert-tiny",
            "peft-bert-lokr",
            2 * (3 * (16 + 32) + (32 + 32)) + 66,
        ),
    ] {
        let dir = fixtures().join("peft").join(adapter);
        let expected = read_json(&dir.join("expected.json"));
        let (model, report) = import_peft(classifier(fixture), &dir).expect("imports");
        assert_eq!(report.trainable(), trainable, "{adapter}");
        assert_close(
            &outputs(&model, &expected),
            &expected[key(fixture)],
            &expected,
            adapter,
        );
    }
}

/// `name`'s delta on the BERT fixture, the rest fixed values so that the export is the same
/// file every run.
fn kiln_method(fixture: &str, name: &str, options: &[(&str, &str)]) -> SequenceClassifier {
    let method = MethodConfig::parse(name, options).expect("method");
    let (model, _) = method.apply(classifier(fixture)).expect("applies");
    map_params(
        model,
        &mut Deterministic(
            0,
            &[
                ".lora.",
                ".ia3.",
                ".loha.",
                ".lokr.",
                ".vera.lambda",
                ".oft.",
                ".adalora.",
                "head.",
            ],
        ),
    )
}

#[test]
fn kiln_lora_variants_and_ia3_export_to_peft_with_kiln_outputs() {
    let lora = [("rank", "4"), ("alpha", "8")];
    let with = |extra: (&'static str, &'static str)| {
        let mut options = lora.to_vec();
        options.push(extra);
        options
    };
    let gpt2_targets = ("targets", "c_attn,mlp.c_proj");
    // (fixture, adapter, method, its options)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "bert-tiny",
            "kiln-bert-rslora",
            "lora",
            with(("rslora", "true")),
        ),
        (
            "bert-tiny",
            "kiln-bert-dora",
            "lora",
            with(("dora", "true")),
        ),
        ("gpt2-tiny", "kiln-gpt2-dora", "lora", {
            let mut options = with(("dora", "true"));
            options.push(gpt2_targets);
            options
        }),
        ("bert-tiny", "kiln-bert-ia3", "ia3", Vec::new()),
        ("gpt2-tiny", "kiln-gpt2-ia3", "ia3", Vec::new()),
        (
            "bert-tiny",
            "kiln-bert-pissa",
            "lora",
            with(("lora-init", "pissa")),
        ),
        ("bert-tiny", "kiln-bert-loha", "loha", lora.to_vec()),
        (
            "bert-tiny",
            "kiln-bert-adalora",
            "adalora",
            vec![("init-r", "4"), ("target-r", "2")],
        ),
        (
            "bert-tiny",
            "kiln-bert-oft",
            "oft",
            vec![
                ("block-size", "8"),
                ("targets", "query,value,layers.*.output"),
            ],
        ),
        (
            "bert-tiny",
            "kiln-bert-vera",
            "vera",
            vec![("rank", "4"), ("targets", "query,value,intermediate")],
        ),
        (
            "bert-tiny",
            "kiln-bert-lora-embedding",
            "lora",
            with(("targets", "embeddings.word,query")),
        ),
        (
            "bert-tiny",
            "kiln-bert-lokr",
            "lokr",
            vec![("rank", "2"), ("alpha", "4")],
        ),
    ];
    for (fixture, adapter, method, options) in cases {
        let mut model = kiln_method(fixture, method, &options);
        // AdaLoRA as its allocator leaves it once final: the second and fourth triplet pruned.
        for (_, projection) in model.projections_mut() {
            if let Some(delta) = projection.adalora.as_mut() {
                let keep = vec![true, false, true, false];
                delta.mask(&keep);
                delta.final_keep = Some(keep);
            }
        }
        let (export, config) = check_export(&model, fixture, adapter, key(fixture));
        match adapter {
            "kiln-bert-rslora" => {
                assert_eq!(config["use_rslora"], true);
                assert_eq!(config["lora_alpha"], 8.0);
            }
            "kiln-bert-dora" | "kiln-gpt2-dora" => assert_eq!(config["use_dora"], true),
            // The PiSSA delta is relative to the residual weight kiln holds: peft gets it as a
            // rank-8 LoRA of the original base, alpha doubled to keep the scale.
            "kiln-bert-pissa" => {
                assert_eq!(config["r"], 8);
                assert_eq!(config["lora_alpha"], 16.0);
            }
            "kiln-bert-lora-embedding" => assert!(
                export
                    .target_modules
                    .contains(&"embeddings.word_embeddings".to_string()),
                "{:?}",
                export.target_modules
            ),
            "kiln-bert-adalora" => {
                assert_eq!(config["peft_type"], "ADALORA");
                let pattern = config["rank_pattern"].as_object().expect("a rank pattern");
                assert_eq!(pattern.len(), 4, "{pattern:?}");
            }
            "kiln-bert-oft" => {
                assert_eq!(config["peft_type"], "OFT");
                assert_eq!(config["oft_block_size"], 8);
            }
            "kiln-bert-vera" => {
                assert_eq!(config["peft_type"], "VERA");
                assert_eq!(config["save_projection"], true);
            }
            "kiln-bert-loha" => {
                assert_eq!(config["peft_type"], "LOHA");
                assert_eq!(
                    (config["r"].clone(), config["alpha"].clone()),
                    (4.into(), 8.0.into())
                );
            }
            "kiln-bert-lokr" => {
                assert_eq!(config["peft_type"], "LOKR");
                assert_eq!(
                    (config["r"].clone(), config["alpha"].clone()),
                    (2.into(), 4.0.into())
                );
            }
            _ => {
                assert_eq!(config["peft_type"], "IA3");
                let feedforward = config["feedforward_modules"].as_array().expect("list");
                // BERT's feed-forward output in each layer; GPT-2's mlp.c_proj.
                assert_eq!(feedforward.len(), 2, "{adapter}");
                // BERT: key, value and the feed-forward output; GPT-2: c_attn and mlp.c_proj.
                let per_layer = if fixture == "bert-tiny" { 3 } else { 2 };
                assert_eq!(export.target_modules.len(), 2 * per_layer, "{adapter}");
            }
        }
    }
}

/// `[rows, cols]` values of a peft tensor as kiln's transposed `[cols, rows]` layout.
fn transposed(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

fn floats<const D: usize>(tensor: burn::tensor::Tensor<D>) -> Vec<f32> {
    tensor.into_data().try_to_vec::<f32>().expect("floats")
}

#[test]
fn pissa_and_olora_start_as_peft_starts_them() {
    for init in ["pissa", "olora"] {
        let method = MethodConfig::parse(
            "lora",
            &[("rank", "4"), ("alpha", "8"), ("lora-init", init)],
        )
        .expect("method");
        let (mut model, _) = method.apply(classifier("bert-tiny")).expect("applies");
        let start = WeightFile::open(
            &fixtures()
                .join("peft")
                .join(format!("peft-bert-{init}-init"))
                .join("start.safetensors"),
        )
        .expect("fixture");
        let mut checked = 0;
        for (path, projection) in model.projections_mut() {
            let Some(delta) = projection.lora.as_ref() else {
                continue;
            };
            // bert.layers.0.attention.query -> bert.encoder.layer.0.attention.self.query
            let module = path
                .replace("bert.layers.", "bert.encoder.layer.")
                .replace("attention.", "attention.self.");
            let get = |name: &str| {
                start
                    .get(&format!("{module}.{name}"))
                    .unwrap_or_else(|| panic!("{module}.{name}"))
                    .values
                    .clone()
            };
            let (a, b) = (get("lora_A"), get("lora_B"));
            // peft's update s·B·A `[out, in]` as kiln's `[in, out]`, and the residual weight.
            let mut update = vec![0.0f32; 32 * 32];
            for out in 0..32 {
                for input in 0..32 {
                    update[out * 32 + input] = 2.0
                        * (0..4)
                            .map(|k| b[out * 4 + k] * a[k * 32 + input])
                            .sum::<f32>();
                }
            }
            let what = format!("{init} {path}");
            let close = |ours: &[f32], theirs: &[f32], name: &str| {
                for (i, (x, y)) in ours.iter().zip(theirs).enumerate() {
                    assert!((x - y).abs() < 1e-4, "{what} {name}[{i}]: {x} vs {y}");
                }
            };
            close(
                &floats(delta.product()),
                &transposed(&update, 32, 32),
                "s·A·B",
            );
            close(
                &floats(projection.weight.val()),
                &transposed(&get("residual"), 32, 32),
                "residual weight",
            );
            checked += 1;
        }
        assert_eq!(checked, 4, "{init}: query and value in both layers");
    }
}
