//! Every kiln command on a corpus of broken models, data files, flags and run directories: each
//! case asserts the exact outcome (an error naming the fault, or the right reading), and no case
//! may panic or abort.

use std::path::{Path, PathBuf};

use crate::common::{fixtures, kiln, kiln_in, path, quick_train_args};
use serde_json::Value;

/// A copy of the fixture `name` in `dir`, for breaking.
fn copy_fixture(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).expect("mkdir");
    for entry in std::fs::read_dir(fixtures().join(name)).expect("fixture") {
        let from = entry.expect("entry").path();
        std::fs::copy(&from, to.join(from.file_name().expect("name"))).expect("copy");
    }
    to
}

/// Edits a model directory's `config.json`.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    edit(&mut config);
    std::fs::write(&path, config.to_string()).expect("write");
}

/// Edits one tensor of a safetensors file in place: its header entry and its bytes.
fn edit_tensor(file: &Path, tensor: &str, edit: impl FnOnce(&mut Value, &mut [u8])) {
    let mut bytes = std::fs::read(file).expect("read");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("header");
    let [start, end] =
        [0, 1].map(|i| header[tensor]["data_offsets"][i].as_u64().expect("offsets") as usize);
    let data = 8 + header_len;
    edit(&mut header[tensor], &mut bytes[data + start..data + end]);
    let mut text = header.to_string();
    // Keep the header's length, so that the data offsets stay right.
    assert!(text.len() <= header_len, "the edited header grew");
    text.push_str(&" ".repeat(header_len - text.len()));
    bytes[8..8 + header_len].copy_from_slice(text.as_bytes());
    std::fs::write(file, bytes).expect("write");
}

/// Runs kiln and asserts it failed cleanly (no panic, no abort) with every one of `needles` in
/// its error output.
#[track_caller]
fn refused(args: &[&str], needles: &[&str]) {
    let (ok, _, stderr) = kiln(args);
    assert!(!ok, "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: `{needle}` not in:\n{stderr}"
        );
    }
}

/// Runs kiln and asserts it succeeded; returns its stdout.
#[track_caller]
fn succeeds(args: &[&str]) -> String {
    let (ok, stdout, stderr) = kiln(args);
    assert!(ok, "{args:?} failed:\n{stderr}");
    stdout
}

fn train_args<'a>(model: &'a str, task: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut args = quick_train_args(model, task);
    args.extend(["--out", out]);
    args
}

#[test]
fn broken_models_are_named_never_panic() {
    let dir = tempfile::tempdir().expect("dir");
    let text = ["--text", "fire and water"];

    // A tokenizer with more tokens than the embedding has rows.
    let small = copy_fixture("bert-tiny", &dir.path().join("small-vocab"));
    edit_config(&small, |c| c["vocab_size"] = 100.into());
    // (plan builds the architecture from the config alone, so the weights cannot object first)
    refused(
        &["plan", "--model", path(&small), "--method", "lora"],
        &["the tokenizer's ids go up to 166 but the model's embedding has only 100 rows"],
    );
    // No layers; a vocabulary no machine holds (also for plan, which reads no weights).
    let no_layers = copy_fixture("bert-tiny", &dir.path().join("no-layers"));
    edit_config(&no_layers, |c| c["num_hidden_layers"] = 0.into());
    refused(
        &["plan", "--model", path(&no_layers), "--method", "lora"],
        &["num_hidden_layers must be at least 1"],
    );
    let huge = copy_fixture("bert-tiny", &dir.path().join("huge"));
    edit_config(&huge, |c| c["vocab_size"] = 1_000_000_000_000u64.into());
    for command in [
        &["plan", "--method", "lora"][..],
        &["encode", "--text", "x"],
    ] {
        let args = [command, &["--model", path(&huge)]].concat();
        refused(&args, &["GiB as f32, more than this machine's"]);
    }
    // NaN in a weight; an integer tensor where a float belongs.
    let nan = copy_fixture("bert-tiny", &dir.path().join("nan"));
    edit_tensor(
        &nan.join("model.safetensors"),
        "embeddings.LayerNorm.weight",
        |_, data| {
            data[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        },
    );
    refused(
        &[&["encode", "--model", path(&nan)][..], &text].concat(),
        &[
            "embeddings.LayerNorm.weight",
            "1 NaN or infinite values (first at index 1)",
        ],
    );
    let ints = copy_fixture("bert-tiny", &dir.path().join("ints"));
    edit_tensor(
        &ints.join("model.safetensors"),
        "embeddings.LayerNorm.bias",
        |entry, _| {
            entry["dtype"] = "I32".into();
        },
    );
    refused(
        &[&["encode", "--model", path(&ints)][..], &text].concat(),
        &["embeddings.LayerNorm.bias", "integer or boolean type"],
    );
    // An empty text on GPT-2 (which adds no special tokens).
    refused(
        &[
            "encode",
            "--model",
            path(&fixtures().join("gpt2-tiny")),
            "--text",
            "",
        ],
        &["has no tokens"],
    );
}

#[test]
fn broken_data_files_are_named_or_read_exactly() {
    let dir = tempfile::tempdir().expect("dir");
    let model = fixtures().join("bert-tiny");
    let out = dir.path().join("run");
    let write = |name: &str, text: &str| {
        let file = dir.path().join(name);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, text).expect("write");
        file
    };
    let rows = |n: usize| -> String {
        (0..n)
            .map(|i| format!("text number {i},{}\n", ["fire", "water"][i % 2]))
            .collect()
    };

    // An unbalanced quote is one bad row: the rows after it are read, and skipping counts one.
    let quote = write(
        "quote.csv",
        &format!("text,label\n{}\"an open quote,fire\n{}", rows(4), rows(36)),
    );
    refused(
        &train_args(path(&model), path(&quote), path(&out)),
        &["row 6", "a quote opened here runs on to line"],
    );
    let mut args = train_args(path(&model), path(&quote), path(&out));
    args.push("--skip-bad-rows");
    let stdout = succeeds(&args);
    assert!(stdout.contains("task: 40 examples"), "{stdout}");
    assert!(stdout.contains("skipped 1 bad rows"), "{stdout}");
    std::fs::remove_dir_all(&out).expect("clean");

    for (name, text, needle) in [
        (
            "extra.csv",
            format!("text,label\n{}a,fire,extra\n", rows(8)),
            "3 fields where the header has 2",
        ),
        (
            "null.jsonl",
            "{\"text\":\"a\",\"label\":\"fire\"}\n{\"text\":\"b\",\"label\":null}\n".into(),
            "empty or null label",
        ),
        (
            "empty.csv",
            format!("text,label\n{}c,\n", rows(4)),
            "empty or null label",
        ),
        (
            "one.csv",
            "text,label\na,fire\nb,fire\n".into(),
            "one class only (fire)",
        ),
    ] {
        let file = write(name, &text);
        refused(
            &train_args(path(&model), path(&file), path(&out)),
            &[name, needle],
        );
    }
    // An empty class folder.
    write("folders/fire/1.txt", "a fire");
    std::fs::create_dir_all(dir.path().join("folders/water")).expect("mkdir");
    refused(
        &train_args(path(&model), path(&dir.path().join("folders")), path(&out)),
        &["folders/water", "a class folder without usable documents"],
    );
}

#[test]
fn bad_flags_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("dir");
    let model = fixtures().join("bert-tiny");
    let task = fixtures().join("tasks/fire-water.csv");
    let out = dir.path().join("run");
    for (flag, value, needle) in [
        ("--epochs", "0", "--epochs 0"),
        ("--lr", "-1", "--lr -1"),
        ("--lr", "NaN", "--lr NaN"),
        ("--warmup-ratio", "2", "--warmup-ratio 2"),
        ("--max-grad-norm", "-1", "--max-grad-norm -1"),
        ("--weight-decay", "-0.5", "--weight-decay -0.5"),
        ("--patience", "0", "--patience 0"),
        ("--max-len", "1", "--max-len 1"),
    ] {
        let mut args = train_args(path(&model), path(&task), path(&out));
        match args.iter().position(|a| *a == flag) {
            Some(i) => args[i + 1] = value,
            None => args.extend([flag, value]),
        }
        refused(&args, &[needle]);
    }
    assert!(
        !out.join("run.json").exists(),
        "a refused run wrote nothing"
    );
}

#[test]
fn runs_keep_one_writer_their_inputs_and_their_history() {
    let dir = tempfile::tempdir().expect("dir");
    let model = copy_fixture("bert-tiny", dir.path());
    let task = dir.path().join("task.csv");
    std::fs::copy(fixtures().join("tasks/fire-water.csv"), &task).expect("copy");
    let run = dir.path().join("run");
    let (model_s, task_s, run_s) = (path(&model), path(&task), path(&run));

    // --resume where there is no run.
    let mut resume = train_args(model_s, task_s, run_s);
    resume.push("--resume");
    refused(&resume, &["holds no run to resume"]);
    // Trained from relative paths, the run reloads from anywhere: run.json holds absolute ones.
    let (ok, _, stderr) = kiln_in(dir.path(), &train_args("bert-tiny", "task.csv", "run"));
    assert!(ok, "{stderr}");
    let recorded: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).expect("run.json"))
            .expect("json");
    assert!(Path::new(recorded["model"].as_str().expect("model")).is_absolute());
    assert!(Path::new(recorded["task"]["path"].as_str().expect("task")).is_absolute());
    succeeds(&["eval", "--run", run_s]);

    // A resumed run keeps exactly the history up to its last checkpoint.
    let log = run.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&log).expect("log");
    for record in ["step", "epoch"] {
        text.push_str(&format!(
            "{{\"record\":\"{record}\",\"epoch\":2,\"step\":999,\"train_loss\":1.0,\
             \"learning_rate\":null,\"tokens_per_second\":null,\"validation\":null,\
             \"seconds\":null}}\n"
        ));
    }
    std::fs::write(&log, text).expect("write");
    succeeds(&resume);
    let epochs = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .filter(|l| l.contains("\"record\":\"epoch\""))
        .count();
    assert_eq!(epochs, 1);

    // One writer: while another process holds the lock, a second is refused with its pid.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(run.join("lock"))
        .expect("lock file");
    lock.try_lock().expect("the test takes the lock");
    std::fs::write(run.join("lock"), "4242").expect("pid");
    refused(
        &resume,
        &["being written by another kiln process (pid 4242)"],
    );
    drop(lock);

    // state.json gone while checkpoints remain: nothing is started over them.
    let state = run.join("state.json");
    let saved = std::fs::read(&state).expect("state");
    std::fs::remove_file(&state).expect("remove");
    refused(&resume, &["state.json is missing", "holds checkpoints"]);
    std::fs::write(&state, saved).expect("restore");

    // Outputs are never overwritten without --force.
    let merged = dir.path().join("merged");
    std::fs::create_dir_all(&merged).expect("mkdir");
    std::fs::write(merged.join("keep.txt"), "mine").expect("write");
    refused(
        &["merge", "--run", run_s, "--out", path(&merged)],
        &["not empty", "--force"],
    );
    succeeds(&["merge", "--run", run_s, "--out", path(&merged), "--force"]);
    assert!(merged.join("keep.txt").is_file());

    // A changed base model or task is named; --allow-changed-inputs goes on anyway.
    edit_config(&model, |c| c["layer_norm_eps"] = 1e-6.into());
    refused(
        &["eval", "--run", run_s],
        &["model file config.json changed"],
    );
    refused(
        &["predict", "--run", run_s, "--text", "fire"],
        &["model file config.json changed"],
    );
    succeeds(&[
        "eval",
        "--run",
        run_s,
        "--allow-changed-inputs",
        "--task",
        task_s,
    ]);
    edit_config(&model, |c| c["layer_norm_eps"] = 1e-12.into());
    std::fs::write(&task, "text,label\nsome fire,fire\nsome water,water\n").expect("write");
    refused(
        &["eval", "--run", run_s],
        &["task file", "task.csv changed"],
    );
}

#[test]
fn a_one_document_corpus_is_refused_before_pretraining() {
    let dir = tempfile::tempdir().expect("dir");
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "one single document of text\n").expect("write");
    refused(
        &[
            "pretrain",
            "--corpus",
            path(&corpus),
            "--tokenizer",
            path(&fixtures().join("gpt2-tiny")),
            "--out",
            path(&dir.path().join("out")),
        ],
        &["1 document(s)", "at least 2"],
    );
}

#[test]
fn every_command_names_a_broken_run_directory_or_request() {
    let dir = tempfile::tempdir().expect("dir");
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::write(broken.join("run.json"), "{\"model\": ").expect("write");
    let out = dir.path().join("out");
    let run = path(&broken);
    for args in [
        vec!["eval", "--run", run],
        vec!["predict", "--run", run, "--text", "x"],
        vec!["export", "--run", run, "--out", path(&out)],
        vec!["merge", "--run", run, "--out", path(&out)],
    ] {
        refused(&args, &["broken/run.json"]);
    }
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    refused(&["eval", "--run", path(&empty)], &["empty/run.json"]);

    let model = fixtures().join("bert-tiny");
    let task = fixtures().join("tasks/fire-water.csv");
    let (model, task) = (path(&model), path(&task));
    for (methods, needle) in [
        ("lora:rank", "`rank` is not option=value"),
        ("lora:rnak=4", "rnak"),
    ] {
        refused(
            &[
                "compare",
                "--model",
                model,
                "--task",
                task,
                "--methods",
                methods,
                "--out",
                path(&out),
            ],
            &[needle],
        );
    }
    refused(
        &[
            "study",
            "--model",
            model,
            "--task",
            task,
            "--variants",
            "child-x",
            "--out",
            path(&out),
        ],
        &["`child-x` is not one of vanilla, child-f, child-d"],
    );
    refused(
        &["icl", "--model", model, "--task", task, "--out", path(&out)],
        &["needs a causal language model (GPT-2)"],
    );
    let idx = dir.path().join("images.idx");
    std::fs::write(
        &idx,
        [
            0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1,
        ],
    )
    .expect("write");
    let labels = dir.path().join("labels.idx");
    std::fs::write(&labels, [0, 0, 8, 1, 0, 0, 0, 1, 3]).expect("write");
    let data = format!("{},{}", path(&idx), path(&labels));
    refused(
        &[
            "fpt",
            "--model",
            model,
            "--task",
            "idx",
            "--data",
            &data,
            "--out",
            path(&dir.path().join("fpt")),
        ],
        &[
            "images.idx",
            "0 data bytes, the header [4294967295, 4294967295, 1]",
        ],
    );
    refused(
        &[
            "run-request",
            path(&broken.join("run.json")),
            "--out",
            path(&out),
        ],
        &["broken/run.json"],
    );
}
