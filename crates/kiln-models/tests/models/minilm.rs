//! The real all-MiniLM-L6-v2 (fetched by `cargo xtask assets`): kiln's mean-pooled sentence
//! embeddings against the ones `transformers` gave for the same sentences.

use crate::common::*;
use kiln_models::{PaddingSide, Pooling, Pretrained, TextInput, mean_pool};
use serde::Deserialize;

#[derive(Deserialize)]
struct MiniLmReference {
    sentences: Vec<String>,
    input_ids: Vec<Vec<i64>>,
    embeddings: RefTensor,
}

#[test]
fn minilm_sentence_embeddings_match_transformers() {
    let (device, tolerance) = device_under_test();
    let mut model = Pretrained::load(&asset("models/all-MiniLM-L6-v2"), &device).expect("loads");
    let r: MiniLmReference = read_reference("minilm_embeddings.json");
    let inputs: Vec<TextInput> = r
        .sentences
        .iter()
        .map(|s| TextInput::Single(s.clone()))
        .collect();
    model
        .tokenizer
        .configure(128, PaddingSide::Right)
        .expect("configures");
    let batch = model.tokenizer.encode_batch(&inputs).expect("encodes");
    let ids: Vec<i64> = r.input_ids.iter().flatten().copied().collect();
    assert_eq!(
        batch.input_ids, ids,
        "tokenization differs from transformers"
    );
    let hidden = model.hidden_states(&batch, &device);
    let pooled = mean_pool(hidden, batch.mask_tensor(&device));
    assert_eq!(pooled.dims().to_vec(), r.embeddings.shape);
    let diff = max_abs_diff(&values(pooled), &r.embeddings.values, |_| true);
    eprintln!("MiniLM mean-pooled embeddings: max |diff| {diff:e}");
    assert!(diff <= tolerance, "embeddings differ by {diff}");
    assert_eq!("mean".parse::<Pooling>().expect("parses"), Pooling::Mean);
}
