//! `kiln generate`'s decoding against transformers' `generate` (greedy, on the tiny GPT-2;
//! `scripts/make_generate_fixture.py`): the same tokens with the key/value cache and without.

use burn::module::Module;
use serde_json::Value;

use kiln_models::{Backbone, Pretrained};
use kiln_testkit::{cpu, fixtures};
use kiln_train::generate::{GenerateSettings, generate_ids};

use crate::common::read_json;

#[test]
fn greedy_generation_gives_transformers_tokens_with_and_without_the_cache() {
    let device = cpu();
    let pretrained = Pretrained::load(&fixtures().join("gpt2-tiny"), &device).expect("fixture");
    let Backbone::Gpt2(model, _) = pretrained.backbone else {
        panic!("the fixture is GPT-2");
    };
    let model = model.valid();
    let reference = read_json(&fixtures().join("reference/gpt2_generate.json"));
    let new_tokens = reference["new_tokens"].as_u64().expect("count") as usize;
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .expect("ids")
            .iter()
            .map(|t| t.as_u64().expect("id") as u32)
            .collect()
    };
    for case in reference["cases"].as_array().expect("cases") {
        let prompt = ids(&case["prompt"]);
        let want = ids(&case["generated"]);
        for cache in [true, false] {
            let settings = GenerateSettings {
                max_new_tokens: new_tokens,
                cache,
                ..GenerateSettings::default()
            };
            let (got, stopped) =
                generate_ids(&model, &prompt, &settings, None, &device).expect("generates");
            assert_eq!(got, want, "prompt {prompt:?}, cache {cache}");
            assert_eq!(stopped, "max_new_tokens");
        }
    }
}

#[test]
fn sampled_generation_repeats_with_its_seed_and_stops_at_the_end_of_text() {
    let device = cpu();
    let pretrained = Pretrained::load(&fixtures().join("gpt2-tiny"), &device).expect("fixture");
    let Backbone::Gpt2(model, config) = pretrained.backbone else {
        panic!("the fixture is GPT-2");
    };
    let model = model.valid();
    let settings = |seed: u64, cache: bool| GenerateSettings {
        max_new_tokens: 20,
        temperature: 1.0,
        top_k: 50,
        top_p: 0.9,
        seed,
        cache,
    };
    let run = |s: GenerateSettings| {
        generate_ids(&model, &[5, 6, 7], &s, None, &device)
            .expect("generates")
            .0
    };
    assert_eq!(run(settings(3, true)), run(settings(3, true)));
    // The cache changes the cost, not the tokens.
    assert_eq!(run(settings(3, true)), run(settings(3, false)));
    assert_ne!(run(settings(3, true)), run(settings(4, true)));
    // With the end-of-text id as the stop token, generation ends at its first draw.
    let greedy = GenerateSettings {
        max_new_tokens: 12,
        ..GenerateSettings::default()
    };
    let (plain, _) = generate_ids(&model, &[60], &greedy, None, &device).expect("generates");
    let stop = plain[3];
    let (cut, stopped) =
        generate_ids(&model, &[60], &greedy, Some(stop), &device).expect("generates");
    assert_eq!(stopped, "eos");
    assert_eq!(cut.last(), Some(&stop));
    assert!(cut.len() <= 4);
    // A prompt as long as the model's positions is refused.
    let long: Vec<u32> = vec![1; config.n_positions];
    let err = generate_ids(&model, &long, &greedy, None, &device).expect_err("too long");
    assert!(err.to_string().contains("positions"), "{err}");
}
