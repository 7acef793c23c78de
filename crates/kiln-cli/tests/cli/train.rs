//! `kiln train`, `kiln eval` and `kiln methods` end to end on the tiny fixtures.

use crate::common::{fixtures, kiln, path, quick_train_args, read_json};

use serde_json::Value;

#[test]
fn methods_lists_every_registered_method() {
    let (ok, stdout, stderr) = kiln(&["methods"]);
    assert!(ok, "{stderr}");
    for name in kiln_tuning::registry().iter().map(|m| m.name) {
        assert!(
            stdout.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{stdout}"
        );
    }
    assert!(stdout.contains("--rank"), "{stdout}");
}

#[test]
fn train_then_eval_reproduces_the_recorded_metric() {
    let dir = tempfile::tempdir().expect("dir");
    let run = dir.path().join("run");
    let model = fixtures().join("bert-tiny");
    let task = fixtures().join("tasks/fire-water.csv");
    let train_args = [
        "train",
        "--model",
        path(&model),
        "--task",
        path(&task),
        "--method",
        "lora",
        "--rank",
        "4",
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
    ];
    let (ok, stdout, stderr) = kiln(&train_args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("lora-r4: 1090 of"), "{stdout}");
    assert!(stdout.contains("test accuracy"), "{stdout}");
    for file in [
        "run.json",
        "state.json",
        "best.json",
        "summary.json",
        "metrics.jsonl",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let summary = read_json(&run.join("summary.json"));
    assert_eq!(summary["trainable_params"], 1090);
    let epochs = std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("log")
        .lines()
        .filter(|l| l.contains(r#""record":"epoch""#))
        .count();
    assert_eq!(epochs, 2);

    let (ok, stdout, stderr) = kiln(&["eval", "--run", path(&run)]);
    assert!(ok, "{stderr}\n{stdout}");
    assert!(stdout.contains("validation accuracy"), "{stdout}");

    // The run directory is not overwritten by accident.
    let (ok, _, stderr) = kiln(&train_args);
    assert!(!ok);
    assert!(
        stderr.contains("already holds a run") && stderr.contains("--resume"),
        "{stderr}"
    );
}

#[test]
fn bad_requests_name_what_is_wrong() {
    let dir = tempfile::tempdir().expect("dir");
    let model = fixtures().join("bert-tiny");
    let task = fixtures().join("tasks/fire-water.csv");
    let out = dir.path().join("run");
    let base = [
        "train",
        "--model",
        path(&model),
        "--task",
        path(&task),
        "--out",
        path(&out),
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        kiln(&args)
    };
    let (ok, _, stderr) = with(&["--method", "lorra"]);
    assert!(!ok && stderr.contains("unknown method `lorra`"), "{stderr}");
    let (ok, _, stderr) = with(&["--method", "bitfit", "--rank", "4"]);
    assert!(!ok && stderr.contains("--rank"), "{stderr}");
    let (ok, _, stderr) = with(&["--method", "full", "--label-column", "category"]);
    assert!(!ok && stderr.contains("category"), "{stderr}");
}

/// `kiln train` on the tiny BERT and task at rate 1e-2 with `extra` options, into `out`.
fn train_tiny(out: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let mut options = vec!["--lr", "1e-2"];
    options.extend_from_slice(extra);
    train_fixture("bert-tiny", out, &options)
}

/// `kiln train` on the fixture model `fixture` and the tiny task, one epoch of batches of 8,
/// with `extra` options (length 32 unless they say), into `out`.
fn train_fixture(fixture: &str, out: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let model = fixtures().join(fixture);
    let task = fixtures().join("tasks/fire-water.csv");
    let mut args = vec![
        "train",
        "--model",
        path(&model),
        "--task",
        path(&task),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--out",
        path(out),
    ];
    if !extra.contains(&"--max-len") {
        args.extend_from_slice(&["--max-len", "32"]);
    }
    args.extend_from_slice(extra);
    kiln(&args)
}

#[test]
fn adapters_train_save_and_fuse_in_two_stages() {
    let dir = tempfile::tempdir().expect("dir");
    // Stage one: two adapters, saved on their own under their names.
    for name in ["first", "second"] {
        let run = dir.path().join(name);
        let (ok, stdout, stderr) = train_tiny(
            &run,
            &[
                "--method",
                "pfeiffer",
                "--adapter-name",
                name,
                "--seed",
                "3",
            ],
        );
        assert!(ok, "{stderr}");
        assert!(
            stdout.contains(&format!("adapter `{name}` saved")),
            "{stdout}"
        );
        let config = read_json(&run.join("adapter/adapter_config.json"));
        assert_eq!(config["name"], name);
        assert_eq!(config["method"], "pfeiffer");
        assert_eq!(config["num_layers"], 2);
        assert_eq!(config["adapter"]["bottleneck"], 2);
        assert!(run.join("adapter/adapter.safetensors").is_file());
    }
    // Stage two: fuse them for the target task; eval rebuilds the fusion and reproduces it.
    let adapters = format!(
        "{},{}",
        path(&dir.path().join("first/adapter")),
        path(&dir.path().join("second/adapter"))
    );
    let fused = dir.path().join("fused");
    let (ok, stdout, stderr) = train_tiny(&fused, &["--method", "fusion", "--adapters", &adapters]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("loaded adapter `first`"), "{stdout}");
    // 2 layers x (3·32² + 2·32) + head (32·2 + 2).
    assert!(stdout.contains("fusion: 6338 of"), "{stdout}");
    let (ok, stdout, stderr) = kiln(&["eval", "--run", path(&fused)]);
    assert!(ok, "{stderr}\n{stdout}");

    // The same adapter twice is refused by name.
    let first = path(&dir.path().join("first/adapter")).to_string();
    let (ok, _, stderr) = train_tiny(
        &dir.path().join("twice"),
        &[
            "--method",
            "fusion",
            "--adapters",
            &format!("{first},{first}"),
        ],
    );
    assert!(
        !ok && stderr.contains("already holds an adapter called `first`"),
        "{stderr}"
    );
}

#[test]
fn adapter_drop_is_measured_at_inference() {
    let dir = tempfile::tempdir().expect("dir");
    let run = dir.path().join("drop");
    let (ok, stdout, stderr) = train_tiny(&run, &["--method", "adapter-drop"]);
    assert!(ok, "{stderr}\n{stdout}");
    let (ok, stdout, stderr) = kiln(&["eval", "--run", path(&run), "--adapter-drop", "0"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("examples in"), "{stdout}");
    let (ok, _, stderr) = kiln(&["eval", "--run", path(&run), "--adapter-drop", "9"]);
    assert!(!ok && stderr.contains("--adapter-drop 9"), "{stderr}");
}

#[test]
fn prompt_methods_train_save_and_reload() {
    let dir = tempfile::tempdir().expect("dir");
    let prefix = dir.path().join("prefix");
    let (ok, stdout, stderr) = train_tiny(&prefix, &["--method", "prefix", "--prefix-len", "4"]);
    assert!(ok, "{stderr}");
    // The folded prefixes are the adapter saved on its own.
    assert!(stdout.contains("adapter `prefix` saved"), "{stdout}");
    let config = read_json(&prefix.join("adapter/adapter_config.json"));
    assert_eq!(config["adapter"]["prefix_len"], 4);
    let (ok, stdout, stderr) = kiln(&["eval", "--run", path(&prefix)]);
    assert!(ok, "{stderr}\n{stdout}");

    let prompt = dir.path().join("prompt");
    let (ok, stdout, stderr) = train_tiny(
        &prompt,
        &[
            "--method",
            "prompt",
            "--prompt-len",
            "3",
            "--prompt-init-text",
            "fire water",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("prompt: 162 of"), "{stdout}");
    let run = read_json(&prompt.join("run.json"));
    assert_eq!(run["method"]["init"]["text"], "fire water");
    assert!(
        run["method"]["init"]["ids"]
            .as_array()
            .is_some_and(|ids| !ids.is_empty())
    );
    let (ok, stdout, stderr) = kiln(&["eval", "--run", path(&prompt)]);
    assert!(ok, "{stderr}\n{stdout}");

    let (ok, _, stderr) = train_tiny(
        &dir.path().join("bad"),
        &["--method", "p-tuning", "--template", "1,2,3"],
    );
    assert!(!ok && stderr.contains("--template"), "{stderr}");

    // The tiny BERT has 64 positions: 60 tokens and 5 virtual ones do not fit, so the text
    // gets the 59 that do, with a notice.
    let long = dir.path().join("long");
    let (ok, stdout, stderr) = train_tiny(
        &long,
        &["--method", "prompt", "--prompt-len", "5", "--max-len", "60"],
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("--max-len 60 plus 5 virtual tokens: the model has 64 positions; using 59"),
        "{stdout}"
    );
    assert_eq!(read_json(&long.join("run.json"))["max_len"], 59);
}

#[test]
fn child_tuning_runs_from_the_cli_and_reuses_its_fisher_estimate() {
    let dir = tempfile::tempdir().expect("dir");
    let first = dir.path().join("d");
    let (ok, stdout, stderr) = train_tiny(
        &first,
        &[
            "--method",
            "full",
            "--child-tuning",
            "d",
            "--fisher-batches",
            "2",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Fisher information saved"), "{stdout}");
    assert!(stdout.contains("the child network keeps"), "{stdout}");
    let fisher = first.join("fisher.safetensors");
    assert!(fisher.is_file());

    let (ok, stdout, stderr) = train_tiny(
        &dir.path().join("d-again"),
        &[
            "--method",
            "full",
            "--child-tuning",
            "d",
            "--fisher",
            path(&fisher),
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Fisher information from"), "{stdout}");

    let (ok, _, stderr) = train_tiny(
        &dir.path().join("f"),
        &[
            "--method",
            "full",
            "--child-tuning",
            "f",
            "--reserve",
            "0.3",
        ],
    );
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = train_tiny(
        &dir.path().join("bad"),
        &[
            "--method",
            "full",
            "--child-tuning",
            "f",
            "--reserve",
            "1.5",
        ],
    );
    assert!(!ok && stderr.contains("--reserve 1.5"), "{stderr}");
}

#[test]
fn the_small_data_study_runs_every_cell_and_resumes() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("study");
    let model = fixtures().join("bert-tiny");
    let task = fixtures().join("tasks/fire-water.csv");
    let args = [
        "study",
        "--model",
        path(&model),
        "--task",
        path(&task),
        "--sizes",
        "8,16",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-len",
        "32",
        "--lr",
        "1e-3",
        "--out",
        path(&out),
    ];
    let (ok, stdout, stderr) = kiln(&args);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("| train examples | vanilla | child-f | child-d |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\n| 8 |") && stdout.contains("\n| 16 |"),
        "{stdout}"
    );
    let runs = std::fs::read_dir(out.join("n16")).expect("n16").count();
    assert_eq!(runs, 6, "3 variants x 2 seeds");
    let run = read_json(&out.join("n8/child-d-s43/run.json"));
    assert_eq!(run["train_examples"], 8);
    assert_eq!(run["train"]["child_tuning"]["mode"], "d");
    let table = std::fs::read_to_string(out.join("study.md")).expect("study.md");

    // A second call finds every run done and writes the same table.
    let (ok, stdout, stderr) = kiln(&args);
    assert!(ok, "{stderr}");
    assert!(
        !stderr.contains("epoch 1/1"),
        "nothing trains again: {stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("study.md")).expect("md"),
        table
    );
    assert!(stdout.contains(table.trim()), "{stdout}");
}

#[test]
fn compare_writes_table_plot_and_page_for_every_method() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("compare");
    let model = fixtures().join("bert-tiny");
    let task = fixtures().join("tasks/fire-water.csv");
    let (ok, stdout, stderr) = kiln(&[
        "compare",
        "--model",
        path(&model),
        "--task",
        path(&task),
        "--methods",
        "linear-probe,bitfit,lora",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-len",
        "32",
        "--title",
        "fire & water",
        "--out",
        path(&out),
    ]);
    assert!(ok, "{stderr}");
    for label in ["linear-probe", "bitfit", "lora-r8"] {
        assert!(stdout.contains(&format!("| {label} | ")), "{stdout}");
    }
    let results = read_json(&out.join("results.json"));
    assert_eq!(results["runs"].as_array().expect("runs").len(), 6);
    let rows = results["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["seeds"] == 2));
    // Each method trains its own share: the probe least, LoRA more than BitFit here.
    let share = |i: usize| rows[i]["trainable_percent"].as_f64().expect("share");
    assert!(share(0) < share(1) && share(0) < share(2), "{rows:?}");
    let svg = std::fs::read_to_string(out.join("plot.svg")).expect("plot.svg");
    assert!(svg.starts_with("<svg") && svg.contains("lora-r8"));
    let page = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    assert!(page.contains("fire &amp; water") && page.contains("<td>bitfit</td>"));
    assert!(page.contains("<svg"));

    // The same folder with other settings: nothing old is shown as new.
    let compare = |methods: &str, epochs: &str| {
        kiln(&[
            "compare",
            "--model",
            path(&model),
            "--task",
            path(&task),
            "--methods",
            methods,
            "--epochs",
            epochs,
            "--batch-size",
            "8",
            "--max-len",
            "32",
            "--out",
            path(&out),
        ])
    };
    let (ok, _, stderr) = compare("lora", "2");
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("lora-s42 holds a run with other settings (train.epochs: 1 -> 2)"),
        "{stderr}"
    );
    let results = read_json(&out.join("results.json"));
    let run = &results["runs"][0];
    assert_eq!(run["reused"], false);
    assert!(
        run["dir"].as_str().expect("dir").ends_with("lora-s42-2"),
        "{run}"
    );
    let (ok, _, stderr) = compare("lora", "2");
    assert!(ok && !stderr.contains("epoch 1/2"), "reused: {stderr}");
    assert_eq!(
        read_json(&out.join("results.json"))["runs"][0]["reused"],
        true
    );

    // Per-method options, and a run that fails is a line of the table, the others still land.
    let (ok, stdout, stderr) = compare("lora:rank=2,partial-k:k=9,lora:rank=4:alpha=8", "1");
    assert!(!ok && stderr.contains("1 of 3 runs failed"), "{stderr}");
    assert!(
        stdout.contains("| lora-r2 | ") && stdout.contains("| lora-r4 | "),
        "{stdout}"
    );
    assert!(
        stdout.contains("| partial-k:k=9 (seed 42) | failed: "),
        "{stdout}"
    );
    let results = read_json(&out.join("results.json"));
    assert_eq!(results["failed"][0]["spec"], "partial-k:k=9");
    assert_eq!(
        read_json(&out.join("lora-rank4-alpha8-s42/run.json"))["method"]["alpha"],
        8.0
    );

    let (ok, _, stderr) = kiln(&[
        "compare",
        "--model",
        path(&model),
        "--task",
        path(&task),
        "--methods",
        "lora,fusion",
        "--out",
        path(&dir.path().join("refused")),
    ]);
    assert!(!ok && stderr.contains("fusion"), "{stderr}");
}

#[test]
fn a_lora_run_exports_to_peft_and_merges_into_a_hf_checkpoint() {
    let dir = tempfile::tempdir().expect("dir");
    let train = |method: &str, out: &std::path::Path| {
        let (ok, _, stderr) = train_fixture(
            "bert-tiny",
            out,
            &["--method", method, "--readout", "pooler"],
        );
        assert!(ok, "{stderr}");
    };
    let run = dir.path().join("lora");
    train("lora", &run);
    let adapter = dir.path().join("peft");
    let (ok, stdout, stderr) = kiln(&["export", "--run", path(&run), "--out", path(&adapter)]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("SEQ_CLS"), "{stdout}");
    let config = read_json(&adapter.join("adapter_config.json"));
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 8);
    assert_eq!(config["modules_to_save"], serde_json::json!(["classifier"]));
    assert!(adapter.join("adapter_model.safetensors").is_file());

    let merged = dir.path().join("merged");
    let (ok, stdout, stderr) = kiln(&["merge", "--run", path(&run), "--out", path(&merged)]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("4 weight-side deltas merged"), "{stdout}");
    let config = read_json(&merged.join("config.json"));
    assert_eq!(
        config["architectures"],
        serde_json::json!(["BertForSequenceClassification"])
    );
    for file in ["model.safetensors", "vocab.txt"] {
        assert!(merged.join(file).is_file(), "{file}");
    }
    // The merged directory is a BERT kiln loads again.
    let (ok, _, stderr) = kiln(&["encode", "--model", path(&merged), "--text", "fire"]);
    assert!(ok, "{stderr}");

    let bitfit = dir.path().join("bitfit");
    train("bitfit", &bitfit);
    let elsewhere = dir.path().join("bitfit-peft");
    let (ok, _, stderr) = kiln(&["export", "--run", path(&bitfit), "--out", path(&elsewhere)]);
    assert!(!ok && stderr.contains("bitfit"), "{stderr}");
}

#[test]
fn training_starts_from_a_peft_adapter_and_prompts_export() {
    let dir = tempfile::tempdir().expect("dir");
    // A BERT sequence classifier (pooler + one layer) started from the peft adapter `adapter`.
    let from_bert_adapter = |method: &str, adapter: &std::path::Path, out: &std::path::Path| {
        let options = [
            "--method",
            method,
            "--readout",
            "pooler",
            "--peft-adapter",
            path(adapter),
        ];
        train_fixture("bert-tiny", out, &options)
    };
    for (method, adapter) in [("lora", "peft-bert-lora"), ("prompt", "peft-bert-prompt")] {
        let run = dir.path().join(adapter);
        let adapter_dir = fixtures().join("peft").join(adapter);
        let (ok, stdout, stderr) = from_bert_adapter(method, &adapter_dir, &run);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("started from the peft adapter"), "{stdout}");
        let recorded = read_json(&run.join("run.json"));
        match method {
            "lora" => assert_eq!(
                (
                    recorded["method"]["rank"].clone(),
                    recorded["method"]["alpha"].clone()
                ),
                (Value::from(4), Value::from(8.0))
            ),
            _ => assert_eq!(recorded["method"]["at_start"], true),
        }
        // kiln eval rebuilds the model from the adapter and the trained weights.
        let (ok, _, stderr) = kiln(&["eval", "--run", path(&run)]);
        assert!(ok, "{stderr}");
        // ... and the run exports to peft again.
        let out = dir.path().join(format!("{adapter}-again"));
        let (ok, stdout, stderr) = kiln(&["export", "--run", path(&run), "--out", path(&out)]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("SEQ_CLS"), "{stdout}");
    }
    // GPT-2 prefixes: from peft's (P-tuning v2 holds them), and from kiln's prefix tuning
    // (folded), out to peft again.
    let peft_prefix = fixtures().join("peft/peft-gpt2-prefix");
    for (name, options) in [
        (
            "gpt2-from-peft",
            vec![
                "--method",
                "p-tuning-v2",
                "--peft-adapter",
                path(&peft_prefix),
                "--seed",
                "1",
            ],
        ),
        (
            "gpt2-prefix",
            vec![
                "--method",
                "prefix",
                "--prefix-positions",
                "--prefix-len",
                "2",
                "--prefix-hidden",
                "8",
            ],
        ),
    ] {
        let run = dir.path().join(name);
        let (ok, _, stderr) = train_fixture("gpt2-tiny", &run, &options);
        assert!(ok, "{name}: {stderr}");
        let recorded = read_json(&run.join("run.json"));
        assert_eq!(recorded["method"]["prefix_positions"], true, "{name}");
        let out = dir.path().join(format!("{name}-peft"));
        let (ok, stdout, stderr) = kiln(&["export", "--run", path(&run), "--out", path(&out)]);
        assert!(ok, "{name}: {stderr}");
        assert!(stdout.contains("FEATURE_EXTRACTION"), "{stdout}");
        let config = read_json(&out.join("adapter_config.json"));
        assert_eq!(config["peft_type"], "PREFIX_TUNING", "{name}");
    }
    // The adapter's type must be the method's; its options are the adapter's.
    let run = dir.path().join("mismatch");
    let lora = fixtures().join("peft/peft-bert-lora");
    let (ok, _, stderr) = from_bert_adapter("prompt", &lora, &run);
    assert!(!ok && stderr.contains("LORA"), "{stderr}");
}

#[test]
fn icl_scores_label_words_and_stands_beside_trained_methods_in_compare() {
    let dir = tempfile::tempdir().expect("dir");
    let model = fixtures().join("gpt2-tiny");
    let task = fixtures().join("tasks/fire-water.csv");
    let out = dir.path().join("icl");
    let (ok, stdout, stderr) = kiln(&[
        "icl",
        "--model",
        path(&model),
        "--task",
        path(&task),
        "--shots",
        "2",
        "--text-words",
        "4",
        "--out",
        path(&out),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("nothing trains"), "{stdout}");
    let summary = read_json(&out.join("summary.json"));
    assert_eq!(summary["method"], "icl-k2");
    assert_eq!(summary["trainable_params"], 0);
    let accuracy = summary["test"]["accuracy"].as_f64().expect("accuracy");
    assert!((0.0..=1.0).contains(&accuracy));

    // Label words must match the classes; BERT is no causal LM; kiln train points to kiln icl.
    let (ok, _, stderr) = kiln(&[
        "icl",
        "--model",
        path(&model),
        "--task",
        path(&task),
        "--label-words",
        "a,b,c",
        "--out",
        path(&dir.path().join("bad")),
    ]);
    assert!(!ok && stderr.contains("--label-words"), "{stderr}");
    let (ok, _, stderr) = kiln(&[
        "icl",
        "--model",
        path(&fixtures().join("bert-tiny")),
        "--task",
        path(&task),
        "--out",
        path(&dir.path().join("bert")),
    ]);
    assert!(!ok && stderr.contains("causal"), "{stderr}");
    let (ok, _, stderr) = kiln(&[
        "train",
        "--model",
        path(&model),
        "--task",
        path(&task),
        "--method",
        "icl",
        "--out",
        path(&dir.path().join("train-icl")),
    ]);
    assert!(!ok && stderr.contains("kiln icl"), "{stderr}");

    let compare = dir.path().join("compare");
    let (ok, stdout, stderr) = kiln(&[
        "compare",
        "--model",
        path(&model),
        "--task",
        path(&task),
        "--methods",
        "lora,icl",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-len",
        "32",
        "--icl-shots",
        "2",
        "--out",
        path(&compare),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("| icl-k2 | ") && stdout.contains("| lora-r8 | "),
        "{stdout}"
    );
}

#[test]
fn list_options_may_repeat_and_bad_values_name_the_flag() {
    let dir = tempfile::tempdir().expect("dir");
    let mut targets = Vec::new();
    for (name, extra) in [
        (
            "repeated",
            &["--targets", "query", "--targets", "value"][..],
        ),
        ("joined", &["--targets", "query,value"][..]),
    ] {
        let out = dir.path().join(name);
        let mut args = vec!["--method", "lora"];
        args.extend(extra);
        let (ok, _, stderr) = train_tiny(&out, &args);
        assert!(ok, "{name}: {stderr}");
        targets.push(read_json(&out.join("run.json"))["method"]["targets"].clone());
    }
    assert_eq!(targets[0], serde_json::json!(["query", "value"]));
    assert_eq!(targets[0], targets[1]);

    let (ok, _, stderr) = train_tiny(
        &dir.path().join("bad"),
        &["--method", "lora", "--rank", "two"],
    );
    assert!(!ok);
    assert!(
        stderr.contains("--rank") && stderr.contains("`two`"),
        "{stderr}"
    );
}

#[test]
fn training_starts_from_an_adapterhub_adapter_and_exports_to_adapterhub() {
    let dir = tempfile::tempdir().expect("dir");
    let houlsby = fixtures().join("adapterhub/ah-bert-houlsby");
    let run = dir.path().join("houlsby");
    let options = [
        "--method",
        "houlsby",
        "--adapterhub-adapter",
        path(&houlsby),
    ];
    let (ok, stdout, stderr) = train_fixture("bert-tiny", &run, &options);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("started from the AdapterHub adapter"),
        "{stdout}"
    );
    // The method's options are the adapter's: reduction 8 on 32 wide, swish, its name.
    let recorded = read_json(&run.join("run.json"));
    assert_eq!(recorded["method"]["bottleneck"], 4);
    assert_eq!(recorded["method"]["activation"], "silu");
    assert_eq!(recorded["method"]["name"], "houlsby");
    let (ok, _, stderr) = kiln(&["eval", "--run", path(&run)]);
    assert!(ok, "{stderr}");
    // Out to AdapterHub again.
    let out = dir.path().join("houlsby-adapterhub");
    let (ok, stdout, stderr) = kiln(&[
        "export",
        "--run",
        path(&run),
        "--out",
        path(&out),
        "--format",
        "adapterhub",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("load_adapter"), "{stdout}");
    let config = read_json(&out.join("adapter_config.json"));
    assert_eq!(config["config"]["mh_adapter"], true);
    assert_eq!(config["config"]["non_linearity"], "silu");
    assert!(out.join("adapter.safetensors").is_file());

    // A run that trained the layer norms (Houlsby's default in kiln) cannot be an AdapterHub
    // adapter: it is refused, naming the option.
    let with_norms = dir.path().join("houlsby-norms");
    let (ok, _, stderr) = train_fixture("bert-tiny", &with_norms, &["--method", "houlsby"]);
    assert!(ok, "{stderr}");
    let out = dir.path().join("houlsby-norms-adapterhub");
    let (ok, _, stderr) = kiln(&[
        "export",
        "--run",
        path(&with_norms),
        "--out",
        path(&out),
        "--format",
        "adapterhub",
    ]);
    assert!(!ok && stderr.contains("--train-norms false"), "{stderr}");

    // A Pfeiffer adapter's 3-label head on a 2-label task is refused, naming what differs.
    let pfeiffer = fixtures().join("adapterhub/ah-bert-pfeiffer");
    let options = [
        "--method",
        "pfeiffer",
        "--readout",
        "cls",
        "--adapterhub-adapter",
        path(&pfeiffer),
    ];
    let (ok, _, stderr) = train_fixture("bert-tiny", &dir.path().join("pf"), &options);
    assert!(!ok && stderr.contains("3 labels"), "{stderr}");
    // The method must be the adapter's.
    let options = [
        "--method",
        "parallel",
        "--adapterhub-adapter",
        path(&houlsby),
    ];
    let (ok, _, stderr) = train_fixture("bert-tiny", &dir.path().join("par"), &options);
    assert!(!ok && stderr.contains("--method houlsby"), "{stderr}");
}

/// `--resume` may give a finished run more epochs; any other change is refused, naming it. Both
/// logs hold one record per line with the same fields.
#[test]
fn a_run_resumes_with_more_epochs_and_refuses_other_changes() {
    let dir = tempfile::tempdir().expect("dir");
    let run = dir.path().join("run");
    let model = fixtures().join("bert-tiny");
    let task = fixtures().join("tasks").join("fire-water.csv");
    // The quick run's arguments with `--epochs` last, so that a resume can change it.
    let args = |epochs: &'static str| {
        let mut args = quick_train_args(path(&model), path(&task));
        let at = args
            .iter()
            .position(|a| *a == "--epochs")
            .expect("--epochs");
        args.drain(at..at + 2);
        args.extend(["--log-every", "1", "--out", path(&run), "--epochs", epochs]);
        args
    };
    let (ok, _, stderr) = kiln(&args("1"));
    assert!(ok, "{stderr}");
    let with = |extra: &[&'static str]| {
        let epochs = extra[1];
        let mut resumed = args(epochs);
        resumed.extend(&extra[2..]);
        resumed.push("--resume");
        kiln(&resumed)
    };
    let (ok, _, stderr) = with(&["--epochs", "2"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("longer budget: --epochs 2"), "{stderr}");
    let state = read_json(&run.join("state.json"));
    assert_eq!(state["completed_epochs"], 2);
    assert_eq!(read_json(&run.join("run.json"))["train"]["epochs"], 2);
    let (ok, _, stderr) = with(&["--epochs", "2", "--lr", "0.5"]);
    assert!(!ok);
    assert!(stderr.contains("train.lr"), "{stderr}");
    let (ok, _, stderr) = with(&["--epochs", "1"]);
    assert!(!ok);
    assert!(stderr.contains("train.epochs: 2 -> 1"), "{stderr}");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let epochs = records.iter().filter(|r| r["record"] == "epoch").count();
    assert_eq!(epochs, 2);
    let csv = std::fs::read_to_string(run.join("metrics.csv")).expect("csv");
    assert_eq!(csv.lines().count(), records.len() + 1, "{csv}");
}
