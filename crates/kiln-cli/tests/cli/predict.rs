//! Train on one file, evaluate on another, predict a third: `kiln train --test-task`,
//! `kiln eval --task`, `kiln predict`, end to end on the tiny fixtures.

use crate::common::{fixtures, kiln, kiln_in, path, quick_train_args, read_json};
use serde_json::Value;

#[test]
fn train_on_one_file_evaluate_on_another_predict_a_third() {
    let dir = tempfile::tempdir().expect("dir");
    let run = dir.path().join("run");
    let tasks = fixtures().join("tasks");
    let (ok, stdout, stderr) = kiln(&[
        "train",
        "--model",
        path(&fixtures().join("bert-tiny")),
        "--task",
        path(&tasks.join("fire-water.csv")),
        "--test-task",
        path(&tasks.join("fire-water-test.csv")),
        "--method",
        "lora",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--max-len",
        "32",
        "--lr",
        "1e-2",
        "--out",
        path(&run),
    ]);
    assert!(ok, "{stderr}");
    // All 64 rows of the training file train or validate; the test file is the test part.
    assert!(
        stdout.contains("(58 train, 6 validation, 16 test)"),
        "{stdout}"
    );
    let config = read_json(&run.join("run.json"));
    assert_eq!(config["labels"], serde_json::json!(["fire", "water"]));
    let summary = read_json(&run.join("summary.json"));

    // Scoring the test file again gives the run's test metrics.
    let (ok, stdout, stderr) = kiln(&[
        "eval",
        "--run",
        path(&run),
        "--task",
        path(&tasks.join("fire-water-test.csv")),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let evaluation: Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(evaluation["examples"], 16);
    assert_eq!(
        evaluation["metrics"]["accuracy"],
        summary["test"]["accuracy"]
    );

    // A file with classes the run never saw is refused, naming them.
    let odd = dir.path().join("odd.csv");
    std::fs::write(&odd, "text,label\nsome fire,fire\nsome steam,steam\n").expect("write");
    let (ok, _, stderr) = kiln(&["eval", "--run", path(&run), "--task", path(&odd)]);
    assert!(!ok);
    assert!(
        stderr.contains("`steam`") && stderr.contains("fire, water"),
        "{stderr}"
    );

    // Predictions for a file of new texts, ids carried through, in both formats.
    let new = tasks.join("fire-water-new.csv");
    let csv_out = dir.path().join("out/predictions.csv");
    let (ok, _, stderr) = kiln(&[
        "predict",
        "--run",
        path(&run),
        "--input",
        path(&new),
        "--output",
        path(&csv_out),
    ]);
    assert!(ok, "{stderr}");
    let written = std::fs::read_to_string(&csv_out).expect("csv");
    let mut lines = written.lines();
    assert_eq!(lines.next(), Some("id,text,label,prob_fire,prob_water"));
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), 6);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], format!("n{i}"));
        let (fire, water): (f64, f64) = (row[3].parse().expect("p"), row[4].parse().expect("p"));
        assert!((fire + water - 1.0).abs() < 1e-5, "{row:?}");
        assert_eq!(row[2], if fire > water { "fire" } else { "water" });
    }
    let (ok, stdout, stderr) = kiln(&[
        "predict",
        "--run",
        path(&run),
        "--input",
        path(&new),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let records: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(records.len(), 6);
    assert_eq!(records[2]["id"], "n2");
    assert_eq!(records[2]["label"].as_str(), Some(rows[2][2].as_str()));

    // One text on the command line gets the label its row got.
    let (ok, stdout, stderr) = kiln(&["predict", "--run", path(&run), "--text", &rows[4][1]]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with(&format!("{}\t", rows[4][2])), "{stdout}");
}

#[test]
fn a_split_directory_trains_on_train_and_tests_on_test() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let lines = std::fs::read_to_string(fixtures().join("tasks/fire-water.csv")).expect("read");
    for (i, line) in lines.lines().skip(1).enumerate() {
        let (text, label) = line.rsplit_once(',').expect("two columns");
        let part = if i < 48 { "train" } else { "test" };
        let file = data.join(part).join(label).join(format!("{i}.txt"));
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, text).expect("write");
    }
    let model = fixtures().join("bert-tiny");
    let out = dir.path().join("run");
    let mut args = quick_train_args(path(&model), path(&data));
    args.extend(["--out", path(&out)]);
    let (ok, stdout, stderr) = kiln(&args);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("(44 train, 4 validation, 16 test)"),
        "{stdout}"
    );
}

#[test]
fn without_out_every_run_gets_a_fresh_folder() {
    let dir = tempfile::tempdir().expect("dir");
    let (model, task) = (
        fixtures().join("bert-tiny"),
        fixtures().join("tasks/fire-water.csv"),
    );
    for _ in 0..2 {
        let (ok, _, stderr) = kiln_in(dir.path(), &quick_train_args(path(&model), path(&task)));
        assert!(ok, "{stderr}");
    }
    let mut runs: Vec<String> = std::fs::read_dir(dir.path().join("runs"))
        .expect("runs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    runs.sort();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r.starts_with("bitfit-20")), "{runs:?}");
}

/// Trains `method` (with `options`) on the fire/water task into `out`.
fn train_adapter(out: &std::path::Path, method: &str, options: &[&str]) -> Value {
    let (model, task) = (
        fixtures().join("bert-tiny"),
        fixtures().join("tasks").join("fire-water.csv"),
    );
    let mut args = vec![
        "train",
        "--model",
        path(&model),
        "--task",
        path(&task),
        "--method",
        method,
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-len",
        "16",
        "--out",
        path(out),
    ];
    args.extend_from_slice(options);
    let (ok, _, stderr) = kiln(&args);
    assert!(ok, "{method}: {stderr}");
    read_json(&out.join("run.json"))
}

/// MAD-X's stack (a task adapter trained over a frozen saved one), then several runs' tasks
/// answered in one pass with `kiln predict --run A --run B`.
#[test]
fn stacked_adapters_train_and_several_runs_predict_in_one_pass() {
    let dir = tempfile::tempdir().expect("dir");
    let (lang, task, other) = (
        dir.path().join("lang"),
        dir.path().join("task"),
        dir.path().join("other"),
    );
    train_adapter(&lang, "pfeiffer", &["--adapter-name", "lang"]);
    let lang_adapter = lang.join("adapter");
    let config = train_adapter(
        &task,
        "pfeiffer",
        &["--adapter-name", "task", "--stack-on", path(&lang_adapter)],
    );
    assert_eq!(config["method"]["stack_on"][0], path(&lang_adapter));
    // The stacked run evaluates as it trained: the saved adapter is loaded again under it.
    let (ok, stdout, stderr) = kiln(&["eval", "--run", path(&task), "--split", "test", "--json"]);
    assert!(ok, "{stderr}");
    let evaluation: Value = serde_json::from_str(stdout.trim()).expect("json");
    let summary = read_json(&task.join("summary.json"));
    assert_eq!(
        evaluation["metrics"]["accuracy"],
        summary["test"]["accuracy"]
    );
    // Only the new adapter trained: the stacked-on one holds exactly what was saved.
    let trained = crate::common::tensor_names(&task.join("best/trained.safetensors"));
    assert!(
        trained.iter().any(|n| n.contains(".adapters.loaded.1.")),
        "{trained:?}"
    );
    assert!(
        !trained.iter().any(|n| n.contains(".adapters.loaded.0.")),
        "{trained:?}"
    );

    train_adapter(&other, "compacter++", &["--reduction-factor", "4"]);
    let new = fixtures().join("tasks").join("fire-water-new.csv");
    let out = dir.path().join("both.csv");
    let (ok, stdout, stderr) = kiln(&[
        "predict",
        "--run",
        path(&lang),
        "--run",
        path(&other),
        "--input",
        path(&new),
        "--output",
        path(&out),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("lang: "), "{stdout}");
    // One file per task, each with every row.
    for task in ["lang", "other"] {
        let written = std::fs::read_to_string(dir.path().join(format!("both-{task}.csv")))
            .expect("a file per task");
        let rows = std::fs::read_to_string(&new)
            .expect("input")
            .lines()
            .count();
        assert_eq!(written.lines().count(), rows, "{task}: {written}");
    }
    // The same labels as each run alone.
    for (run, task) in [(&lang, "lang"), (&other, "other")] {
        let (ok, alone, stderr) = kiln(&[
            "predict",
            "--run",
            path(run),
            "--input",
            path(&new),
            "--json",
        ]);
        assert!(ok, "{stderr}");
        let (ok, together, stderr) = kiln(&[
            "predict",
            "--run",
            path(&lang),
            "--run",
            path(&other),
            "--input",
            path(&new),
            "--json",
        ]);
        assert!(ok, "{stderr}");
        let labels = |text: &str, task: Option<&str>| -> Vec<String> {
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
                .filter(|v| task.is_none_or(|t| v["task"] == t))
                .map(|v| v["label"].as_str().expect("label").to_string())
                .collect()
        };
        assert_eq!(
            labels(&alone, None),
            labels(&together, Some(task)),
            "{task}"
        );
    }
    // A run that cannot join (its adapter is a parallel one) is refused by name.
    let parallel = dir.path().join("parallel");
    train_adapter(&parallel, "parallel", &[]);
    let (ok, _, stderr) = kiln_in(
        dir.path(),
        &[
            "predict", "--run", "lang", "--run", "parallel", "--text", "fire",
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("not a sequential bottleneck adapter"),
        "{stderr}"
    );
    let (ok, _, stderr) = kiln(&[
        "predict",
        "--run",
        path(&lang),
        "--text",
        "x",
        "--drop-layers",
        "1",
    ]);
    assert!(!ok);
    assert!(stderr.contains("--drop-layers"), "{stderr}");
}

/// A multi-label task end to end: `fire|clay` rows train a sigmoid head, the threshold is tuned
/// on validation, the held-out JSONL file's lists are read with the run's labels, and predict,
/// eval and merge speak multi-label.
#[test]
fn a_multi_label_task_trains_evaluates_predicts_and_merges() {
    let dir = tempfile::tempdir().expect("dir");
    let run = dir.path().join("run");
    let tasks = fixtures().join("tasks");
    let (ok, stdout, stderr) = kiln(&[
        "train",
        "--model",
        path(&fixtures().join("bert-tiny")),
        "--task",
        path(&tasks.join("elements-multi.csv")),
        "--label-column",
        "labels",
        "--multi-label",
        "--test-task",
        path(&tasks.join("elements-multi-test.jsonl")),
        "--method",
        "lora",
        "--readout",
        "pooler",
        "--epochs",
        "3",
        "--lr",
        "1e-2",
        "--max-len",
        "16",
        "--out",
        path(&run),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("decision threshold"), "{stdout}");
    assert!(stdout.contains("test micro_f1"), "{stdout}");
    let summary = read_json(&run.join("summary.json"));
    let threshold = summary["threshold"].as_f64().expect("a tuned threshold");
    assert!(threshold > 0.0 && threshold < 1.0);
    for metric in ["micro_f1", "macro_f1", "subset_accuracy"] {
        assert!(summary["test"][metric].is_number(), "{metric}: {summary}");
    }
    assert_eq!(read_json(&run.join("run.json"))["multi_label"], true);

    // The test file again gives the recorded test metrics, at the tuned threshold.
    let (ok, stdout, stderr) = kiln(&[
        "eval",
        "--run",
        path(&run),
        "--task",
        path(&tasks.join("elements-multi-test.jsonl")),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let evaluation: Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(
        evaluation["metrics"]["micro_f1"],
        summary["test"]["micro_f1"]
    );
    assert_eq!(evaluation["metrics"]["threshold"], summary["threshold"]);

    // Predictions are label lists with every label's probability.
    let (ok, stdout, stderr) = kiln(&[
        "predict",
        "--run",
        path(&run),
        "--text",
        "kiln water clay was",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let prediction: Value = serde_json::from_str(stdout.trim()).expect("json");
    assert!(prediction["labels"].is_array(), "{prediction}");
    let probabilities = prediction["probabilities"].as_object().expect("by label");
    assert_eq!(probabilities.len(), 3);
    let above: Vec<&String> = probabilities
        .iter()
        .filter(|(_, p)| p.as_f64().expect("p") > threshold)
        .map(|(l, _)| l)
        .collect();
    assert_eq!(
        prediction["labels"].as_array().expect("list").len(),
        above.len()
    );

    // Merged as transformers' multi-label sequence classifier.
    let merged = dir.path().join("merged");
    let (ok, _, stderr) = kiln(&["merge", "--run", path(&run), "--out", path(&merged)]);
    assert!(ok, "{stderr}");
    let config = read_json(&merged.join("config.json"));
    assert_eq!(config["problem_type"], "multi_label_classification");
    assert_eq!(config["id2label"]["0"], "clay");
}
