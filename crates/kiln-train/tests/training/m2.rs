//! M2-BERT end to end on tiny configurations: a checkpoint in the reference's layout loads to
//! the same outputs, the kiln methods that make sense set the right trainable parts, and
//! training from random initialisation lowers the loss on the fixture task.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use kiln_data::{LoadedTask, TaskSpec};
use kiln_models::m2::m2_keys;
use kiln_models::{
    Backbone, BertInput, HeadConfig, M2Bert, M2BertConfig, PaddingSide, Pretrained, Readout,
    SequenceClassifier, TextTokenizer,
};
use kiln_testkit::{cpu, fixtures, seeded_section};
use kiln_train::{TaskData, TextTask, TrainConfig, Trainer, evaluate, save_params_hf};
use kiln_tuning::MethodConfig;

/// A tiny M2-BERT directory without weights: its config (the reference's field names) and
/// bert-tiny's vocabulary.
fn m2_dir(dir: &Path, monarch_mlp: bool) -> M2BertConfig {
    let config = serde_json::json!({
        "model_type": "bert", "architectures": ["BertForSequenceClassification"],
        "vocab_size": 167, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32,
        "monarch_mixer_sequence_mixing": true, "long_conv_l_max": 32, "bidirectional": true,
        "residual_long_conv": true, "hyena_emb_dim": 5, "hyena_filter_order": 8,
        "hyena_w": 10, "hyena_w_mod": 1, "hyena_training_additions": true,
        "use_glu_mlp": true, "use_monarch_mlp": monarch_mlp, "monarch_mlp_nblocks": 4,
        "hidden_dropout_prob": 0.1
    });
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    std::fs::copy(
        fixtures().join("bert-tiny/vocab.txt"),
        dir.join("vocab.txt"),
    )
    .expect("vocab");
    serde_json::from_value(config).expect("parses")
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("floats")
}

#[test]
fn a_checkpoint_in_the_reference_layout_loads_to_the_same_outputs() {
    let _rng = seeded_section();
    let device = cpu();
    for monarch_mlp in [true, false] {
        let dir = tempfile::tempdir().expect("dir");
        let config = m2_dir(dir.path(), monarch_mlp);
        device.seed(3);
        let model: M2Bert = config.init(&device).expect("model");
        // The reference's names under `bert.`, linear weights as PyTorch's `[out, in]`.
        let weights = dir.path().join("model.safetensors");
        save_params_hf(&model, &weights, m2_keys(), "bert.").expect("saves");
        let written = std::fs::read(&weights).expect("read");
        assert!(!written.is_empty());
        let (loaded, _) = match Backbone::load(dir.path(), &device).expect("loads") {
            Backbone::M2Bert(model, config) => (model, config),
            _ => panic!("the config says M2-BERT"),
        };
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new((0..64i64).map(|i| (i * 7) % 167).collect(), [2, 32]),
            &device,
        );
        let input = BertInput {
            attention_mask: ids.ones_like(),
            token_type_ids: ids.zeros_like(),
            input_ids: ids,
        };
        let want = values(model.valid().forward(input.clone()));
        let got = values(loaded.forward(input));
        for (a, b) in want.iter().zip(&got) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}

fn task() -> LoadedTask {
    TaskSpec::new(fixtures().join("tasks/fire-water.csv"))
        .load(7)
        .expect("fixture task")
}

/// A random M2-BERT from `dir` with a two-class head and `method` applied.
fn classifier(
    dir: &Path,
    method: &str,
    device: &Device,
) -> kiln_tuning::Result<(SequenceClassifier, Vec<String>, TextTokenizer)> {
    device.seed(5);
    let Pretrained {
        backbone,
        mut tokenizer,
        ..
    } = Pretrained::random(dir, device).expect("random M2");
    tokenizer.configure(32, PaddingSide::Right).expect("length");
    let method = MethodConfig::parse(method, &[])?;
    let head = HeadConfig {
        layers: method.method().head_layers(),
        outputs: 2,
        dropout: 0.1,
    };
    let model = SequenceClassifier::new(backbone, Readout::Mean, head, device)?;
    let (model, report) = method.apply(model)?;
    let trainable = report
        .trainable_paths()
        .into_iter()
        .map(str::to_string)
        .collect();
    Ok((model, trainable, tokenizer))
}

#[test]
fn methods_that_make_sense_on_m2_train_the_right_parts() {
    let _rng = seeded_section();
    let dir = tempfile::tempdir().expect("dir");
    m2_dir(dir.path(), true);
    let device = cpu();
    let check = |method: &str, allowed: &dyn Fn(&str) -> bool| {
        let (_, trainable, _) = classifier(dir.path(), method, &device).expect("applies");
        assert!(!trainable.is_empty(), "{method}");
        for path in &trainable {
            assert!(
                path.starts_with("head.") || allowed(path),
                "{method}: {path}"
            );
        }
    };
    check("linear-probe", &|_| false);
    check("bitfit", &|p| p.ends_with(".bias") || p.ends_with(".beta"));
    check("lora", &|p| p.contains(".lora."));
    // Houlsby trains the layer norms with its adapters.
    check("houlsby", &|p| {
        p.contains(".adapters.") || p.contains("norm.")
    });
    check("partial-k", &|p| {
        p.starts_with("m2.layers.0.") || p.starts_with("m2.layers.1.")
    });
    let (_, full, _) = classifier(dir.path(), "full", &device).expect("applies");
    assert!(
        full.iter()
            .any(|p| p.contains("mixer.filter.forward.layers.0"))
    );
    // Methods that need attention are refused with the reason.
    for method in ["prompt", "prefix", "mam"] {
        let Err(error) = classifier(dir.path(), method, &device) else {
            panic!("{method} should be refused on M2-BERT");
        };
        assert!(error.to_string().contains("M2-BERT"), "{method}: {error}");
    }
}

/// `model` trained on `task` with `config`, only `trainable` tracking gradients, in a temporary
/// run directory.
fn fit(
    model: SequenceClassifier,
    trainable: Vec<String>,
    tokenizer: &TextTokenizer,
    task: &LoadedTask,
    config: TrainConfig,
    device: &Device,
) -> SequenceClassifier {
    let run = tempfile::tempdir().expect("run");
    let mut trainer = Trainer::new(config, device.clone(), run.path().to_path_buf(), trainable);
    trainer.progress = false;
    let text = TextTask::new(tokenizer.clone(), task.kind.clone());
    let data = TaskData {
        task: &text,
        train: task.part(&task.split.train),
        validation: task.part(&task.split.validation),
    };
    trainer.fit(model, &data, false).expect("trains").0
}

#[test]
fn m2_from_random_initialisation_lowers_the_loss() {
    let _rng = seeded_section();
    let dir = tempfile::tempdir().expect("dir");
    m2_dir(dir.path(), true);
    let device = cpu().autodiff();
    let task = task();
    let (model, trainable, tokenizer) = classifier(dir.path(), "full", &device).expect("applies");
    let train = task.part(&task.split.train);
    let loss = |m: &SequenceClassifier| {
        evaluate(&m.valid(), &tokenizer, &train, &task.kind, &cpu(), 16)
            .expect("eval")
            .loss
    };
    let before = loss(&model);
    let config = TrainConfig {
        epochs: 4,
        lr: 3e-3,
        batch_size: 8,
        warmup_ratio: 0.0,
        seed: 9,
        ..TrainConfig::default()
    };
    let trained = fit(model, trainable, &tokenizer, &task, config, &device);
    let after = loss(&trained);
    assert!(after < 0.95 * before, "loss {before} -> {after}");
}

/// The largest change of any entry between two values of one parameter.
fn moved<const D: usize>(before: Tensor<D>, after: Tensor<D>) -> f32 {
    (after - before).abs().max().into_scalar()
}

#[test]
fn m2_filters_train_at_the_reference_rates() {
    // The reference (hyena_utils.py, create_param_groups.py) trains the forward filter MLP and
    // the sine frequencies at 1e-3 with decay 0.1 and the positional features at 1e-5; the rest
    // takes the run's rate. Adam's first step moves every entry with a gradient by about its
    // rate, so one step shows each group's.
    let _rng = seeded_section();
    let dir = tempfile::tempdir().expect("dir");
    m2_dir(dir.path(), true);
    let device = cpu().autodiff();
    let task = task();
    let (model, trainable, tokenizer) = classifier(dir.path(), "full", &device).expect("applies");
    let filter = |m: &SequenceClassifier| {
        let f = &m.m2.as_ref().expect("m2").layers[0].mixer.filter;
        (
            f.forward.layers[1].weight.val().inner(),
            f.z.val().inner(),
            f.bias.val().inner(),
            f.reverse.as_ref().expect("bidirectional").layers[1]
                .weight
                .val()
                .inner(),
        )
    };
    let before = filter(&model);
    let config = TrainConfig {
        epochs: 1,
        lr: 1e-4,
        batch_size: 1000,
        warmup_ratio: 0.0,
        weight_decay: 0.0,
        seed: 9,
        ..TrainConfig::default()
    };
    let trained = fit(model, trainable, &tokenizer, &task, config, &device);
    let after = filter(&trained);
    let near = |got: f32, rate: f32, what: &str| {
        assert!(
            (got - rate).abs() <= 0.15 * rate,
            "{what}: moved {got}, its rate is {rate}"
        );
    };
    near(moved(before.0, after.0), 1e-3, "forward filter MLP");
    near(moved(before.1, after.1), 1e-5, "positional features z");
    near(moved(before.2, after.2), 1e-4, "the D term (run's rate)");
    near(
        moved(before.3, after.3),
        1e-4,
        "reverse filter MLP (left to the run, as the reference)",
    );
}
