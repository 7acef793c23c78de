//! In-context learning on the tiny GPT-2 fixture: prompts are built as the template says, the
//! demonstrations are seeded and never the query, and a label's score is the hand-summed
//! log-probability of its tokens.

use burn::tensor::{Int, Tensor, TensorData};

use kiln_data::{Target, TaskSpec, TextExample};
use kiln_models::{Backbone, Gpt2, Gpt2Input, Pretrained, TextTokenizer};
use kiln_testkit::{cpu, fixtures};
use kiln_train::icl::{CONTENT_FREE, IclConfig, LabelScorer, continuation_scores, evaluate_icl};

fn example(text: &str, class: usize) -> TextExample {
    TextExample {
        text: text.into(),
        pair: None,
        target: Target::Class(class),
    }
}

fn config(shots: usize) -> IclConfig {
    IclConfig {
        shots,
        template: "Q: {text}\nA: {label}\n\n".into(),
        label_words: vec!["fire".into(), "water".into()],
        text_words: 3,
        seed: 7,
        calibrate: false,
    }
}

fn gpt2() -> (Gpt2, TextTokenizer, usize) {
    let pretrained = Pretrained::load(&fixtures().join("gpt2-tiny"), &cpu()).expect("fixture");
    match pretrained.backbone {
        Backbone::Gpt2(model, config) => (*model, pretrained.tokenizer, config.n_positions),
        _ => panic!("the fixture is GPT-2"),
    }
}

#[test]
fn prompts_follow_the_template_and_cut_texts() {
    let config = config(2);
    let demos = [
        example("the kiln was hot today", 0),
        example("water runs down", 1),
    ];
    let query = example("a cold stream of water", 1);
    let prompt = config.prompt(&[&demos[0], &demos[1]], &query);
    assert_eq!(
        prompt,
        "Q: the kiln was\nA: fire\n\nQ: water runs down\nA: water\n\nQ: a cold stream\nA:"
    );
    let mut bad = config.clone();
    bad.template = "{label} then {text}".into();
    assert!(bad.check(2).is_err());
    assert!(
        config.check(3).is_err(),
        "two label words for three classes"
    );
    assert!(config.check(2).is_ok());
}

#[test]
fn demonstrations_are_seeded_distinct_and_never_the_query() {
    let pool: Vec<TextExample> = (0..10)
        .map(|i| example(&format!("text {i}"), i % 2))
        .collect();
    let train: Vec<&TextExample> = pool.iter().collect();
    let config = config(4);
    for (index, query) in train.iter().enumerate() {
        let demos = config.demonstrations(&train, query, index);
        assert_eq!(demos.len(), 4);
        assert!(demos.iter().all(|d| !std::ptr::eq(*d, *query)));
        let mut seen: Vec<*const TextExample> = demos.iter().map(|d| *d as *const _).collect();
        seen.dedup();
        assert_eq!(seen.len(), 4);
        // The same seed and query index give the same demonstrations.
        let again = config.demonstrations(&train, query, index);
        assert!(demos.iter().zip(&again).all(|(a, b)| std::ptr::eq(*a, *b)));
    }
    let other = IclConfig {
        seed: 8,
        ..config.clone()
    };
    let differs = (0..train.len()).any(|i| {
        let a = config.demonstrations(&train, train[i], i);
        let b = other.demonstrations(&train, train[i], i);
        a.iter().zip(&b).any(|(x, y)| !std::ptr::eq(*x, *y))
    });
    assert!(differs, "another seed draws other demonstrations");
}

#[test]
fn a_label_scores_the_hand_summed_log_probabilities_of_its_tokens() {
    let (model, tokenizer, positions) = gpt2();
    let device = cpu();
    let context = tokenizer.encode_words("the kiln was hot\nA:").expect("ids");
    let labels: Vec<Vec<u32>> = [" fire", " water and"]
        .iter()
        .map(|w| tokenizer.encode_words(w).expect("ids"))
        .collect();
    assert!(labels[1].len() > 1, "a label of several tokens is summed");
    let scores =
        continuation_scores(&model, &context, &labels, positions, &device).expect("scores");
    for (label, score) in labels.iter().zip(&scores) {
        // Alone, unpadded: log-softmax of the logits, summed at each label token by hand.
        let ids: Vec<i64> = context.iter().chain(label).map(|&t| i64::from(t)).collect();
        let len = ids.len();
        let input_ids =
            Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, len]), &device);
        let hidden = model.forward(Gpt2Input {
            attention_mask: input_ids.ones_like(),
            input_ids,
        });
        let logits: Vec<f32> = model
            .lm_logits(hidden)
            .into_data()
            .try_to_vec::<f32>()
            .expect("floats");
        let vocab = logits.len() / len;
        let mut by_hand = 0.0f64;
        for j in 0..label.len() {
            let at = context.len() + j - 1;
            let row = &logits[at * vocab..(at + 1) * vocab];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let log_sum = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            by_hand += row[label[j] as usize] as f64 - log_sum;
        }
        assert!((score - by_hand).abs() < 1e-4, "{score} vs {by_hand}");
    }
    // Scored alone, a label gets the same: the other label's padding changes nothing.
    let single =
        continuation_scores(&model, &context, &labels[..1], positions, &device).expect("one label");
    assert!((single[0] - scores[0]).abs() < 1e-5);
}

#[test]
fn icl_classifies_the_fixture_task_without_training() {
    let (model, tokenizer, positions) = gpt2();
    let task = TaskSpec::new(fixtures().join("tasks/fire-water.csv"))
        .load(7)
        .expect("task");
    let train = task.part(&task.split.train);
    let test = task.part(&task.split.test);
    let metrics = evaluate_icl(
        &model,
        &tokenizer,
        &train,
        &test,
        &config(2),
        positions,
        &cpu(),
    )
    .expect("evaluates");
    let accuracy = metrics.accuracy.expect("accuracy");
    assert!((0.0..=1.0).contains(&accuracy));
    assert!(metrics.loss.is_finite() && metrics.loss > 0.0);
}

#[test]
fn calibration_subtracts_the_content_free_scores() {
    let (model, tokenizer, positions) = gpt2();
    let device = cpu();
    let continuations: Vec<Vec<u32>> = [" fire", " water"]
        .iter()
        .map(|w| tokenizer.encode_words(w).expect("ids"))
        .collect();
    let scorer = LabelScorer {
        model: &model,
        tokenizer: &tokenizer,
        continuations: &continuations,
        positions,
        device: &device,
    };
    let demo = example("the kiln was hot today", 0);
    let demos = [&demo];
    let text = "a cold stream of water";
    let mut calibrated = config(1);
    calibrated.calibrate = true;
    let got = scorer.scores(&calibrated, &demos, text).expect("scores");
    let after = |text: &str| {
        let context = tokenizer
            .encode_words(&calibrated.prompt_for_text(&demos, text))
            .expect("ids");
        continuation_scores(&model, &context, &continuations, positions, &device).expect("scores")
    };
    let (raw, content_free) = (after(text), after(CONTENT_FREE));
    for i in 0..2 {
        assert!((got[i] - (raw[i] - content_free[i])).abs() < 1e-9);
    }
    assert!(
        content_free.iter().any(|c| c.abs() > 1e-3),
        "the correction is not nothing"
    );
    assert_eq!(scorer.scores(&config(1), &demos, text).expect("raw"), raw);
}
