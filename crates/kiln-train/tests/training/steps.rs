//! The trainer's step budget and what it records: gradient accumulation is the larger batch,
//! `max_steps` and `save_every` resume mid-epoch exactly, `eval_every` evaluates on schedule,
//! and every record of `metrics.jsonl` and `metrics.csv` has the same fields.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde_json::Value;

use kiln_data::{LoadedTask, TaskSpec};
use kiln_models::paths::{ParamVisitor, visit_params};
use kiln_models::{HeadConfig, PaddingSide, Pretrained, Readout, SequenceClassifier};
use kiln_testkit::{cpu, fixtures, seeded_section};
use kiln_train::{Decay, TaskData, TextTask, TrainConfig, TrainSummary, Trainer};
use kiln_tuning::MethodConfig;

/// The tiny BERT with every dropout at 0: a deterministic model, so that different batchings of
/// the same examples can be compared.
fn deterministic_bert(dir: &Path) -> PathBuf {
    let source = fixtures().join("bert-tiny");
    let target = dir.join("bert-tiny-no-dropout");
    std::fs::create_dir_all(&target).expect("dir");
    for entry in std::fs::read_dir(&source).expect("fixture") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, target.join(path.file_name().expect("name"))).expect("copy");
    }
    let config_path = target.join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).expect("config"))
            .expect("json");
    config["hidden_dropout_prob"] = 0.0.into();
    config["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(&config_path, config.to_string()).expect("write");
    target
}

fn task() -> LoadedTask {
    TaskSpec::new(fixtures().join("tasks/fire-water.csv"))
        .load(7)
        .expect("fixture task loads")
}

struct Fitted {
    weights: Vec<f32>,
    summary: TrainSummary,
}

/// Full fine-tuning of `model_dir` (seeded, head dropout `head_dropout`) with `config` into
/// `run_dir`; the trained weights and the summary.
fn fit(
    model_dir: &Path,
    head_dropout: f64,
    config: TrainConfig,
    run_dir: &Path,
    resume: bool,
) -> Fitted {
    let device: Device = cpu().autodiff();
    device.seed(3);
    let mut pretrained = Pretrained::load(model_dir, &device).expect("model");
    pretrained
        .tokenizer
        .configure(32, PaddingSide::Right)
        .expect("length");
    let head = HeadConfig {
        layers: 1,
        outputs: 2,
        dropout: head_dropout,
    };
    let model =
        SequenceClassifier::new(pretrained.backbone, Readout::Mean, head, &device).expect("model");
    let method = MethodConfig::parse("full", &[]).expect("method");
    let (model, report) = method.apply(model).expect("applies");
    let task = task();
    let text_task = TextTask::new(pretrained.tokenizer, task.kind.clone());
    let data = TaskData {
        task: &text_task,
        train: task.part(&task.split.train),
        validation: task.part(&task.split.validation),
    };
    let trainable: Vec<String> = report
        .trainable_paths()
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut trainer = Trainer::new(config, device, run_dir.to_path_buf(), trainable);
    trainer.progress = false;
    let (model, summary) = trainer.fit(model, &data, resume).expect("trains");
    Fitted {
        weights: flat(&model),
        summary,
    }
}

fn flat(model: &SequenceClassifier) -> Vec<f32> {
    struct Flat(Vec<f32>);
    impl ParamVisitor for Flat {
        fn visit<const D: usize>(
            &mut self,
            path: &str,
            p: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            // The key bias shifts every score of a query alike, which softmax ignores: its gradient
            // is rounding noise, which Adam's normalisation turns into steps of any sign.
            if path.ends_with("attention.key.bias") {
                return;
            }
            self.0
                .extend(p.val().into_data().try_to_vec::<f32>().expect("floats"));
        }
    }
    let mut all = Flat(Vec::new());
    visit_params(model, &mut all);
    all.0
}

fn config(batch_size: usize, accumulation: usize) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        lr: 1e-3,
        batch_size,
        eval_batch_size: 16,
        warmup_ratio: 0.0,
        gradient_accumulation: accumulation,
        log_every: 1,
        seed: 5,
        ..TrainConfig::default()
    }
}

fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Step records' losses, and the keys of every record, from a run's `metrics.jsonl`.
fn step_losses(run_dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .filter(|r| r["record"] == "step")
        .map(|r| {
            (
                r["step"].as_u64().expect("step"),
                r["train_loss"].as_f64().expect("loss"),
            )
        })
        .collect()
}

#[test]
fn gradient_accumulation_is_the_larger_batch() {
    let _rng = seeded_section();
    let dir = tempfile::tempdir().expect("dir");
    let model = deterministic_bert(dir.path());
    let whole = fit(&model, 0.0, config(8, 1), &dir.path().join("whole"), false);
    for (batch, accumulation) in [(4, 2), (2, 4)] {
        let run = dir.path().join(format!("b{batch}"));
        let split = fit(&model, 0.0, config(batch, accumulation), &run, false);
        // The same number of optimizer steps, and the same step losses.
        assert_eq!(
            split.summary.state.global_step,
            whole.summary.state.global_step
        );
        for ((_, a), (_, b)) in step_losses(&dir.path().join("whole"))
            .iter()
            .zip(step_losses(&run))
        {
            assert!((a - b).abs() < 1e-5, "step losses {a} vs {b}");
        }
        let difference = largest_difference(&whole.weights, &split.weights);
        assert!(
            difference < 1e-5,
            "batch {batch} x {accumulation}: weights differ by {difference}"
        );
    }
}

#[test]
fn max_steps_and_save_every_resume_mid_epoch_exactly() {
    let _rng = seeded_section();
    let dir = tempfile::tempdir().expect("dir");
    // A constant rate, so that a shorter first budget schedules the same rates.
    let budget = |steps: usize| TrainConfig {
        max_steps: Some(steps),
        save_every: Some(2),
        decay: Decay::Constant,
        ..config(8, 1)
    };
    // Dropout on: the per-step seeding is what makes the resume exact.
    let model = fixtures().join("bert-tiny");
    let whole_dir = dir.path().join("whole");
    let whole = fit(&model, 0.1, budget(12), &whole_dir, false);
    assert_eq!(whole.summary.state.global_step, 12);
    // 8 steps an epoch: stop after 5, in the first epoch.
    let cut_dir = dir.path().join("cut");
    let cut = fit(&model, 0.1, budget(5), &cut_dir, false);
    assert_eq!(
        (
            cut.summary.state.global_step,
            cut.summary.state.steps_in_epoch
        ),
        (5, 5)
    );
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(cut_dir.join("state.json")).expect("state"))
            .expect("json");
    assert_eq!(state["checkpoint"], "step-5");
    let resumed = fit(&model, 0.1, budget(12), &cut_dir, true);
    assert_eq!(resumed.summary.state.global_step, 12);
    let (a, b) = (step_losses(&whole_dir), step_losses(&cut_dir));
    assert_eq!(a.len(), 12);
    assert_eq!(a, b, "the resumed steps are the uninterrupted ones");
}

#[test]
fn evaluations_follow_eval_every_and_patience_counts_them() {
    let _rng = seeded_section();
    let dir = tempfile::tempdir().expect("dir");
    let model = fixtures().join("bert-tiny");
    let run = dir.path().join("run");
    let every = TrainConfig {
        eval_every: Some(3),
        ..config(8, 1)
    };
    let fitted = fit(&model, 0.1, every, &run, false);
    let state = &fitted.summary.state;
    let total = 2 * state.steps_per_epoch;
    assert_eq!(state.global_step, total);
    // Evaluations at 3, 6, ... and at the end.
    let steps: Vec<usize> = state.history.iter().map(|r| r.step).collect();
    let mut want: Vec<usize> = (3..=total).step_by(3).collect();
    if !total.is_multiple_of(3) {
        want.push(total);
    }
    assert_eq!(steps, want);
    // Every record of both logs has the same fields.
    let records: Vec<Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let keys = |r: &Value| {
        let mut k: Vec<String> = r.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert!(records.iter().all(|r| keys(r) == keys(&records[0])));
    let count = |kind: &str| records.iter().filter(|r| r["record"] == kind).count();
    assert_eq!(count("step"), total);
    assert_eq!(count("evaluation"), want.len());
    assert_eq!(count("epoch"), 2);
    let csv = std::fs::read_to_string(run.join("metrics.csv")).expect("csv");
    let mut lines = csv.lines();
    let header = lines.next().expect("header");
    assert!(
        header.starts_with("record,epoch,step,train_loss,learning_rate"),
        "{header}"
    );
    assert_eq!(lines.count(), records.len());

    // With patience 1 the run stops at the first evaluation that is no better.
    let patient = TrainConfig {
        eval_every: Some(1),
        patience: Some(1),
        ..config(8, 1)
    };
    let stopped = fit(&model, 0.1, patient, &dir.path().join("stopped"), false);
    let state = &stopped.summary.state;
    assert!(
        state.global_step < 16,
        "stopped after {} steps",
        state.global_step
    );
    assert_eq!(state.epochs_without_improvement, 1);
}
