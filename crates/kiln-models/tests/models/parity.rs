//! kiln's BERT and GPT-2 against HF `transformers` on the committed tiny checkpoints, in both
//! weight formats, on the backend named by `KILN_TEST_DEVICE`.

use crate::common::*;
use kiln_models::{Bert, BertInput, Gpt2, Gpt2Input, M2Bert};
use serde::Deserialize;

#[derive(Deserialize)]
struct BertReference {
    input_ids: Vec<Vec<i64>>,
    attention_mask: Vec<Vec<i64>>,
    token_type_ids: Vec<Vec<i64>>,
    last_hidden_state: RefTensor,
    pooler_output: RefTensor,
}

#[derive(Deserialize)]
struct Gpt2Reference {
    input_ids: Vec<Vec<i64>>,
    attention_mask: Vec<Vec<i64>>,
    last_hidden_state: RefTensor,
    logits: RefTensor,
}

fn check_bert(dir: &str, reference: &str) {
    let (device, tolerance) = device_under_test();
    let (model, _) = Bert::from_pretrained(&fixtures().join(dir), &device).expect("loads");
    let r: BertReference = read_reference(reference);
    let output = model.forward(BertInput {
        input_ids: int_tensor(&r.input_ids, &device),
        attention_mask: int_tensor(&r.attention_mask, &device),
        token_type_ids: int_tensor(&r.token_type_ids, &device),
    });
    assert_eq!(
        output.last_hidden_state.dims().to_vec(),
        r.last_hidden_state.shape
    );
    // BERT's padded positions are well defined (the mask is key-side only): compare all of them.
    let hidden = max_abs_diff(
        &values(output.last_hidden_state),
        &r.last_hidden_state.values,
        |_| true,
    );
    let pooled = max_abs_diff(
        &values(output.pooled.expect("has pooler")),
        &r.pooler_output.values,
        |_| true,
    );
    eprintln!("{dir} {reference}: max |diff| hidden {hidden:e}, pooled {pooled:e}");
    assert!(
        hidden <= tolerance,
        "{dir}: last hidden state differs by {hidden}"
    );
    assert!(
        pooled <= tolerance,
        "{dir}: pooled output differs by {pooled}"
    );
}

fn check_gpt2(dir: &str) {
    let (device, tolerance) = device_under_test();
    let (model, _) = Gpt2::from_pretrained(&fixtures().join(dir), &device).expect("loads");
    let r: Gpt2Reference = read_reference("gpt2_right_padded.json");
    let hidden = model.forward(Gpt2Input {
        input_ids: int_tensor(&r.input_ids, &device),
        attention_mask: int_tensor(&r.attention_mask, &device),
    });
    let logits = model.lm_logits(hidden.clone());
    let seq = r.input_ids[0].len();
    let mask: Vec<i64> = r.attention_mask.iter().flatten().copied().collect();
    // Padded positions of a causal model are not part of any output a user reads.
    let mask = &mask;
    let real = |width: usize| move |i: usize| mask[i / width] == 1;
    let width = r.last_hidden_state.shape[2];
    let vocab = r.logits.shape[2];
    assert_eq!(hidden.dims().to_vec(), r.last_hidden_state.shape);
    assert_eq!(logits.dims().to_vec(), r.logits.shape);
    let hidden_diff = max_abs_diff(&values(hidden), &r.last_hidden_state.values, real(width));
    let logits_diff = max_abs_diff(&values(logits), &r.logits.values, real(vocab));
    assert!(seq > 1);
    eprintln!("{dir}: max |diff| hidden {hidden_diff:e}, logits {logits_diff:e}");
    assert!(
        hidden_diff <= tolerance,
        "{dir}: last hidden state differs by {hidden_diff}"
    );
    assert!(
        logits_diff <= tolerance,
        "{dir}: LM logits differ by {logits_diff}"
    );
}

#[test]
fn bert_safetensors_matches_transformers() {
    check_bert("bert-tiny", "bert_single.json");
}

#[test]
fn bert_pytorch_bin_matches_transformers() {
    check_bert("bert-tiny-bin", "bert_single.json");
}

#[test]
fn bert_sentence_pairs_match_transformers() {
    check_bert("bert-tiny", "bert_pair.json");
}

#[test]
fn gpt2_safetensors_matches_transformers() {
    check_gpt2("gpt2-tiny");
}

#[test]
fn gpt2_pytorch_bin_matches_transformers() {
    check_gpt2("gpt2-tiny-bin");
}

/// A left-padded row gives the real tokens the same states as the row unpadded: positions
/// count real tokens and the causal mask hides the pads.
#[test]
fn gpt2_left_padding_equals_no_padding() {
    let (device, tolerance) = device_under_test();
    let (model, _) = Gpt2::from_pretrained(&fixtures().join("gpt2-tiny"), &device).expect("loads");
    let ids = vec![51i64, 257, 262, 272];
    let unpadded = model.forward(Gpt2Input {
        input_ids: int_tensor(std::slice::from_ref(&ids), &device),
        attention_mask: int_tensor(&[vec![1; 4]], &device),
    });
    let mut padded_ids = vec![273i64, 273];
    padded_ids.extend(&ids);
    let padded = model.forward(Gpt2Input {
        input_ids: int_tensor(&[padded_ids], &device),
        attention_mask: int_tensor(&[vec![0, 0, 1, 1, 1, 1]], &device),
    });
    let padded_real = values(padded.narrow(1, 2, 4));
    let diff = max_abs_diff(&padded_real, &values(unpadded), |_| true);
    assert!(
        diff <= tolerance,
        "left padding changed real-token states by {diff}"
    );
}

#[derive(Deserialize)]
struct M2Reference {
    input_ids: Vec<Vec<i64>>,
    last_hidden_state: RefTensor,
    pooler_output: RefTensor,
}

/// M2-BERT against the reference code (HazyResearch/m2) on a tiny checkpoint it wrote
/// (`scripts/make_m2_fixture.py`): residual long convolutions, the pre-mixer norm of the 80M
/// checkpoint, bidirectional filters and the block-diagonal GLU MLP all take part.
#[test]
fn m2_bert_matches_the_reference_code() {
    let (device, tolerance) = device_under_test();
    let (model, _) = M2Bert::from_pretrained(&fixtures().join("m2-tiny"), &device).expect("loads");
    let r: M2Reference = read_reference("m2_tiny.json");
    let ids = int_tensor(&r.input_ids, &device);
    let hidden = model.forward(BertInput {
        input_ids: ids.clone(),
        attention_mask: ids.ones_like(),
        token_type_ids: ids.zeros_like(),
    });
    let pooled = model
        .pooler
        .as_ref()
        .expect("pooler")
        .forward(hidden.clone());
    assert_eq!(hidden.dims().to_vec(), r.last_hidden_state.shape);
    let hidden = max_abs_diff(&values(hidden), &r.last_hidden_state.values, |_| true);
    let pooled = max_abs_diff(&values(pooled), &r.pooler_output.values, |_| true);
    eprintln!("m2-tiny: max |diff| hidden {hidden:e}, pooled {pooled:e}");
    assert!(hidden <= tolerance, "last hidden state differs by {hidden}");
    assert!(pooled <= tolerance, "pooled output differs by {pooled}");
}
