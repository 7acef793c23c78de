//! Every registered method on the tiny BERT and GPT-2 fixtures: the exact set of parameters that
//! track gradients, the trainable count against each method's closed-form formula, and LoRA's
//! merge and unmerge.

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use kiln_models::{BertInput, SequenceClassifier};
use kiln_testkit::cpu;
use kiln_tuning::{MethodConfig, ParamReport, TuningError, tracked_report};

// Shapes of the fixtures: hidden 32, feed-forward 64 (GPT-2: 4·32), 2 layers, 2 classes.
const H: usize = 32;
const F: usize = 64;
const L: usize = 2;
const C: usize = 2;
const HEAD: usize = H * C + C;

fn classifier(name: &str, method: &MethodConfig, device: &Device) -> SequenceClassifier {
    kiln_testkit::classifier(name, method, C, device)
}

fn method(name: &str, options: &[(&str, &str)]) -> MethodConfig {
    MethodConfig::parse(name, options).expect("valid method")
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
    let report = check("bert-tiny", &method("full", &[]), |_| true);
    assert_eq!(report.trainable(), report.total());
}

#[test]
fn linear_probe_trains_only_the_head() {
    let report = check("bert-tiny", &method("linear-probe", &[]), |p| {
        p.starts_with("head.")
    });
    assert_eq!(report.trainable(), HEAD);
}

#[test]
fn partial_k_trains_the_top_layers_and_head() {
    let options = &[("k", "1")];
    let report = check("bert-tiny", &method("partial-k", options), |p| {
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
    let options = &[("k", "3")];
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
    let report = check("bert-tiny", &method("bitfit", &[]), |p| {
        p.starts_with("head.") || p.ends_with(".bias") || p.ends_with(".beta")
    });
    assert_eq!(report.trainable(), L * (7 * H + F) + H + HEAD);
}

#[test]
fn lora_trains_deltas_on_its_targets() {
    let options = &[("rank", "4")];
    let report = check("bert-tiny", &method("lora", options), |p| {
        p.starts_with("head.")
            || (p.contains(".lora.") && (p.contains(".query.") || p.contains(".value.")))
    });
    assert_eq!(report.trainable(), L * 2 * 4 * (H + H) + HEAD);

    // GPT-2's default target is the fused c_attn: r·(h + 3h) per layer.
    let report = check("gpt2-tiny", &method("lora", options), |p| {
        p.starts_with("head.") || p.contains(".c_attn.lora.")
    });
    assert_eq!(report.trainable(), L * 4 * (H + 3 * H) + HEAD);

    let options = &[("rank", "2"), ("targets", "attention.output,intermediate")];
    let report = check("bert-tiny", &method("lora", options), |p| {
        p.starts_with("head.")
            || p.contains(".attention.output.lora.")
            || p.contains(".intermediate.lora.")
    });
    assert_eq!(report.trainable(), L * 2 * ((H + H) + (H + F)) + HEAD);
}

#[test]
fn lora_variants_train_their_deltas_and_doras_magnitude() {
    // DoRA adds a magnitude per output of each target: r·(d_in + d_out) + d_out.
    let options = &[("rank", "4"), ("dora", "true")];
    let report = check("bert-tiny", &method("lora", options), |p| {
        p.starts_with("head.")
            || (p.contains(".lora.") && (p.contains(".query.") || p.contains(".value.")))
    });
    assert_eq!(report.trainable(), L * 2 * (4 * (H + H) + H) + HEAD);
    // rsLoRA, PiSSA and OLoRA change the scale and the start, not what trains.
    for extra in [
        ("rslora", "true"),
        ("lora-init", "pissa"),
        ("lora-init", "olora"),
    ] {
        let options = &[("rank", "4"), extra];
        let report = check("bert-tiny", &method("lora", options), |p| {
            p.starts_with("head.")
                || (p.contains(".lora.") && (p.contains(".query.") || p.contains(".value.")))
        });
        assert_eq!(report.trainable(), L * 2 * 4 * (H + H) + HEAD, "{extra:?}");
    }
    // The token embedding takes peft's embedding delta, r·(vocab + h); BERT's fixture has 167
    // tokens. DoRA there is refused.
    let options = &[("rank", "4"), ("targets", "embeddings.word,query")];
    let report = check("bert-tiny", &method("lora", options), |p| {
        p.starts_with("head.") || p.contains(".word.lora.") || p.contains(".query.lora.")
    });
    assert_eq!(report.trainable(), 4 * (167 + H) + L * 4 * (H + H) + HEAD);
    let report = check(
        "gpt2-tiny",
        &method("lora", &[("rank", "4"), ("targets", "wte")]),
        |p| p.starts_with("head.") || p.contains(".wte.lora."),
    );
    assert!(report.trainable() > HEAD);
    let dora_embedding = method("lora", &[("targets", "embeddings.word"), ("dora", "true")]);
    let device = cpu();
    let error = dora_embedding
        .apply(classifier("bert-tiny", &dora_embedding, &device))
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("--targets") && error.contains("token embedding"),
        "{error}"
    );
    // A PiSSA rank above the weight's is refused, naming the flag.
    let too_high = method("lora", &[("rank", "64"), ("lora-init", "pissa")]);
    let error = too_high
        .apply(classifier("bert-tiny", &too_high, &device))
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(error.contains("--rank") && error.contains("32"), "{error}");
}

#[test]
fn ia3_trains_vectors_on_keys_values_and_the_feed_forward_input() {
    // BERT: key and value outputs (h each) and the feed-forward output's input (f) per layer.
    let report = check("bert-tiny", &method("ia3", &[]), |p| {
        p.starts_with("head.")
            || [
                ".attention.key.ia3.",
                ".attention.value.ia3.",
                ".output.ia3.",
            ]
            .iter()
            .any(|s| p.contains(s))
                && !p.contains(".attention.output.")
    });
    assert_eq!(report.trainable(), L * (H + H + F) + HEAD);
    // GPT-2: the fused c_attn's 3h outputs and mlp.c_proj's 4h inputs.
    let report = check("gpt2-tiny", &method("ia3", &[]), |p| {
        p.starts_with("head.") || p.contains(".c_attn.ia3.") || p.contains(".mlp.c_proj.ia3.")
    });
    assert_eq!(report.trainable(), L * (3 * H + 4 * H) + HEAD);
    // Feed-forward names outside the targets are refused, as peft refuses them.
    let stray = method(
        "ia3",
        &[("targets", "key,value"), ("feedforward", "intermediate")],
    );
    let device = cpu();
    let error = stray
        .apply(classifier("bert-tiny", &stray, &device))
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(error.contains("--feedforward"), "{error}");
}

#[test]
fn loha_and_lokr_train_their_factors() {
    // LoHa: two factor pairs per target, 2·r·(d_in + d_out).
    let report = check("bert-tiny", &method("loha", &[("rank", "4")]), |p| {
        p.starts_with("head.")
            || (p.contains(".loha.") && (p.contains(".query.") || p.contains(".value.")))
    });
    assert_eq!(report.trainable(), L * 2 * 2 * 4 * (H + H) + HEAD);
    // LoKr on the 32 x 32 query and value: 32 = 4 x 8, so W1 is 4 x 4 and W2 8 x 8; at r 2
    // (< 8/2) W2 is factored, 2·(8 + 8), at r 4 it is whole.
    for (rank, w2) in [("2", 2 * (8 + 8)), ("4", 8 * 8)] {
        let report = check("bert-tiny", &method("lokr", &[("rank", rank)]), |p| {
            p.starts_with("head.")
                || (p.contains(".lokr.") && (p.contains(".query.") || p.contains(".value.")))
        });
        assert_eq!(report.trainable(), L * 2 * (4 * 4 + w2) + HEAD, "r {rank}");
    }
}

#[test]
fn vera_trains_two_vectors_per_target() {
    // λ_d (r) and λ_b (d_out) on query and value; the shared pair is frozen.
    let report = check("bert-tiny", &method("vera", &[("rank", "16")]), |p| {
        p.starts_with("head.")
            || ((p.ends_with(".vera.lambda_d") || p.ends_with(".vera.lambda_b"))
                && (p.contains(".query.") || p.contains(".value.")))
    });
    assert_eq!(report.trainable(), L * 2 * (16 + H) + HEAD);
}

#[test]
fn oft_trains_a_skew_triangle_per_block() {
    // Blocks of 8 on the 32-wide query and value: 4 blocks of 8·7/2 entries each.
    let report = check("bert-tiny", &method("oft", &[("block-size", "8")]), |p| {
        p.starts_with("head.")
            || (p.contains(".oft.") && (p.contains(".query.") || p.contains(".value.")))
    });
    assert_eq!(report.trainable(), L * 2 * 4 * 28 + HEAD);
    // A block size that does not divide a target's inputs is refused naming the flag.
    let odd = method("oft", &[("block-size", "5")]);
    let device = cpu();
    let error = odd
        .apply(classifier("bert-tiny", &odd, &device))
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(error.contains("--block-size"), "{error}");
}

#[test]
fn adalora_trains_its_svd_factors() {
    // r·(d_in + d_out + 1) per target at the starting rank.
    let report = check(
        "bert-tiny",
        &method("adalora", &[("init-r", "4"), ("target-r", "2")]),
        |p| {
            p.starts_with("head.")
                || (p.contains(".adalora.") && (p.contains(".query.") || p.contains(".value.")))
        },
    );
    assert_eq!(report.trainable(), L * 2 * 4 * (H + H + 1) + HEAD);
    let above = method("adalora", &[("init-r", "4"), ("target-r", "6")]);
    let device = cpu();
    let error = above
        .apply(classifier("bert-tiny", &above, &device))
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(error.contains("--target-r"), "{error}");
}

#[test]
fn bad_options_name_the_flag() {
    let device = cpu();
    let unknown = &[("targets", "qkv")];
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

    let deep = method("partial-k", &[("k", "5")]);
    let err = deep
        .apply(classifier("bert-tiny", &deep, &device))
        .expect_err("k above depth");
    assert!(err.to_string().contains("--k"), "{err}");

    let err = MethodConfig::parse("bitfit", &[("rank", "8")]).expect_err("bitfit takes no rank");
    assert!(err.to_string().contains("--rank"), "{err}");
    assert!(matches!(
        MethodConfig::parse("adapterz", &[]),
        Err(TuningError::UnknownMethod { .. })
    ));
    for (given, near) in [("LoRA", "lora"), ("lroa", "lora"), ("pfeifer", "pfeiffer")] {
        let err = MethodConfig::parse(given, &[]).expect_err("unknown");
        assert!(
            err.to_string().contains(&format!("did you mean `{near}`?")),
            "{given}: {err}"
        );
    }
    let err = MethodConfig::parse("adapterz", &[]).expect_err("unknown");
    assert!(!err.to_string().contains("did you mean"), "{err}");
}

#[test]
fn method_configs_round_trip_through_json() {
    let lora = method("lora", &[("rank", "4"), ("targets", "query")]);
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
    for options in [
        &[("rank", "4"), ("targets", "query,value,output")][..],
        &[
            ("rank", "4"),
            ("targets", "query,value,output"),
            ("dora", "true"),
        ][..],
        &[("rank", "4"), ("lora-init", "pissa")][..],
        &[("rank", "4"), ("targets", "embeddings.word,value")][..],
    ] {
        merged_gives_the_unmerged_outputs(&method("lora", options));
    }
    merged_gives_the_unmerged_outputs(&method("ia3", &[]));
    merged_gives_the_unmerged_outputs(&method("loha", &[("rank", "4")]));
    merged_gives_the_unmerged_outputs(&method("lokr", &[("rank", "2")]));
    merged_gives_the_unmerged_outputs(&method("vera", &[("rank", "8")]));
    merged_gives_the_unmerged_outputs(&method("oft", &[("block-size", "8")]));
    merged_gives_the_unmerged_outputs(&method("adalora", &[("init-r", "4"), ("target-r", "2")]));
}

/// `lora`'s deltas (B, DoRA magnitudes and IA3 vectors made random, so that merging has
/// something to fold in) merge to the unmerged outputs and unmerge to the base weights.
fn merged_gives_the_unmerged_outputs(lora: &MethodConfig) {
    let device = cpu();
    let (mut model, _) = lora
        .apply(classifier("bert-tiny", lora, &device))
        .expect("applies");
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
            if let Some(m) = delta.magnitude.as_mut() {
                let noise =
                    Tensor::random(m.val().dims(), Distribution::Uniform(0.5, 1.5), &device);
                *m = Param::from_tensor(m.val() * noise);
            }
        }
        let random = |p: &Param<Tensor<2>>| {
            Param::from_tensor(Tensor::random(
                p.val().dims(),
                Distribution::Normal(0.0, 0.5),
                &device,
            ))
        };
        if let Some(loha) = projection.loha.as_mut() {
            loha.u2 = random(&loha.u2);
        }
        if let Some(lokr) = projection.lokr.as_mut() {
            lokr.w1 = random(&lokr.w1);
        }
        if let Some(adalora) = projection.adalora.as_mut() {
            let shape = adalora.lambda.val().dims();
            adalora.lambda = Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 1.0),
                &device,
            ));
        }
        if let Some(oft) = projection.oft.as_mut() {
            oft.weight = random(&oft.weight);
        }
        if let Some(vera) = projection.vera.as_mut() {
            let shape = vera.lambda_b.val().dims();
            vera.lambda_b = Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 0.5),
                &device,
            ));
        }
        if let Some(vector) = projection.ia3.as_mut() {
            let noise = Tensor::random(
                vector.scale.val().dims(),
                Distribution::Uniform(0.5, 1.5),
                &device,
            );
            vector.scale = Param::from_tensor(noise);
        }
    }
    // The token embedding's delta starts with A at zero.
    if let Some(delta) = model.word_embedding_mut().1.lora.as_mut() {
        let shape = delta.a.val().dims();
        delta.a = Param::from_tensor(Tensor::random(
            shape,
            Distribution::Normal(0.0, 0.5),
            &device,
        ));
    }
    let plain = model.forward(input(&device));
    model.merge_lora();
    model.merge_ia3();
    model.merge_updates();
    model.merge_rotations();
    let merged = model.forward(input(&device));
    let diff = (plain.clone() - merged).abs().max().into_scalar::<f32>();
    assert!(
        diff <= 1e-5,
        "{}: merged outputs differ by {diff}",
        lora.label()
    );

    model.unmerge_lora();
    model.unmerge_ia3();
    model.unmerge_updates();
    model.unmerge_rotations();
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

/// One bottleneck adapter of width `m` on a model of width `H`: `2Hm + m + H`.
fn bottleneck(m: usize) -> usize {
    2 * H * m + m + H
}

/// Every layer norm of the tiny fixtures: two per layer plus the embeddings' (BERT) or the final
/// one (GPT-2), gain and shift each.
const NORMS: usize = (2 * L + 1) * 2 * H;

#[test]
fn houlsby_trains_two_adapters_per_layer_and_the_layer_norms() {
    let report = check("bert-tiny", &method("houlsby", &[]), |p| {
        p.starts_with("head.")
            || p.contains(".adapters.loaded.0.attention.")
            || p.contains(".adapters.loaded.0.feed_forward.")
            || p.contains("norm.")
    });
    // Reduction factor 16 on width 32: m = 2.
    assert_eq!(report.trainable(), L * 2 * bottleneck(2) + NORMS + HEAD);

    let options = &[("bottleneck", "5"), ("train-norms", "false")];
    let report = check("gpt2-tiny", &method("houlsby", options), |p| {
        p.starts_with("head.") || p.contains(".adapters.loaded.0.")
    });
    assert_eq!(report.trainable(), L * 2 * bottleneck(5) + HEAD);
}

#[test]
fn pfeiffer_and_adapter_drop_train_one_adapter_per_layer() {
    for name in ["pfeiffer", "adapter-drop"] {
        for fixture_name in ["bert-tiny", "gpt2-tiny"] {
            let report = check(fixture_name, &method(name, &[]), |p| {
                p.starts_with("head.") || p.contains(".adapters.loaded.0.feed_forward.")
            });
            assert_eq!(report.trainable(), L * bottleneck(2) + HEAD, "{name}");
        }
    }
    let options = &[("reduction-factor", "4"), ("train-norms", "true")];
    let report = check("bert-tiny", &method("pfeiffer", options), |p| {
        p.starts_with("head.") || p.contains(".adapters.loaded.0.") || p.contains("norm.")
    });
    assert_eq!(report.trainable(), L * bottleneck(8) + NORMS + HEAD);
}

#[test]
fn parallel_and_mam_train_their_slots() {
    // Reduction factor 2: m = 16.
    let report = check("bert-tiny", &method("parallel", &[]), |p| {
        p.starts_with("head.") || p.contains(".adapters.loaded.0.parallel.")
    });
    assert_eq!(report.trainable(), L * bottleneck(16) + HEAD);

    // MAM as AdapterHub's MAMConfig: the prefix reparameterised by an MLP (here 8 wide) while
    // training, folded into plain rows after.
    let options = &[("prefix-len", "3"), ("prefix-hidden", "8")];
    for fixture_name in ["bert-tiny", "gpt2-tiny"] {
        let backbone = if fixture_name == "bert-tiny" {
            "bert"
        } else {
            "gpt2"
        };
        let report = check(fixture_name, &method("mam", options), |p| {
            p.starts_with("head.")
                || p.contains(".adapters.loaded.0.parallel.")
                || p.starts_with(&format!("{backbone}.prefix_encoder."))
        });
        let encoder = 3 * H + (H * 8 + 8) + (8 * 2 * L * H + 2 * L * H);
        assert_eq!(
            report.trainable(),
            encoder + L * bottleneck(16) + HEAD,
            "{fixture_name}"
        );
    }
    // Without the reparameterisation the rows train directly.
    let direct = &[("prefix-len", "3"), ("prefix-hidden", "0")];
    let report = check("bert-tiny", &method("mam", direct), |p| {
        p.starts_with("head.")
            || p.contains(".adapters.loaded.0.parallel.")
            || p.contains(".adapters.loaded.0.prefix.")
    });
    assert_eq!(report.trainable(), L * (2 * 3 * H + bottleneck(16)) + HEAD);
}

#[test]
fn mam_folds_its_prefix_encoder_into_its_adapter_with_the_same_outputs() {
    let device = cpu();
    let mam = method("mam", &[("prefix-len", "3"), ("prefix-hidden", "8")]);
    let (mut model, _) = mam
        .apply(classifier("bert-tiny", &mam, &device))
        .expect("applies");
    let batch = one_row(&device, vec![2, 40, 41, 3, 0], vec![1, 1, 1, 1, 0]);
    let before = model.forward(batch.clone());
    mam.method().after_fit(&mut model).expect("folds");
    assert!(
        model
            .bert
            .as_ref()
            .is_some_and(|b| b.prefix_encoder.is_none())
    );
    assert_eq!(
        model.adapters.len(),
        1,
        "one adapter: the parallel one with the prefix"
    );
    assert_eq!(model.adapters[0].config.prefix_len, 3);
    let diff = max_diff(before, model.forward(batch));
    assert!(diff <= 1e-5, "folding moves outputs by {diff}");
}

#[test]
fn side_tuning_trains_the_side_network_and_head() {
    // By default alpha trains too: one scalar.
    let report = check("bert-tiny", &method("side", &[]), |p| {
        p.starts_with("head.") || p.starts_with("side.")
    });
    assert_eq!(report.trainable(), 2 * H * H + H + H + 1 + HEAD);
    let options = &[("side-width", "8"), ("side-alpha", "0.5")];
    let report = check("gpt2-tiny", &method("side", options), |p| {
        p.starts_with("head.") || p.starts_with("side.")
    });
    assert_eq!(report.trainable(), 2 * H * 8 + 8 + H + HEAD);
}

/// The tiny BERT classifier with two Pfeiffer adapters of random weights, `a` and `b`.
fn with_two_adapters(device: &Device) -> SequenceClassifier {
    let mut model = classifier("bert-tiny", &method("linear-probe", &[]), device);
    kiln_testkit::add_feed_forward_adapters(&mut model, &["a", "b"]);
    // Near-identity adapters barely move the outputs; make them matter.
    for layer in model.bert.as_mut().expect("bert").layers.iter_mut() {
        for adapter in &mut layer.adapters.as_mut().expect("slots").loaded {
            let up = adapter.feed_forward.as_mut().expect("adapter");
            let shape = up.up.dims();
            up.up.weight = Some(Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 0.5),
                device,
            )));
        }
    }
    model
}

#[test]
fn fusion_trains_only_the_fusion_layers_and_head() {
    let device = cpu().autodiff();
    let fusion = method("fusion", &[("adapters", "a,b")]);
    let (model, report) = fusion
        .apply(with_two_adapters(&device))
        .expect("fusion applies");
    assert_eq!(tracked_report(&model), report);
    for entry in &report.entries {
        let expected = entry.path.starts_with("head.") || entry.path.contains(".adapters.fusion.");
        assert_eq!(entry.trainable, expected, "{}", entry.path);
    }
    assert_eq!(report.trainable(), L * (3 * H * H + 2 * H) + HEAD);

    // One adapter is not enough to fuse.
    let mut single = with_two_adapters(&device);
    single.delete_adapter("b").expect("deletes");
    let err = fusion.apply(single).expect_err("one adapter");
    assert!(err.to_string().contains("--adapters"), "{err}");
}

fn max_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn adapters_switch_without_touching_the_base() {
    let device = cpu();
    let mut model = with_two_adapters(&device);
    model.set_active_adapter(None).expect("off");
    let base = model.forward(input(&device));
    model.set_active_adapter(Some("a")).expect("a");
    assert_eq!(model.active_adapter(), Some("a"));
    let with_a = model.forward(input(&device));
    model.set_active_adapter(Some("b")).expect("b");
    let with_b = model.forward(input(&device));
    assert!(
        max_diff(with_a.clone(), base.clone()) > 1e-3,
        "adapter a changes the outputs"
    );
    assert!(
        max_diff(with_a.clone(), with_b.clone()) > 1e-3,
        "a and b differ"
    );

    // Deleting `b` leaves `a` and the base as they were.
    model.delete_adapter("b").expect("deletes");
    assert_eq!(model.active_adapter(), None);
    model.set_active_adapter(Some("a")).expect("a");
    assert!(max_diff(model.forward(input(&device)), with_a) <= 1e-6);
    model.set_active_adapter(None).expect("off");
    assert!(max_diff(model.forward(input(&device)), base.clone()) <= 1e-6);

    // AdapterDrop over every layer is the plain backbone.
    model.set_active_adapter(Some("a")).expect("a");
    model.set_adapter_drop(0, L);
    assert!(max_diff(model.forward(input(&device)), base) <= 1e-6);

    let err = model
        .set_active_adapter(Some("c"))
        .expect_err("no adapter c");
    assert!(
        err.to_string().contains("`c`") && err.to_string().contains("a"),
        "{err}"
    );
    let layout = model.adapters[0].config.clone();
    let err = model.add_adapter("a", &layout).expect_err("duplicate name");
    assert!(err.to_string().contains("already"), "{err}");
}

#[test]
fn a_fresh_parallel_adapter_leaves_the_outputs_unchanged() {
    let device = cpu();
    let config = method("parallel", &[]);
    let plain = classifier("bert-tiny", &config, &device);
    let head = plain.head.clone();
    let before = plain.forward(input(&device));
    let (mut tuned, _) = config.apply(plain).expect("applies");
    tuned.head = head;
    let diff = max_diff(before, tuned.forward(input(&device)));
    assert!(
        diff <= 1e-6,
        "a fresh parallel adapter moves outputs by {diff}"
    );
}

#[test]
fn adapter_method_configs_round_trip_through_json() {
    for name in [
        "houlsby",
        "pfeiffer",
        "parallel",
        "adapter-drop",
        "mam",
        "side",
        "fusion",
    ] {
        let config = method(name, &[]);
        let json = serde_json::to_string(&config).expect("serialises");
        let back: MethodConfig = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, config, "{json}");
    }
    let err = MethodConfig::parse("pfeiffer", &[("prefix-len", "4")])
        .expect_err("pfeiffer has no prefix");
    assert!(err.to_string().contains("--prefix-len"), "{err}");
}

#[test]
fn gpt2_prefixes_see_the_same_text_with_left_or_right_padding() {
    let device = cpu();
    let mam = method("mam", &[("prefix-len", "3")]);
    let (mut model, _) = mam
        .apply(classifier("gpt2-tiny", &mam, &device))
        .expect("applies");
    // Give the parallel adapter weights so both slots shape the output.
    for block in model.gpt2.as_mut().expect("gpt2").blocks.iter_mut() {
        let parallel = block.adapters.as_mut().expect("slots").loaded[0]
            .parallel
            .as_mut()
            .expect("parallel");
        let shape = parallel.up.dims();
        parallel.up.weight = Some(Param::from_tensor(Tensor::random(
            shape,
            Distribution::Normal(0.0, 0.5),
            &device,
        )));
    }
    let batch = |ids: Vec<i64>, mask: Vec<i64>| BertInput {
        input_ids: Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 5]), &device),
        attention_mask: Tensor::<2, Int>::from_data(TensorData::new(mask, [1, 5]), &device),
        token_type_ids: Tensor::<2, Int>::zeros([1, 5], &device),
    };
    let right = model.features(batch(vec![40, 41, 42, 0, 0], vec![1, 1, 1, 0, 0]));
    let left = model.features(batch(vec![0, 0, 40, 41, 42], vec![0, 0, 1, 1, 1]));
    let diff = max_diff(right.clone(), left);
    assert!(diff <= 1e-5, "padding side changes the features by {diff}");
    model.set_active_adapter(None).expect("off");
    let plain = model.features(batch(vec![40, 41, 42, 0, 0], vec![1, 1, 1, 0, 0]));
    assert!(
        max_diff(right, plain) > 1e-3,
        "the prefix and adapter take part"
    );
}

#[test]
fn a_trained_side_alpha_is_the_sigmoid_of_its_parameter_and_gets_a_gradient() {
    let device = cpu().autodiff();
    let side = method("side", &[]);
    let (mut model, _) = side
        .apply(classifier("bert-tiny", &side, &device))
        .expect("applies");
    let network = model.side.as_mut().expect("side network");
    // sigmoid(ln 3) = 0.75: 0.75·base + 0.25·side.
    network.alpha_logit = Some(Param::from_tensor(
        Tensor::<1>::from_data(TensorData::from([3f32.ln()]), &device).require_grad(),
    ));
    let base = Tensor::<2>::ones([1, 2], &device);
    let side_features = Tensor::<2>::zeros([1, 2], &device);
    let blended = network.blend(base, side_features);
    let want = Tensor::<2>::full([1, 2], 0.75, &device);
    assert!(max_diff(blended.clone(), want) < 1e-6);
    // d/da of sum(sigmoid(a)·1 + (1 - sigmoid(a))·0) = 2·s·(1 - s) = 0.375.
    let grads = blended.sum().backward();
    let logit = network.alpha_logit.as_ref().expect("trained alpha").val();
    let grad: f32 = logit.grad(&grads).expect("a gradient").into_scalar();
    assert!((grad - 0.375).abs() < 1e-6, "{grad}");
    // A curriculum needs its start.
    let err = method("side", &[("side-alpha-end", "0.2")])
        .apply(classifier("bert-tiny", &side, &device))
        .expect_err("no start");
    assert!(err.to_string().contains("side-alpha-end"), "{err}");
}

#[test]
fn fusion_follows_adapterhub_dropout_and_value_regularizer() {
    let device = cpu();
    let fusion = method("fusion", &[("adapters", "a,b")]);
    let (mut model, _) = fusion
        .apply(with_two_adapters(&device))
        .expect("fusion applies");
    let layers = &mut model.bert.as_mut().expect("bert").layers;
    // The scores' dropout is the backbone's attention dropout (0.1 in the fixture).
    let first = layers[0]
        .adapters
        .as_mut()
        .expect("slots")
        .fusion
        .as_mut()
        .expect("fusion");
    assert_eq!(first.score_dropout.prob, 0.1);
    // V starts as the identity (1e-6 off the diagonal); move layer 0's by 0.1 everywhere.
    let v = first.value.weight.val();
    first.value.weight = Param::from_tensor(v + 0.1);
    let regularization: f32 = model
        .fusion_regularization()
        .expect("an active fusion")
        .into_scalar();
    // 0.01 · Σ (I - V)²: layer 0 gives H² · (0.1 + 1e-6)² off and on the diagonal (about), the
    // fresh layer 1 almost nothing.
    let want = 0.01 * (H * H) as f32 * 0.01;
    assert!(
        (regularization - want).abs() < 1e-4 * want,
        "{regularization} vs {want}"
    );
    let off = method(
        "fusion",
        &[("adapters", "a,b"), ("value-regularization", "0")],
    );
    let (model, _) = off.apply(with_two_adapters(&device)).expect("applies");
    assert!(model.fusion_regularization().is_none());
}

#[test]
fn fresh_bottleneck_adapters_start_as_adapterhub_initialises_them() {
    // init_weights="bert": N(0, 0.02²) on both projections, zero biases.
    let device = cpu();
    let pfeiffer = method("pfeiffer", &[("bottleneck", "32")]);
    let (model, _) = pfeiffer
        .apply(classifier("bert-tiny", &pfeiffer, &device))
        .expect("applies");
    let mut values = Vec::new();
    for layer in &model.bert.as_ref().expect("bert").layers {
        let adapter = layer.adapters.as_ref().expect("slots").loaded[0]
            .feed_forward
            .as_ref()
            .expect("adapter");
        for weight in [adapter.down.weight(None), adapter.up.weight(None)] {
            values.extend(weight.into_data().try_to_vec::<f32>().expect("floats"));
        }
        assert!(adapter.original_ln_before, "Pfeiffer reads LN(h + x)");
    }
    let n = values.len() as f32;
    let std = (values.iter().map(|v| v * v).sum::<f32>() / n).sqrt();
    assert!((std - 0.02).abs() < 0.002, "std {std} over {n} entries");
}

#[test]
fn side_alpha_follows_its_curriculum_and_adapter_drop_samples_its_depth() {
    let device = cpu();
    let side = method("side", &[("side-alpha", "1.0"), ("side-alpha-end", "0.2")]);
    let (mut model, _) = side
        .apply(classifier("bert-tiny", &side, &device))
        .expect("applies");
    model.begin_train_step(0.5, 0);
    let blend = model.side.as_ref().expect("side network").blend;
    assert!((blend.now - 0.6).abs() < 1e-12, "halfway: {}", blend.now);
    // Inference (no autodiff) blends with the final alpha: 0.2·base + 0.8·side.
    let base = Tensor::<2>::ones([1, 2], &device);
    let side_features = Tensor::<2>::zeros([1, 2], &device);
    let blended = model
        .side
        .as_ref()
        .expect("side network")
        .blend(base, side_features);
    assert!(max_diff(blended, Tensor::<2>::full([1, 2], 0.2, &device)) < 1e-6);

    let drop = method("adapter-drop", &[]);
    let (mut model, _) = drop
        .apply(classifier("bert-tiny", &drop, &device))
        .expect("applies");
    // Defaults on 2 layers: up to 1 dropped while training, the lower half (1) at inference.
    assert_eq!(model.adapter_drop_max, 1);
    let bert = |m: &SequenceClassifier| m.bert.as_ref().expect("bert").adapter_drop;
    assert_eq!(bert(&model).inference, 1);
    let drawn: Vec<usize> = (0..6)
        .map(|draw| {
            model.begin_train_step(0.0, draw);
            bert(&model).training
        })
        .collect();
    assert_eq!(drawn, [0, 1, 0, 1, 0, 1]);
}

#[test]
fn prompt_methods_train_their_prompts_and_the_head() {
    for fixture_name in ["bert-tiny", "gpt2-tiny"] {
        let backbone = &fixture_name[..4];
        let prompt = method("prompt", &[("prompt-len", "4")]);
        let report = check(fixture_name, &prompt, |p| {
            p.starts_with("head.") || p.contains(".prompt.embedding")
        });
        assert_eq!(report.trainable(), 4 * H + HEAD, "{fixture_name}");

        let v2 = method("p-tuning-v2", &[("prefix-len", "3")]);
        let report = check(fixture_name, &v2, |p| {
            p.starts_with("head.") || p.contains(".adapters.loaded.0.prefix.")
        });
        assert_eq!(report.trainable(), 2 * L * 3 * H + HEAD, "{fixture_name}");

        let prefix = method("prefix", &[("prefix-len", "3"), ("prefix-hidden", "8")]);
        let report = check(fixture_name, &prefix, |p| {
            p.starts_with("head.") || p.contains(".prefix_encoder.")
        });
        let encoder = 3 * H + (H * 8 + 8) + (8 * 2 * L * H + 2 * L * H);
        assert_eq!(report.trainable(), encoder + HEAD, "{fixture_name}");

        // P-tuning as peft's encoder (H = h): two stacked bi-LSTMs, 2 directions x 4 gates x
        // (input and hidden transforms), the second reading both directions (2H); then
        // 2H -> 2H -> h.
        let p_tuning = method("p-tuning", &[("template", "2,1")]);
        let report = check(fixture_name, &p_tuning, |p| {
            p.starts_with("head.") || (p.starts_with(backbone) && p.contains(".prompt."))
        });
        let lstm = 2 * 4 * (H * H + H + H * H + H) + 2 * 4 * (2 * H * H + H + H * H + H);
        let mlp = (2 * H * 2 * H + 2 * H) + (2 * H * H + H);
        assert_eq!(
            report.trainable(),
            3 * H + lstm + mlp + HEAD,
            "{fixture_name}"
        );
        let mlp_only = method("p-tuning", &[("prompt-encoder", "mlp")]);
        let report = check(fixture_name, &mlp_only, |p| {
            p.starts_with("head.") || p.contains(".prompt.")
        });
        // h -> H -> H -> h.
        assert_eq!(report.trainable(), 10 * H + 3 * (H * H + H) + HEAD);
        let narrow = method(
            "p-tuning",
            &[("prompt-encoder", "mlp"), ("encoder-hidden", "8")],
        );
        let report = check(fixture_name, &narrow, |p| {
            p.starts_with("head.") || p.contains(".prompt.")
        });
        let mlp = (H * 8 + 8) + (8 * 8 + 8) + (8 * H + H);
        assert_eq!(report.trainable(), 10 * H + mlp + HEAD);
    }
    let err =
        MethodConfig::parse("p-tuning", &[("prompt-encoder", "gru")]).expect_err("no gru encoder");
    assert!(err.to_string().contains("--prompt-encoder"), "{err}");
}

#[test]
fn prompts_start_from_the_given_words_embeddings() {
    let device = cpu();
    let mut prompt = method(
        "prompt",
        &[("prompt-len", "3"), ("prompt-init-text", "fire water")],
    );
    // The ids a tokenizer would give the words (`Method::tokenize` fills them in a run).
    let MethodConfig::Prompt(config) = &mut prompt else {
        unreachable!("the prompt method's config")
    };
    config.init.ids = vec![40, 41];
    let (model, _) = prompt
        .apply(classifier("bert-tiny", &prompt, &device))
        .expect("applies");
    let table = model.word_embeddings();
    let rows = model
        .bert
        .as_ref()
        .expect("bert")
        .prompt
        .as_ref()
        .expect("prompt")
        .embedding
        .val();
    // The ids repeat to fill the prompt: 40, 41, 40.
    for (row, id) in [(0, 40), (1, 41), (2, 40)] {
        let expected = table.clone().narrow(0, id, 1);
        assert!(max_diff(rows.clone().narrow(0, row, 1), expected) == 0.0);
    }
}

fn one_row(device: &Device, ids: Vec<i64>, mask: Vec<i64>) -> BertInput {
    BertInput {
        input_ids: Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 5]), device),
        attention_mask: Tensor::<2, Int>::from_data(TensorData::new(mask, [1, 5]), device),
        token_type_ids: Tensor::<2, Int>::zeros([1, 5], device),
    }
}

/// Ids 40, 41, 42 padded on the right and on the left.
fn padded_both_ways(device: &Device) -> (BertInput, BertInput) {
    (
        one_row(device, vec![40, 41, 42, 0, 0], vec![1, 1, 1, 0, 0]),
        one_row(device, vec![0, 0, 40, 41, 42], vec![0, 0, 1, 1, 1]),
    )
}

#[test]
fn virtual_tokens_work_with_either_padding_side_on_gpt2() {
    let device = cpu();
    for config in [
        method("prompt", &[("prompt-len", "3")]),
        method("p-tuning", &[("template", "2,2")]),
        method("prefix", &[("prefix-len", "2")]),
    ] {
        let (model, _) = config
            .apply(classifier("gpt2-tiny", &config, &device))
            .expect("applies");
        let (right, left) = padded_both_ways(&device);
        let plain = classifier("gpt2-tiny", &config, &device);
        let right_features = model.features(right.clone());
        let diff = max_diff(right_features.clone(), model.features(left));
        assert!(
            diff <= 1e-5,
            "{}: padding side moves features by {diff}",
            config.label()
        );
        assert!(
            max_diff(right_features, plain.features(right)) > 1e-4,
            "{}: the prompt takes part",
            config.label()
        );
    }
}

#[test]
fn folded_prefixes_give_the_outputs_of_the_prefix_encoder() {
    let device = cpu();
    for fixture_name in ["bert-tiny", "gpt2-tiny"] {
        let prefix = method("prefix", &[("prefix-len", "3")]);
        let (mut model, _) = prefix
            .apply(classifier(fixture_name, &prefix, &device))
            .expect("applies");
        // BERT's text sits between [CLS] (2) and [SEP] (3).
        let batch = one_row(&device, vec![2, 40, 41, 3, 0], vec![1, 1, 1, 1, 0]);
        let before = model.forward(batch.clone());
        model.fold_prefix_encoder("prefix").expect("folds");
        assert!(
            model
                .bert
                .as_ref()
                .is_none_or(|b| b.prefix_encoder.is_none())
        );
        assert_eq!(model.active_adapter(), Some("prefix"));
        assert_eq!(model.adapters[0].config.prefix_len, 3);
        let diff = max_diff(before, model.forward(batch));
        assert!(
            diff <= 1e-5,
            "{fixture_name}: folding moves outputs by {diff}"
        );
        assert!(model.fold_prefix_encoder("again").is_err());
    }
}

/// A PHM bottleneck of width `m` with `n = 4`, rank `r`: `2r(h + m) + m + h`.
fn phm_bottleneck(m: usize, r: usize) -> usize {
    2 * r * (H + m) + m + H
}

#[test]
fn compacter_trains_phm_factors_and_one_shared_rule() {
    // h/32 = 1 is rounded up to n = 4 on the tiny models (AdapterHub refuses such a width).
    for fixture_name in ["bert-tiny", "gpt2-tiny"] {
        let report = check(fixture_name, &method("compacter++", &[]), |p| {
            p.starts_with("head.") || p.contains(".adapters.loaded.0.")
        });
        assert_eq!(
            report.trainable(),
            L * phm_bottleneck(4, 1) + 4 * 4 * 4 + HEAD
        );
    }
    let report = check(
        "bert-tiny",
        &method("compacter", &[("phm-rank", "2")]),
        |p| p.starts_with("head.") || p.contains(".adapters.loaded.0."),
    );
    assert_eq!(report.trainable(), L * 2 * phm_bottleneck(4, 2) + 64 + HEAD);
    // The rules live once, in the first layer.
    let rules: Vec<&str> = report
        .trainable_paths()
        .into_iter()
        .filter(|p| p.ends_with("phm_rule"))
        .collect();
    assert_eq!(rules, ["bert.layers.0.adapters.loaded.0.phm_rule"]);
    let bad = method("compacter++", &[("phm-dim", "5")]);
    let device = cpu();
    let err = bad
        .apply(classifier("bert-tiny", &bad, &device))
        .expect_err("5 does not divide 32")
        .to_string();
    assert!(err.contains("phm-dim"), "{err}");
}

#[test]
fn a_phm_weight_is_the_sum_of_kronecker_products_of_rules_and_factors() {
    use kiln_models::{PhmConfig, PhmWeight};
    let device = cpu();
    let config = PhmConfig { dim: 2, rank: 1 };
    let phm = PhmWeight::init(4, 6, config, &device);
    let rule = Tensor::<3>::random([2, 2, 2], Distribution::Default, &device);
    let h: Vec<f32> = phm
        .weight(rule.clone())
        .into_data()
        .try_to_vec::<f32>()
        .expect("floats");
    let w: Vec<f32> = phm
        .left
        .val()
        .matmul(phm.right.val())
        .into_data()
        .try_to_vec::<f32>()
        .expect("floats");
    let s: Vec<f32> = rule.into_data().try_to_vec::<f32>().expect("floats");
    // H[a·i + p, c·o + q] = Σ_k S[k, a, c] · W[k, p, q], with i = 2, o = 3.
    let (n, i, o) = (2, 2, 3);
    for a in 0..n {
        for p in 0..i {
            for c in 0..n {
                for q in 0..o {
                    let want: f32 = (0..n)
                        .map(|k| s[k * n * n + a * n + c] * w[k * i * o + p * o + q])
                        .sum();
                    let got = h[(a * i + p) * (n * o) + c * o + q];
                    assert!(
                        (want - got).abs() < 1e-6,
                        "H[{a}{p}, {c}{q}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn loreft_trains_its_units_and_edits_only_its_positions() {
    // p = 3, s = 0: one unit per layer, `2rh + r`.
    let report = check("bert-tiny", &method("loreft", &[]), |p| {
        p.starts_with("head.") || p.contains(".adapters.loaded.0.reft.")
    });
    assert_eq!(report.trainable(), L * (2 * H + 1) + HEAD);
    let options = &[("reft-suffix", "2"), ("reft-rank", "2")];
    let report = check("gpt2-tiny", &method("loreft", options), |p| {
        p.starts_with("head.") || p.contains(".adapters.loaded.0.reft.")
    });
    assert_eq!(report.trainable(), L * 2 * (2 * 2 * H + 2) + HEAD);
    // Tied: one unit edits both groups.
    let tied = &[("reft-suffix", "2"), ("reft-tied", "true")];
    let report = check("bert-tiny", &method("loreft", tied), |p| {
        p.starts_with("head.") || p.contains(".adapters.loaded.0.reft.")
    });
    assert_eq!(report.trainable(), L * (2 * H + 1) + HEAD);

    // Only the first p and last s real tokens of each text change, whichever side pads.
    let device = cpu();
    let loreft = method("loreft", &[("reft-prefix", "1"), ("reft-suffix", "1")]);
    let (mut model, _) = loreft
        .apply(classifier("bert-tiny", &loreft, &device))
        .expect("applies");
    let bert_input = one_row(&device, vec![0, 2, 40, 41, 3], vec![0, 1, 1, 1, 1]);
    let states = |model: &SequenceClassifier| -> Vec<f32> {
        let bert = model.bert.as_ref().expect("bert");
        // One layer, so that only that layer's edit shows.
        let embedded = bert.embed(bert_input.clone());
        bert.encode_layers(embedded, 0..1)
            .hidden
            .into_data()
            .try_to_vec::<f32>()
            .expect("floats")
    };
    let edited = states(&model.valid());
    model.set_active_adapter(None).expect("off");
    let plain = states(&model.valid());
    for position in 0..5 {
        let row = |v: &[f32]| v[position * H..(position + 1) * H].to_vec();
        let moved = row(&edited)
            .iter()
            .zip(row(&plain))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        // Positions 1 (the first real token) and 4 (the last) are edited.
        if position == 1 || position == 4 {
            assert!(moved > 1e-4, "position {position} unchanged");
        } else {
            assert!(moved < 1e-6, "position {position} moved by {moved}");
        }
    }
}

#[test]
fn reft_rotations_have_orthonormal_rows() {
    use kiln_models::reft::orthonormal_rows;
    let device = cpu();
    let u = Tensor::<2>::random([3, 8], Distribution::Default, &device);
    let r = orthonormal_rows(u);
    let gram: Vec<f32> = r
        .clone()
        .matmul(r.transpose())
        .into_data()
        .try_to_vec::<f32>()
        .expect("floats");
    for i in 0..3 {
        for j in 0..3 {
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((gram[i * 3 + j] - want).abs() < 1e-5, "{gram:?}");
        }
    }
}

#[test]
fn unipelt_trains_gated_lora_prefix_and_adapter() {
    // As AdapterHub counts it on this model: r 8 on query and value, 10 prefix rows through a
    // 512-wide MLP, m = h/16 = 2, four gates per layer.
    let report = check("bert-tiny", &method("unipelt", &[]), |p| {
        p.starts_with("head.")
            || p.contains(".lora.")
            || p.contains(".adapters.loaded.0.")
            || p.contains(".prefix_encoder.")
    });
    let per_layer = 2 * (2 * 8 * H + H + 1) + bottleneck(2) + 2 * (H + 1);
    let prefix = 10 * H + (H * 512 + 512) + (512 * 2 * L * H + 2 * L * H);
    assert_eq!(report.trainable(), L * per_layer + prefix + HEAD);
    assert_eq!(L * per_layer + prefix, 85_516);
    let device = cpu();
    let unipelt = method("unipelt", &[("prefix-hidden", "16")]);
    let (mut model, _) = unipelt
        .apply(classifier("bert-tiny", &unipelt, &device))
        .expect("applies");
    let batch = input(&device);
    let before = model.valid().forward(batch.clone());
    // Folding the prefix keeps the outputs; the gated deltas never merge into the weights.
    unipelt.method().after_fit(&mut model).expect("folds");
    assert_eq!(model.adapters[0].config.prefix_len, 10);
    let after = model.valid().forward(batch.clone());
    assert!(max_diff(before.clone(), after) <= 1e-5);
    let mut merged = model.clone();
    for (_, projection) in merged.projections_mut() {
        projection.merge_lora();
    }
    assert!(max_diff(before, merged.valid().forward(batch)) <= 1e-5);
}
