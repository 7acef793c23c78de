//! `kiln train --objective causal-lm` then `kiln generate --run` on the tiny GPT-2: LoRA and
//! prompt tuning lower the validation perplexity of a small corpus, the run generates from its
//! trained method (the same tokens with the key/value cache and without), a resumed run may
//! train longer, `kiln eval` reproduces its validation perplexity, and `kiln predict`
//! refuses a language-model run by name.

use std::path::Path;

use crate::common::{fixtures, kiln, path, read_json};

/// A corpus of short repeated sentences, one document per line.
fn corpus(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("corpus.txt");
    let lines: Vec<&str> = [
        "the cat sat on the mat",
        "a dog sat on a log",
        "the bird sang in the tree",
    ]
    .iter()
    .cycle()
    .take(60)
    .copied()
    .collect();
    std::fs::write(&file, lines.join("\n")).expect("write corpus");
    file
}

fn train_args<'a>(model: &'a str, corpus: &'a str, method: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--objective",
        "causal-lm",
        "--model",
        model,
        "--task",
        corpus,
        "--method",
        method,
        "--max-len",
        "16",
        "--batch-size",
        "4",
        "--lr",
        "0.01",
        "--out",
        out,
    ]
}

#[test]
fn causal_lm_fine_tuning_lowers_perplexity_and_the_run_generates() {
    let dir = tempfile::tempdir().expect("dir");
    let corpus = corpus(dir.path());
    let gpt2 = fixtures().join("gpt2-tiny");
    for method in ["lora", "prompt"] {
        let out = dir.path().join(method);
        let mut args = train_args(path(&gpt2), path(&corpus), method, path(&out));
        args.extend(["--epochs", "2"]);
        let (ok, stdout, stderr) = kiln(&args);
        assert!(ok, "{method}: {stderr}");
        assert!(stdout.contains("validation perplexity"), "{stdout}");
        let summary = read_json(&out.join("summary.json"));
        let before = summary["validation_before"]["perplexity"]
            .as_f64()
            .expect("perplexity before");
        let after = summary["validation"]["perplexity"]
            .as_f64()
            .expect("perplexity after");
        assert!(after < before, "{method}: perplexity {before} -> {after}");
        let run = read_json(&out.join("run.json"));
        assert_eq!(run["objective"], "causal-lm");
        let trainable = summary["trainable_params"].as_u64().expect("count");
        let total = summary["total_params"].as_u64().expect("count");
        assert!(
            trainable > 0 && trainable < total / 10,
            "{trainable} of {total}"
        );

        let generate = |extra: &[&str]| -> serde_json::Value {
            let mut args = vec![
                "generate",
                "--run",
                path(&out),
                "--prompt",
                "the cat",
                "--json",
            ];
            args.extend(extra);
            let (ok, stdout, stderr) = kiln(&args);
            assert!(ok, "{method}: {stderr}");
            serde_json::from_str(stdout.trim()).expect("json")
        };
        let cached = generate(&["--max-new-tokens", "6"]);
        assert_eq!(cached["tokens"].as_array().expect("tokens").len(), 6);
        assert_eq!(
            cached["tokens"],
            generate(&["--max-new-tokens", "6", "--no-cache"])["tokens"],
            "{method}: the cache changes nothing"
        );
    }

    // The LoRA run continues for a third epoch.
    let out = dir.path().join("lora");
    let mut args = train_args(path(&gpt2), path(&corpus), "lora", path(&out));
    args.extend(["--epochs", "3", "--resume"]);
    let (ok, stdout, stderr) = kiln(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("validation perplexity"), "{stdout}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    assert!(metrics.contains("\"epoch\":3"), "{metrics}");

    // Classification commands name what the run is.
    let (ok, _, stderr) = kiln(&["predict", "--run", path(&out), "--text", "x"]);
    assert!(!ok && stderr.contains("causal language model"), "{stderr}");

    // `kiln eval` reproduces the recorded validation perplexity and scores other corpora.
    let (ok, stdout, stderr) = kiln(&["eval", "--run", path(&out)]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("validation perplexity") && stdout.contains("recorded at epoch"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = kiln(&["eval", "--run", path(&out), "--task", path(&corpus)]);
    assert!(ok && stdout.contains("perplexity"), "{stderr}");
    let (ok, _, stderr) = kiln(&["eval", "--run", path(&out), "--split", "test"]);
    assert!(!ok && stderr.contains("no test corpus"), "{stderr}");
}

#[test]
fn causal_lm_refuses_bert_head_only_methods_and_label_flags() {
    let dir = tempfile::tempdir().expect("dir");
    let corpus = corpus(dir.path());
    let gpt2 = fixtures().join("gpt2-tiny");
    let bert = fixtures().join("bert-tiny");
    let out = dir.path().join("out");
    for (model, method, extra, expected) in [
        (&bert, "lora", vec![], "not a GPT-2"),
        (&gpt2, "linear-probe", vec![], "trains only the task head"),
        (&gpt2, "lora", vec!["--multi-label"], "--multi-label"),
        (&gpt2, "lora", vec!["--readout", "last"], "--readout"),
        (
            &gpt2,
            "p-tuning",
            vec!["--template", "2,2"],
            "--template N,0",
        ),
    ] {
        let mut args = train_args(path(model), path(&corpus), method, path(&out));
        args.extend(extra);
        let (ok, _, stderr) = kiln(&args);
        assert!(!ok && stderr.contains(expected), "{method}: {stderr}");
        assert!(!out.exists(), "a refused run leaves no directory");
    }
    // A classification run is not a language model to generate from.
    let (ok, _, stderr) = kiln(&[
        "generate",
        "--run",
        path(&dir.path().join("none")),
        "--prompt",
        "x",
    ]);
    assert!(!ok && stderr.contains("run.json"), "{stderr}");
}
