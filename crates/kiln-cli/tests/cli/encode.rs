//! `kiln encode` end to end on the committed fixtures: the JSON it prints agrees with the
//! `transformers` reference outputs, and bad requests fail with a clear message.

use crate::common::{fixtures, kiln, path};

use serde_json::Value;

/// `kiln encode --model fixtures/<fixture> <args> --json`, which must succeed, parsed.
fn encode_json(fixture: &str, args: &[&str]) -> Value {
    let model = fixtures().join(fixture);
    let mut all = vec!["encode", "--model", model.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    all.push("--json");
    let (ok, stdout, stderr) = kiln(&all);
    assert!(ok, "{stderr}");
    serde_json::from_str(&stdout).expect("valid JSON")
}

fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join("reference").join(name)).expect("reference");
    serde_json::from_str(&text).expect("json")
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

#[test]
fn token_states_match_transformers() {
    let report = encode_json(
        "bert-tiny",
        &["--text", "The kiln fires clay.", "--pooling", "none"],
    );
    assert_eq!(report["model_type"], "bert");
    assert_eq!(report["device"], "cpu");
    let text = &report["texts"][0];
    let r = reference("bert_single.json");
    let ids: Vec<i64> = r["input_ids"][0]
        .as_array()
        .expect("ids")
        .iter()
        .zip(r["attention_mask"][0].as_array().expect("mask"))
        .filter(|(_, m)| m.as_i64() == Some(1))
        .map(|(id, _)| id.as_i64().expect("id"))
        .collect();
    let printed: Vec<i64> = text["input_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_i64().expect("id"))
        .collect();
    assert_eq!(printed, ids);
    assert_eq!(text["tokens"][0], "[CLS]");

    // The reference batch row 0 is this text; real tokens' states do not depend on padding.
    let width = r["last_hidden_state"]["shape"][2].as_u64().expect("width") as usize;
    let seq = r["last_hidden_state"]["shape"][1].as_u64().expect("seq") as usize;
    let expected = floats(&r["last_hidden_state"]["values"]);
    let states = text["hidden_states"].as_array().expect("states");
    assert_eq!(states.len(), ids.len());
    for (t, state) in states.iter().enumerate() {
        let row = &expected[t * width..(t + 1) * width];
        assert!(t < seq);
        for (a, e) in floats(state).iter().zip(row) {
            assert!((a - e).abs() <= 1e-4, "token {t}: {a} vs {e}");
        }
    }
}

#[test]
fn gpt2_top_k_is_the_reference_argmax() {
    let report = encode_json(
        "gpt2-tiny",
        &["--text", "The kiln fires clay.", "--lm-top-k", "3"],
    );
    let next = report["texts"][0]["next_tokens"]
        .as_array()
        .expect("next tokens");
    assert_eq!(next.len(), 3);

    let r = reference("gpt2_right_padded.json");
    let vocab = r["logits"]["shape"][2].as_u64().expect("vocab") as usize;
    let seq = r["logits"]["shape"][1].as_u64().expect("seq") as usize;
    let real = r["attention_mask"][0]
        .as_array()
        .expect("mask")
        .iter()
        .filter(|m| m.as_i64() == Some(1))
        .count();
    let logits = floats(&r["logits"]["values"]);
    let last = &logits[(real - 1) * vocab..real * vocab];
    assert!(real <= seq);
    let argmax = (0..vocab)
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .expect("vocab");
    assert_eq!(next[0]["id"].as_u64(), Some(argmax as u64));
    let top_logit = next[0]["logit"].as_f64().expect("logit");
    assert!((top_logit - last[argmax]).abs() <= 1e-4);
    assert!(next[0]["logit"].as_f64() >= next[1]["logit"].as_f64());
}

#[test]
fn bad_requests_say_what_is_wrong() {
    let bert = fixtures().join("bert-tiny");
    let bert = bert.to_str().expect("utf-8 path");
    let (ok, _, stderr) = kiln(&["encode", "--model", bert, "--text", "x", "--lm-top-k", "2"]);
    assert!(
        !ok && stderr.contains("--lm-top-k needs a GPT-2 model"),
        "{stderr}"
    );

    let (ok, _, stderr) = kiln(&["encode", "--model", bert, "--text", "x", "--pooling", "max"]);
    assert!(!ok && stderr.contains("unknown pooling `max`"), "{stderr}");

    let (ok, _, stderr) = kiln(&["--device", "tpu", "encode", "--model", bert, "--text", "x"]);
    assert!(!ok && stderr.contains("unknown device `tpu`"), "{stderr}");

    let gpt2 = fixtures().join("gpt2-tiny");
    let gpt2 = gpt2.to_str().expect("utf-8 path");
    let (ok, _, stderr) = kiln(&["encode", "--model", gpt2, "--text", "x", "--max-len", "65"]);
    assert!(
        !ok && stderr.contains("--max-len 65") && stderr.contains("64 positions"),
        "{stderr}"
    );

    let (ok, _, stderr) = kiln(&["encode", "--model", "/nonexistent/model", "--text", "x"]);
    assert!(
        !ok && stderr.contains("/nonexistent/model: no such model directory"),
        "{stderr}"
    );
}

/// A text longer than the position table is truncated to it, not run past it.
#[test]
fn long_text_is_truncated_to_the_position_table() {
    let long = "the fire ".repeat(100);
    let report = encode_json("gpt2-tiny", &["--text", &long]);
    assert_eq!(
        report["texts"][0]["input_ids"].as_array().map(Vec::len),
        Some(64)
    );
}

/// Without the `wgpu` feature, asking for it names the feature; with it, wgpu runs.
#[test]
fn wgpu_request_matches_the_build() {
    let bert = fixtures().join("bert-tiny");
    let (ok, _, stderr) = kiln(&[
        "--device",
        "wgpu",
        "encode",
        "--model",
        bert.to_str().expect("utf-8 path"),
        "--text",
        "x",
    ]);
    if cfg!(feature = "wgpu") {
        assert!(ok, "{stderr}");
    } else {
        assert!(!ok && stderr.contains("--features wgpu"), "{stderr}");
    }
}

/// `kiln generate` continues a prompt: the same tokens with the cache and without, sampling
/// repeats with its seed, and a BERT is refused.
#[test]
fn generate_continues_a_prompt_with_and_without_the_cache() {
    let gpt2 = fixtures().join("gpt2-tiny");
    let gpt2 = path(&gpt2);
    let json = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "generate", "--model", gpt2, "--prompt", "the kiln", "--json",
        ];
        args.extend(extra);
        let (ok, stdout, stderr) = kiln(&args);
        assert!(ok, "{stderr}");
        serde_json::from_str(stdout.trim()).expect("json")
    };
    let cached = json(&["--max-new-tokens", "8"]);
    assert_eq!(cached["tokens"].as_array().expect("tokens").len(), 8);
    assert_eq!(cached["cache"], true);
    let uncached = json(&["--max-new-tokens", "8", "--no-cache"]);
    assert_eq!(cached["tokens"], uncached["tokens"]);
    let sampled = |seed: &'static str| {
        json(&["--temperature", "0.8", "--top-k", "20", "--seed", seed])["tokens"].clone()
    };
    assert_eq!(sampled("1"), sampled("1"));
    let bert = fixtures().join("bert-tiny");
    let (ok, _, stderr) = kiln(&["generate", "--model", path(&bert), "--prompt", "x"]);
    assert!(!ok && stderr.contains("needs a GPT-2"), "{stderr}");
    let (ok, _, stderr) = kiln(&["generate", "--model", gpt2, "--prompt", "x", "--top-p", "0"]);
    assert!(!ok && stderr.contains("--top-p 0"), "{stderr}");
}
