//! `kiln pretrain` then `kiln fpt` end to end on the tiny fixtures: the pretrained directory is
//! one kiln loads, and FPT runs on it, on BERT, and at random initialisation.

use crate::common::{fixtures, kiln, path};

use serde_json::Value;

fn summary(dir: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).expect("json")
}

#[test]
fn pretrain_writes_a_model_that_fpt_trains_on() {
    let dir = tempfile::tempdir().expect("dir");
    let corpus = dir.path().join("corpus.txt");
    let lines: Vec<&str> = ["the cat sat on the mat", "a dog sat on a log"]
        .iter()
        .cycle()
        .take(60)
        .copied()
        .collect();
    std::fs::write(&corpus, lines.join("\n")).expect("write corpus");
    let run = dir.path().join("pretrain");
    let (ok, stdout, stderr) = kiln(&[
        "pretrain",
        "--corpus",
        path(&corpus),
        "--tokenizer",
        path(&fixtures().join("gpt2-tiny")),
        "--layers",
        "1",
        "--width",
        "16",
        "--heads",
        "2",
        "--block-size",
        "16",
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--held-out",
        "0.2",
        "--out",
        path(&run),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("held-out perplexity"), "{stdout}");
    let pretrained = summary(&run);
    let (before, after) = (
        pretrained["held_out_perplexity_before"]
            .as_f64()
            .expect("number"),
        pretrained["held_out_perplexity"].as_f64().expect("number"),
    );
    assert!(after < before, "perplexity {before} -> {after}");

    let model = run.join("model");
    for (backbone, extra) in [
        (model.clone(), vec![]),
        (model.clone(), vec!["--random-init"]),
        (fixtures().join("bert-tiny"), vec!["--full"]),
    ] {
        let out = dir.path().join(format!("fpt-{}", extra.join("")));
        let mut args = vec![
            "fpt",
            "--model",
            path(&backbone),
            "--task",
            "bit-xor",
            "--train-examples",
            "32",
            "--eval-examples",
            "16",
            "--epochs",
            "1",
            "--out",
            path(&out),
        ];
        args.extend(extra.iter().copied());
        let (ok, stdout, stderr) = kiln(&args);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("test accuracy"), "{stdout}");
        let fpt = summary(&out);
        let share = fpt["trainable_percent"].as_f64().expect("number");
        if extra.contains(&"--full") {
            assert_eq!(share, 100.0);
        } else {
            assert!(share < 100.0 && share > 0.0, "{share}");
            assert_eq!(fpt["pretrained"], Value::Bool(extra.is_empty()));
        }
    }

    // A task too long for the position table is refused up front, naming the flags to change.
    let (ok, _, stderr) = kiln(&[
        "fpt",
        "--model",
        path(&model),
        "--task",
        "bit-memory",
        "--bits",
        "100",
        "--patch-size",
        "5",
        "--train-examples",
        "4",
        "--out",
        path(&dir.path().join("too-long")),
    ]);
    assert!(!ok);
    assert!(stderr.contains("position table"), "{stderr}");
}
