//! Causal-LM pretraining on a tiny corpus with the tiny GPT-2 fixture's tokenizer: held-out
//! perplexity falls, and the written HF directory loads back to the same logits.

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};

use kiln_models::config::ModelKind;
use kiln_models::{Gpt2, Gpt2Config, Gpt2Input, TextTokenizer};
use kiln_testkit::cpu;
use kiln_train::causal_lm::{LanguageModeling, token_blocks};
use kiln_train::pretrain::save_hf_gpt2;
use kiln_train::{TaskData, TaskModel, TrainConfig, Trainer};

fn fixture() -> PathBuf {
    kiln_testkit::fixture("gpt2-tiny")
}

#[test]
fn blocks_join_documents_with_end_of_text_and_drop_the_ragged_end() {
    let blocks = token_blocks(&[vec![1, 2, 3], vec![4, 5]], 9, 3);
    assert_eq!(blocks, vec![vec![1, 2, 3], vec![9, 4, 5]]);
}

#[test]
fn pretraining_lowers_held_out_perplexity_and_saves_a_loadable_checkpoint() {
    let _serial = kiln_testkit::seeded_section();
    let tokenizer = TextTokenizer::from_dir(&fixture(), ModelKind::Gpt2).expect("tokenizer");
    let eos = tokenizer.token_id("<|endoftext|>").expect("end of text");
    let sentences = [
        "the cat sat on the mat",
        "the dog sat on the log",
        "a cat and a dog sat down",
        "the mat was on the floor",
    ];
    let documents: Vec<Vec<u32>> = (0..40)
        .map(|i| tokenizer.encode_words(sentences[i % 4]).expect("encodes"))
        .collect();
    let train = token_blocks(&documents[..32], eos, 16);
    let held = token_blocks(&documents[32..], eos, 16);
    assert!(
        train.len() >= 8 && held.len() >= 2,
        "{} {}",
        train.len(),
        held.len()
    );

    let device = cpu().autodiff();
    device.seed(5);
    let config = Gpt2Config::new(tokenizer.vocab_size(), 16, 32, 2, 4, eos as usize);
    let model = config.init(&device);
    let held_refs: Vec<&Vec<u32>> = held.iter().collect();
    let before = model
        .valid()
        .evaluate(&LanguageModeling, &held_refs, &cpu(), 8)
        .expect("eval");
    // A fresh model is close to uniform over the vocabulary.
    let uniform = (tokenizer.vocab_size() as f64).ln();
    assert!(
        (before.loss - uniform).abs() < 0.5,
        "{} vs {uniform}",
        before.loss
    );

    let dir = tempfile::tempdir().expect("dir");
    let mut trainer = Trainer::new(
        TrainConfig {
            epochs: 8,
            lr: 5e-3,
            batch_size: 4,
            warmup_ratio: 0.0,
            seed: 1,
            ..TrainConfig::default()
        },
        device.clone(),
        dir.path().join("run"),
        vec!["*".into()],
    );
    trainer.progress = false;
    let data = TaskData {
        task: &LanguageModeling,
        train: train.iter().collect(),
        validation: held_refs.clone(),
    };
    let (model, _) = trainer.fit(model, &data, false).expect("trains");
    let after = model
        .valid()
        .evaluate(&LanguageModeling, &held_refs, &cpu(), 8)
        .expect("eval");
    assert!(
        after.perplexity() < 0.5 * before.perplexity(),
        "perplexity {} -> {}",
        before.perplexity(),
        after.perplexity()
    );

    let out = dir.path().join("model");
    save_hf_gpt2(&model, &config, &fixture(), &out).expect("saves");
    let (loaded, loaded_config) = Gpt2::from_pretrained(&out, &cpu()).expect("loads back");
    assert_eq!(loaded_config, config);
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(held[0].iter().map(|&t| i64::from(t)).collect(), [1, 16]),
        &cpu(),
    );
    let input = Gpt2Input {
        input_ids: ids.clone(),
        attention_mask: ids.ones_like(),
    };
    let trained = model.valid();
    let expected = trained.lm_logits(trained.forward(input.clone()));
    let got = loaded.lm_logits(loaded.forward(input));
    let gap: f32 = (expected - got).abs().max().into_scalar();
    assert!(gap < 1e-5, "reloaded logits differ by {gap}");
    let reloaded_tokenizer =
        TextTokenizer::from_dir(&out, ModelKind::Gpt2).expect("tokenizer files");
    assert_eq!(reloaded_tokenizer.vocab_size(), tokenizer.vocab_size());
}
