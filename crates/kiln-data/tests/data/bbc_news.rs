//! The real BBC News corpus (fetched by `cargo xtask assets`): 2,225 documents in five class
//! folders, one of them not UTF-8.

use std::path::PathBuf;

use kiln_data::*;

fn bbc_news() -> PathBuf {
    let home = std::env::var_os("KILN_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.kiln"));
    let path = home.join("data/bbcnews");
    assert!(
        path.is_dir(),
        "{} is missing: run `cargo xtask assets` (the README's test command does)",
        path.display()
    );
    path
}

#[test]
fn bbc_news_reads_and_splits_80_10_10() {
    let dir = bbc_news();
    let error = read_class_folders(&dir, ReadOptions::default()).expect_err("one latin-1 file");
    assert!(error.to_string().contains("sports/199.txt"), "{error}");

    let skip = ReadOptions {
        on_bad_row: OnBadRow::Skip,
        ..ReadOptions::default()
    };
    let data = read_class_folders(&dir, skip).expect("reads");
    assert_eq!(data.num_classes(), Some(5));
    assert_eq!((data.len(), data.skipped.len()), (2224, 1));

    let classes = data.classes().expect("classification");
    let split = stratified_split(
        data.len(),
        Some(&classes),
        SplitFractions::EIGHTY_TEN_TEN,
        42,
    )
    .expect("splits");
    let sizes = (split.train.len(), split.validation.len(), split.test.len());
    assert_eq!(sizes.0 + sizes.1 + sizes.2, 2224);
    assert!(
        (221..=224).contains(&sizes.2),
        "test part has {} documents",
        sizes.2
    );
}
