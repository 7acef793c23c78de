//! `kiln encode`: the command a user checks kiln against Python with (see
//! [`kiln_models::encode`]). `--json` prints the report; without it, a summary.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use kiln_models::{DeviceChoice, Pooling};
use serde_json::Value;

#[derive(Args)]
pub struct EncodeArgs {
    /// HF model directory (config.json, model.safetensors or pytorch_model.bin, tokenizer files).
    #[arg(long)]
    model: PathBuf,

    /// Text to encode; repeat for several.
    #[arg(long = "text", required = true)]
    texts: Vec<String>,

    /// `mean` over real tokens, `cls` (first token, BERT), `last` (last real token), or `none`
    /// for token-level states.
    #[arg(long, default_value = "mean", value_parser = parse_pooling)]
    pooling: Pooling,

    /// Truncate each text to this many tokens, special tokens included [default: the model's
    /// position limit, at most 512].
    #[arg(long)]
    max_len: Option<usize>,

    /// Print machine-readable JSON instead of a summary.
    #[arg(long)]
    json: bool,

    /// GPT-2 only: print the K most likely next tokens after each text.
    #[arg(long, value_name = "K")]
    lm_top_k: Option<usize>,
}

fn parse_pooling(value: &str) -> Result<Pooling, String> {
    value
        .parse()
        .map_err(|e: kiln_models::ModelError| e.to_string())
}

pub fn run(args: EncodeArgs, choice: DeviceChoice) -> Result<()> {
    let report = kiln_models::encode::encode(
        &args.model,
        &args.texts,
        args.pooling,
        args.max_len,
        args.lm_top_k,
        choice,
    )
    .with_context(|| format!("encoding with the model in {}", args.model.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(())
}

fn print_summary(report: &Value) {
    println!(
        "{} ({}) on {}, pooling {}",
        report["model"].as_str().unwrap_or_default(),
        report["model_type"].as_str().unwrap_or_default(),
        report["device"].as_str().unwrap_or_default(),
        report["pooling"].as_str().unwrap_or_default()
    );
    for entry in report["texts"].as_array().into_iter().flatten() {
        let tokens = entry["tokens"].as_array().map_or(0, Vec::len);
        println!(
            "\n{:?} ({tokens} tokens)",
            entry["text"].as_str().unwrap_or_default()
        );
        if let Some(vector) = entry["embedding"].as_array() {
            let values: Vec<f64> = vector.iter().filter_map(Value::as_f64).collect();
            let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
            let head: Vec<String> = values.iter().take(6).map(|v| format!("{v:+.4}")).collect();
            println!(
                "  embedding: dim {}, L2 norm {norm:.4}, [{} ...]",
                values.len(),
                head.join(", ")
            );
        }
        if let Some(states) = entry["hidden_states"].as_array() {
            let width = states.first().and_then(Value::as_array).map_or(0, Vec::len);
            println!("  hidden states: {} tokens x {width}", states.len());
        }
        if let Some(next) = entry["next_tokens"].as_array() {
            for candidate in next {
                println!(
                    "  next: {:>6} {:<16} logit {:+.4}",
                    candidate["id"],
                    format!("{:?}", candidate["text"].as_str().unwrap_or_default()),
                    candidate["logit"].as_f64().unwrap_or_default()
                );
            }
        }
    }
}
