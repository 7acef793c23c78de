//! The text readers on small files written here in each layout's exact format.

use std::fs;
use std::path::Path;

use kiln_data::*;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(&path, bytes).expect("write");
    path
}

#[test]
fn class_folders_give_sorted_classes_and_documents() {
    let dir = tempfile::tempdir().expect("temp");
    write(dir.path(), "tech/002.txt", b"Chips get faster.\n");
    write(dir.path(), "tech/001.txt", b"Phones sell well.");
    write(dir.path(), "business/001.txt", b"Shares rise.");
    write(dir.path(), "business/.hidden", b"ignored");
    let data = read_class_folders(dir.path(), ReadOptions::default()).expect("reads");
    assert_eq!(
        data.task,
        TaskKind::Classification {
            labels: vec!["business".into(), "tech".into()]
        }
    );
    let texts: Vec<&str> = data.examples.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(
        texts,
        ["Shares rise.", "Phones sell well.", "Chips get faster."]
    );
    assert_eq!(data.classes(), Some(vec![0, 1, 1]));
}

/// BBC News has one latin-1 document (a pound sign as byte 0xA3): strict UTF-8 names it,
/// skipping counts it, declaring the encoding reads it.
#[test]
fn undecodable_document_fails_skips_or_decodes() {
    let dir = tempfile::tempdir().expect("temp");
    write(dir.path(), "sport/001.txt", b"A fee of \xa315.8m.");
    write(dir.path(), "sport/002.txt", b"Fine text.");
    write(dir.path(), "tech/001.txt", b"More text.");
    let error = read_class_folders(dir.path(), ReadOptions::default()).expect_err("not UTF-8");
    let message = error.to_string();
    assert!(
        message.contains("sport/001.txt") && message.contains("not valid UTF-8"),
        "{message}"
    );

    let skip = ReadOptions {
        on_bad_row: OnBadRow::Skip,
        ..ReadOptions::default()
    };
    let data = read_class_folders(dir.path(), skip).expect("skips");
    assert_eq!((data.len(), data.skipped.len()), (2, 1));

    let latin1 = ReadOptions::default()
        .with_encoding_label("latin1")
        .expect("known");
    let data = read_class_folders(dir.path(), latin1).expect("decodes");
    assert_eq!(data.examples[0].text, "A fee of £15.8m.");
}

#[test]
fn folder_with_one_class_is_refused() {
    let dir = tempfile::tempdir().expect("temp");
    write(dir.path(), "only/001.txt", b"x");
    let error = read_class_folders(dir.path(), ReadOptions::default()).expect_err("one class");
    assert!(error.to_string().contains("one subdirectory per class"));
}

#[test]
fn csv_with_quotes_and_pairs() {
    let dir = tempfile::tempdir().expect("temp");
    let path = write(
        dir.path(),
        "pairs.csv",
        b"id,premise,hypothesis,label\n1,\"A man, smiling\",A person,yes\n2,Dogs bark,\"Cats \"\"meow\"\"\",no\n",
    );
    let spec = TableSpec {
        pair_column: Some("hypothesis".into()),
        ..TableSpec::new("premise", "label")
    };
    let data = read_table(&path, &spec, ReadOptions::default()).expect("reads");
    assert_eq!(data.examples[0].text, "A man, smiling");
    assert_eq!(data.examples[1].pair.as_deref(), Some("Cats \"meow\""));
    assert_eq!(
        data.classes(),
        Some(vec![1, 0]),
        "labels sorted: no=0, yes=1"
    );
}

#[test]
fn bad_rows_are_named_or_skipped() {
    let dir = tempfile::tempdir().expect("temp");
    let path = write(
        dir.path(),
        "data.tsv",
        b"text\tlabel\ngood one\tpos\nno label here\n\tneg\nfine\tneg\n",
    );
    let spec = TableSpec::new("text", "label");
    let error = read_table(&path, &spec, ReadOptions::default()).expect_err("row 3 lacks label");
    let message = error.to_string();
    assert!(
        message.contains("data.tsv, row 3")
            && message.contains("missing column `label`")
            && message.contains("(the row has: text)"),
        "{message}"
    );

    let skip = ReadOptions {
        on_bad_row: OnBadRow::Skip,
        ..ReadOptions::default()
    };
    let data = read_table(&path, &spec, skip).expect("skips");
    assert_eq!(data.len(), 2);
    let reasons: Vec<&str> = data.skipped.iter().map(|s| s.location.as_str()).collect();
    assert_eq!(reasons, ["row 3", "row 4"]);
}

#[test]
fn scores_without_regression_ask_for_it_and_whole_numbers_stay_classes() {
    let dir = tempfile::tempdir().expect("temp");
    let scores = write(
        dir.path(),
        "scores.csv",
        b"text,label\na,0.5\nb,3.25\nc,4\n",
    );
    let spec = TableSpec::new("text", "label");
    let message = read_table(&scores, &spec, ReadOptions::default())
        .expect_err("scores are not classes")
        .to_string();
    assert!(
        message.contains("did you mean --regression?") && message.contains("`0.5`"),
        "{message}"
    );
    let mut regression = spec.clone();
    regression.regression = true;
    let read = read_table(&scores, &regression, ReadOptions::default()).expect("scores");
    assert_eq!(read.len(), 3);

    let binary = write(dir.path(), "binary.csv", b"text,label\na,0\nb,1\nc,1\n");
    let read = read_table(&binary, &spec, ReadOptions::default()).expect("0/1 are classes");
    assert_eq!(read.num_classes(), Some(2));
}

#[test]
fn unknown_label_against_declared_labels() {
    let dir = tempfile::tempdir().expect("temp");
    let path = write(
        dir.path(),
        "d.jsonl",
        b"{\"t\": \"a\", \"y\": \"pos\"}\n\n{\"t\": \"b\", \"y\": \"meh\"}\n",
    );
    let spec = TableSpec {
        labels: Some(vec!["neg".into(), "pos".into()]),
        ..TableSpec::new("t", "y")
    };
    let message = read_table(&path, &spec, ReadOptions::default())
        .expect_err("meh is unknown")
        .to_string();
    assert!(
        message.contains("`meh` (1 row, first at row 3)") && message.contains("neg, pos"),
        "{message}"
    );
}

#[test]
fn jsonl_numbers_and_invalid_lines() {
    let dir = tempfile::tempdir().expect("temp");
    let path = write(
        dir.path(),
        "d.jsonl",
        b"{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": 0}\nnot json\n",
    );
    let spec = TableSpec::new("text", "label");
    let message = read_table(&path, &spec, ReadOptions::default())
        .expect_err("line 3")
        .to_string();
    assert!(
        message.contains("row 3") && message.contains("invalid JSON"),
        "{message}"
    );
}

#[test]
fn declared_encoding_reads_windows_1252_csv() {
    let dir = tempfile::tempdir().expect("temp");
    let path = write(
        dir.path(),
        "d.csv",
        b"text,label\nCaf\xe9 au lait,a\nna\xefve,b\n",
    );
    let spec = TableSpec::new("text", "label");
    assert!(read_table(&path, &spec, ReadOptions::default()).is_err());
    let options = ReadOptions::default()
        .with_encoding_label("windows-1252")
        .expect("known");
    let data = read_table(&path, &spec, options).expect("decodes");
    assert_eq!(data.examples[0].text, "Café au lait");
    assert!(
        ReadOptions::default()
            .with_encoding_label("klingon")
            .is_err()
    );
}

#[test]
fn glue_layouts() {
    let dir = tempfile::tempdir().expect("temp");
    let sst2 = dir.path().join("SST-2");
    write(
        &sst2,
        "train.tsv",
        b"sentence\tlabel\nit 's a \"charming\" film \t1\ndull \t0\n",
    );
    let data = read_glue(&sst2, GlueTask::Sst2, "train", ReadOptions::default()).expect("sst2");
    assert_eq!(data.examples[0].text, "it 's a \"charming\" film ");
    assert_eq!(data.classes(), Some(vec![1, 0]));

    let cola = dir.path().join("CoLA");
    write(
        &cola,
        "dev.tsv",
        b"gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n",
    );
    let data = read_glue(&cola, GlueTask::Cola, "dev", ReadOptions::default()).expect("cola");
    assert_eq!(data.examples[1].text, "They drank the pub.");
    assert_eq!(data.classes(), Some(vec![1, 0]));

    let mrpc = dir.path().join("MRPC");
    write(&mrpc, "train.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t702876\t702977\tAmrozi accused his brother.\tReferring to him, Amrozi accused his brother.\n".as_bytes());
    let data = read_glue(&mrpc, GlueTask::Mrpc, "train", ReadOptions::default()).expect("mrpc");
    assert_eq!(
        data.examples[0].pair.as_deref(),
        Some("Referring to him, Amrozi accused his brother.")
    );

    let rte = dir.path().join("RTE");
    write(&rte, "dev.tsv", b"index\tsentence1\tsentence2\tlabel\n0\tDana Reeve died.\tChristopher Reeve had an accident.\tnot_entailment\n1\tYet more.\tMore.\tentailment\n");
    let data = read_glue(&rte, GlueTask::Rte, "dev", ReadOptions::default()).expect("rte");
    assert_eq!(data.classes(), Some(vec![0, 1]));

    let stsb = dir.path().join("STS-B");
    write(&stsb, "train.tsv", b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n");
    let data = read_glue(&stsb, GlueTask::StsB, "train", ReadOptions::default()).expect("stsb");
    assert_eq!(data.task, TaskKind::Regression);
    assert_eq!(data.examples[0].target, Target::Score(5.0));

    let message = read_glue(&rte, GlueTask::Rte, "train", ReadOptions::default())
        .expect_err("no train.tsv")
        .to_string();
    assert!(message.contains("train.tsv"), "{message}");
    assert_eq!("sts-b".parse::<GlueTask>().expect("parses"), GlueTask::StsB);
}

#[test]
fn batches_carry_pairs_and_targets() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/bert-tiny");
    let tokenizer = kiln_models::TextTokenizer::from_dir(&fixtures, kiln_models::ModelKind::Bert)
        .expect("loads");
    let a = TextExample {
        text: "the kiln".into(),
        pair: Some("fire".into()),
        target: Target::Class(1),
    };
    let b = TextExample {
        text: "clay".into(),
        pair: None,
        target: Target::Class(0),
    };
    let batch = make_batch(&tokenizer, &[&a, &b]).expect("batches");
    assert_eq!(batch.targets, vec![Target::Class(1), Target::Class(0)]);
    assert_eq!(batch.encoded.batch, 2);
    // [CLS] the kiln [SEP] fire [SEP]: the pair's tokens have type 1.
    assert_eq!(&batch.encoded.token_type_ids[..6], &[0, 0, 0, 0, 1, 1]);
    assert_eq!(batch.encoded.mask_row(1), &[1, 1, 1, 0, 0, 0]);
}

#[test]
fn multi_label_rows_split_on_the_separator_or_come_as_json_lists() {
    let dir = tempfile::tempdir().expect("temp");
    let csv = write(
        dir.path(),
        "multi.csv",
        b"text,labels\nhot clay,fire|clay\nrain,water\nplain stone,fire | water\n",
    );
    let mut spec = TableSpec::new("text", "labels");
    // Without --multi-label a separated cell is one class, as it always was.
    let single = read_table(&csv, &spec, ReadOptions::default()).expect("reads");
    assert!(matches!(single.task, TaskKind::Classification { .. }));
    spec.multi_label = true;
    spec.label_separator = Some("|".into());
    let data = read_table(&csv, &spec, ReadOptions::default()).expect("reads");
    assert_eq!(
        data.task,
        TaskKind::MultiLabel {
            labels: vec!["clay".into(), "fire".into(), "water".into()]
        }
    );
    let targets: Vec<Target> = data.examples.iter().map(|e| e.target.clone()).collect();
    assert_eq!(
        targets,
        [
            Target::Labels(vec![0, 1]),
            Target::Labels(vec![2]),
            Target::Labels(vec![1, 2])
        ]
    );
    // JSONL list labels are multi-label on their own; `[]` is a row with no label.
    let jsonl = write(
        dir.path(),
        "multi.jsonl",
        br#"{"text": "hot clay", "label": ["fire", "clay"]}
{"text": "calm", "label": []}
{"text": "rain", "label": ["water"]}
"#,
    );
    let data = read_table(
        &jsonl,
        &TableSpec::new("text", "label"),
        ReadOptions::default(),
    )
    .expect("reads");
    assert_eq!(data.task.labels(), ["clay", "fire", "water"]);
    assert_eq!(data.examples[1].target, Target::Labels(vec![]));
    // Held-out rows with a label the training set lacks are refused by name.
    let mut held = TableSpec::new("text", "label");
    held.multi_label = true;
    held.labels = Some(vec!["clay".into(), "fire".into()]);
    let err = read_table(&jsonl, &held, ReadOptions::default())
        .expect_err("water is unknown")
        .to_string();
    assert!(
        err.contains("unknown label `water`") && err.contains("row 3"),
        "{err}"
    );
}
