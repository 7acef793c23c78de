//! Every registered method on the tiny BERT and GPT-2 fixtures: the exact set of parameters that
//! track gradients, the trainable count against each method's closed-form formula, and LoRA's
//! merge and unmerge.

use std::path::PathBuf;

use burn::module::Param;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use kiln_models::{BertInput, DeviceChoice, HeadConfig, Pretrained, Readout, SequenceClassifier};
use kiln_tuning::{MethodConfig, MethodOptions, ParamReport, TuningError, tracked_report};

// Shapes of the fixtures: hidden 32, feed-forward 64 (GPT-2: 4·32), 2 layers, 2 classes.
const H: usize = 32;
const F: usize = 64;
const L: usize = 2;
const C: usize = 2;
const HEAD: usize = H * C + C;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn classifier(name: &str, method: &MethodConfig, device: &Device) -> SequenceClassifier {
    let pretrained = Pretrained::load(&fixture(name), device).expect("fixture loads");
    let readout = if name.starts_with("gpt2") {
        Readout::Last
    } else {
        Readout::Mean
    };
    let head = HeadConfig {
        layers: method.method().head_layers(),
        outputs: C,
        dropout: 0.0,
    };
    SequenceClassifier::new(pretrained.backbone, readout, head, device).expect("classifier")
}

fn cpu() -> Device {
    DeviceChoice::Cpu
        .device()
        .expect("the CPU backend is always compiled in")
}

fn method(name: &str, options: MethodOptions) -> MethodConfig {
    MethodConfig::from_options(name, &options).expect("valid method")
}

/// Applies `method` on an autodiff device and checks that the parameters which really track
/// gradients are the ones the method reported, and equal `expected` (patterns over paths).
fn check(
    fixture_name: &str,
    method: &MethodConfig,
    expected: impl Fn(&str) -> bool,
) -> ParamReport {
    let device = cpu().autodiff();
    let model = classifier(fixture_name, method, &device);
    let (model, report) = method.apply(model).expect("method applies");
    let tracked = tracked_report(&model);
    assert_eq!(
        tracked,
        report,
        "{}: reported set differs from tracked set",
        method.label()
    );
    for entry in &report.entries {
        assert_eq!(
            entry.trainable,
            expected(&entry.path),
            "{}: `{}` trainable = {}",
            method.label(),
            entry.path,
            entry.trainable
        );
    }
    report
}

#[test]
fn full_trains_everything() {
    let report = check(
        "bert-tiny",
        &method("full", MethodOptions::default()),
        |_| true,
    );
    assert_eq!(report.trainable(), report.total());
}

#[test]
fn linear_probe_trains_only_the_head() {
    let report = check(
        "bert-tiny",
        &method("linear-probe", MethodOptions::default()),
        |p| p.starts_with("head."),
    );
    assert_eq!(report.trainable(), HEAD);
}

#[test]
fn partial_k_trains_the_top_layers_and_head() {
    let options = MethodOptions {
        k: Some(1),
        ..Default::default()
    };
    let report = check("bert-tiny", &method("partial-k", options.clone()), |p| {
        p.starts_with("bert.layers.1.") || p.starts_with("head.")
    });
    let layer = 4 * H * H + 2 * H * F + 9 * H + F;
    assert_eq!(report.trainable(), layer + HEAD);

    let report = check("gpt2-tiny", &method("partial-k", options), |p| {
        p.starts_with("gpt2.blocks.1.") || p.starts_with("gpt2.ln_f.") || p.starts_with("head.")
    });
    assert_eq!(report.trainable(), (12 * H * H + 13 * H) + 2 * H + HEAD);
}

#[test]
fn mlp_k_trains_a_deeper_head() {
    let options = MethodOptions {
        k: Some(3),
        ..Default::default()
    };
    let report = check("bert-tiny", &method("mlp-k", options), |p| {
        p.starts_with("head.")
    });
    assert_eq!(report.trainable(), 2 * (H * H + H) + HEAD);
    assert_eq!(
        report.trainable_paths(),
        [
            "head.hidden.0.weight",
            "head.hidden.0.bias",
            "head.hidden.1.weight",
            "head.hidden.1.bias",
            "head.output.weight",
            "head.output.bias"
        ]
    );
}

#[test]
fn bitfit_trains_biases_and_layer_norm_shifts() {
    let report = check(
        "bert-tiny",
        &method("bitfit", MethodOptions::default()),
        |p| p.starts_with("head.") || p.ends_with(".bias") || p.ends_with(".beta"),
    );
    assert_eq!(report.trainable(), L * (7 * H + F) + H + HEAD);
}

#[test]
fn lora_trains_deltas_on_its_targets() {
    let options = MethodOptions {
        rank: Some(4),
        ..Default::default()
    };
    let report = check("bert-tiny", &method("lora", options.clone()), |p| {
        p.starts_with("head.")
            || (p.contains(".lora.") && (p.contains(".query.") || p.contains(".value.")))
    });
    assert_eq!(report.trainable(), L * 2 * 4 * (H + H) + HEAD);

    // GPT-2's default target is the fused c_attn: r·(h + 3h) per layer.
    let report = check("gpt2-tiny", &method("lora", options), |p| {
        p.starts_with("head.") || p.contains(".c_attn.lora.")
    });
    assert_eq!(report.trainable(), L * 4 * (H + 3 * H) + HEAD);

    let options = MethodOptions {
        rank: Some(2),
        targets: Some(vec!["attention.output".into(), "intermediate".into()]),
        ..Default::default()
    };
    let report = check("bert-tiny", &method("lora", options), |p| {
        p.starts_with("head.")
            || p.contains(".attention.output.lora.")
            || p.contains(".intermediate.lora.")
    });
    assert_eq!(report.trainable(), L * 2 * ((H + H) + (H + F)) + HEAD);
}

#[test]
fn bad_options_name_the_flag() {
    let device = cpu();
    let unknown = MethodOptions {
        targets: Some(vec!["qkv".into()]),
        ..Default::default()
    };
    let lora = method("lora", unknown);
    let err = lora
        .apply(classifier("bert-tiny", &lora, &device))
        .expect_err("unknown target");
    let message = err.to_string();
    assert!(
        message.contains("--targets") && message.contains("`qkv`"),
        "{message}"
    );
    assert!(message.contains("layers.0.attention.query"), "{message}");

    let deep = method(
        "partial-k",
        MethodOptions {
            k: Some(5),
            ..Default::default()
        },
    );
    let err = deep
        .apply(classifier("bert-tiny", &deep, &device))
        .expect_err("k above depth");
    assert!(err.to_string().contains("--k"), "{err}");

    let err = MethodConfig::from_options(
        "bitfit",
        &MethodOptions {
            rank: Some(8),
            ..Default::default()
        },
    )
    .expect_err("bitfit takes no rank");
    assert!(err.to_string().contains("--rank"), "{err}");
    assert!(matches!(
        MethodConfig::from_options("adapterz", &MethodOptions::default()),
        Err(TuningError::UnknownMethod(_))
    ));
}

#[test]
fn method_configs_round_trip_through_json() {
    let lora = method(
        "lora",
        MethodOptions {
            rank: Some(4),
            targets: Some(vec!["query".into()]),
            ..Default::default()
        },
    );
    let json = serde_json::to_string(&lora).expect("serialises");
    assert!(json.contains(r#""method":"lora""#), "{json}");
    let back: MethodConfig = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, lora);
}

fn input(device: &Device) -> BertInput {
    let ids = TensorData::new(vec![2i64, 40, 41, 42, 3, 2, 43, 3, 0, 0], [2, 5]);
    let mask = TensorData::new(vec![1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0], [2, 5]);
    BertInput {
        input_ids: Tensor::<2, Int>::from_data(ids, device),
        attention_mask: Tensor::<2, Int>::from_data(mask, device),
        token_type_ids: Tensor::<2, Int>::zeros([2, 5], device),
    }
}

#[test]
fn merged_lora_gives_the_unmerged_outputs() {
    let device = cpu();
    let lora = method(
        "lora",
        MethodOptions {
            rank: Some(4),
            targets: Some(vec!["query".into(), "value".into(), "output".into()]),
            ..Default::default()
        },
    );
    let (mut model, _) = lora
        .apply(classifier("bert-tiny", &lora, &device))
        .expect("applies");
    // A fresh delta is zero (B = 0); give B values so merging has something to fold in.
    let mut before_weights = Vec::new();
    for (_, projection) in model.projections_mut() {
        before_weights.push(projection.weight.val());
        if let Some(delta) = projection.lora.as_mut() {
            let shape = delta.b.val().dims();
            delta.b = Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 0.5),
                &device,
            ));
        }
    }
    let plain = model.forward(input(&device));
    model.merge_lora();
    let merged = model.forward(input(&device));
    let diff = (plain.clone() - merged).abs().max().into_scalar::<f32>();
    assert!(diff <= 1e-5, "merged outputs differ by {diff}");

    model.unmerge_lora();
    let unmerged = model.forward(input(&device));
    let diff = (plain - unmerged).abs().max().into_scalar::<f32>();
    assert!(diff <= 1e-5, "unmerged outputs differ by {diff}");
    for ((_, projection), before) in model.projections_mut().into_iter().zip(before_weights) {
        let diff = (projection.weight.val() - before)
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(diff <= 1e-5, "unmerge left the base weight off by {diff}");
    }
}
