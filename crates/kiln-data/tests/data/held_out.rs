//! Held-out parts: files named beside the training data, split directories, and labels the
//! training data lacks.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_data::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(&path, text).expect("write");
    path
}

/// A CSV of `n` rows alternating between `labels`.
fn table(n: usize, labels: &[&str], tag: &str) -> String {
    let mut text = String::from("text,label\n");
    for i in 0..n {
        text.push_str(&format!("{tag} text {i},{}\n", labels[i % labels.len()]));
    }
    text
}

fn texts(task: &LoadedTask, part: &[usize]) -> Vec<String> {
    task.part(part).iter().map(|e| e.text.clone()).collect()
}

#[test]
fn held_out_files_are_taken_whole_and_only_the_missing_part_is_split_off() {
    let dir = tempfile::tempdir().expect("temp");
    let train = write(
        dir.path(),
        "train.csv",
        &table(40, &["neg", "pos"], "train"),
    );
    let test = write(dir.path(), "other/test.csv", &table(6, &["pos"], "test"));
    let mut spec = TaskSpec::new(&train);
    spec.test = Some(test);
    let task = spec.load(3).expect("loads");
    assert_eq!(
        task.kind,
        TaskKind::Classification {
            labels: vec!["neg".into(), "pos".into()]
        }
    );
    assert_eq!(task.split.test.len(), 6);
    assert!(
        texts(&task, &task.split.test)
            .iter()
            .all(|t| t.starts_with("test"))
    );
    assert!(
        task.part(&task.split.test)
            .iter()
            .all(|e| e.target == Target::Class(1))
    );
    // Validation is 10% of the training file, stratified (2 of each class); none of it is test.
    assert_eq!(
        (task.split.train.len(), task.split.validation.len()),
        (36, 4)
    );
    assert!(
        texts(&task, &task.split.validation)
            .iter()
            .all(|t| t.starts_with("train"))
    );

    spec.validation = Some(write(
        dir.path(),
        "dev.csv",
        &table(4, &["neg", "pos"], "dev"),
    ));
    let task = spec.load(3).expect("loads");
    assert_eq!(
        (
            task.split.train.len(),
            task.split.validation.len(),
            task.split.test.len()
        ),
        (40, 4, 6)
    );
}

#[test]
fn a_split_directory_of_class_folders_or_files_is_recognised() {
    let dir = tempfile::tempdir().expect("temp");
    for (part, n) in [("train", 10), ("test", 3)] {
        for class in ["sport", "tech"] {
            for i in 0..n {
                write(
                    dir.path(),
                    &format!("{part}/{class}/{i}.txt"),
                    &format!("{part} {class} {i}"),
                );
            }
        }
    }
    write(dir.path(), "test/sport/extra.txt", "test sport extra");
    let task = TaskSpec::new(dir.path()).load(0).expect("loads");
    assert_eq!(task.split.test.len(), 7);
    assert!(
        texts(&task, &task.split.test)
            .iter()
            .all(|t| t.starts_with("test"))
    );
    assert_eq!(
        (task.split.train.len(), task.split.validation.len()),
        (18, 2)
    );

    // A class the training folders lack is named.
    write(dir.path(), "test/weather/0.txt", "rain");
    let message = TaskSpec::new(dir.path())
        .load(0)
        .expect_err("refused")
        .to_string();
    assert!(
        message.contains("weather") && message.contains("sport, tech"),
        "{message}"
    );

    let files = tempfile::tempdir().expect("temp");
    write(
        files.path(),
        "train.jsonl",
        &(0..10)
            .map(|i| format!("{{\"text\":\"t{i}\",\"label\":\"{}\"}}\n", i % 2))
            .collect::<String>(),
    );
    write(
        files.path(),
        "validation.jsonl",
        "{\"text\":\"v\",\"label\":\"1\"}\n",
    );
    let task = TaskSpec::new(files.path()).load(0).expect("loads");
    assert_eq!(task.split.validation.len(), 1);
    assert_eq!(task.split.test.len(), 2);
}

#[test]
fn a_held_out_file_with_unseen_labels_is_refused_naming_them() {
    let dir = tempfile::tempdir().expect("temp");
    let train = write(
        dir.path(),
        "train.csv",
        &table(10, &["neg", "pos"], "train"),
    );
    let held = write(
        dir.path(),
        "test.csv",
        "text,label\na,pos\nb,meh\nc,meh\nd,angry\n",
    );
    let mut spec = TaskSpec::new(&train);
    spec.test = Some(held.clone());
    let message = spec.load(0).expect_err("refused").to_string();
    for part in [
        "test.csv",
        "`meh` (2 rows, first at row 3)",
        "`angry` (1 row",
        "neg, pos",
    ] {
        assert!(message.contains(part), "{message}");
    }
    // The same read on its own, as `kiln eval --task` does.
    let kind = TaskKind::Classification {
        labels: vec!["neg".into(), "pos".into()],
    };
    assert!(spec.read_held_out(&held, &kind).is_err());
    let good = write(dir.path(), "good.csv", "text,label\nx,pos\ny,neg\n");
    let read = spec.read_held_out(&good, &kind).expect("reads");
    assert_eq!(read.classes(), Some(vec![1, 0]));
}

#[test]
fn inputs_to_label_carry_their_id_and_name_missing_columns() {
    let dir = tempfile::tempdir().expect("temp");
    let csv = write(
        dir.path(),
        "new.csv",
        "id,text,label\n7,first,x\n9,second,\n",
    );
    let spec = InputSpec {
        text_column: "text".into(),
        pair_column: None,
        id_column: None,
    };
    let (rows, skipped) = read_inputs(&csv, &spec, ReadOptions::default()).expect("reads");
    assert!(skipped.is_empty());
    assert_eq!(
        rows[1],
        InputRow {
            id: Some("9".into()),
            text: "second".into(),
            pair: None
        }
    );

    let lines = write(dir.path(), "new.txt", "one\n\ntwo\n");
    let (rows, _) = read_inputs(&lines, &spec, ReadOptions::default()).expect("reads");
    assert_eq!(
        rows.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
        ["one", "two"]
    );

    let spec = InputSpec {
        text_column: "sentence".into(),
        ..spec
    };
    let message = read_inputs(&csv, &spec, ReadOptions::default())
        .expect_err("refused")
        .to_string();
    assert!(
        message.contains("`sentence`") && message.contains("id, text, label"),
        "{message}"
    );
}
