//! `kiln encode`: the command a user checks kiln against Python with.
//!
//! `--json` prints one object; its shape is documented in the README:
//! `{model, model_type, device, pooling, texts: [{text, input_ids, tokens, embedding |
//! hidden_states, next_tokens?}]}`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor};
use clap::Args;
use kiln_models::{
    Backbone, DeviceChoice, PaddingSide, Pooling, Pretrained, TextInput, last_token_pool, mean_pool,
};
use serde_json::{Value, json};

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

pub fn run(args: EncodeArgs, choice: DeviceChoice, device: &Device) -> Result<()> {
    let mut model = Pretrained::load(&args.model, device)
        .with_context(|| format!("loading model from {}", args.model.display()))?;
    let is_gpt2 = matches!(model.backbone, Backbone::Gpt2(..));
    if args.lm_top_k.is_some() && !is_gpt2 {
        bail!(
            "--lm-top-k needs a GPT-2 model, but {} is BERT",
            args.model.join("config.json").display()
        );
    }
    if args.pooling == Pooling::Cls && is_gpt2 {
        bail!(
            "--pooling cls: GPT-2 has no [CLS] token; use `last` (the last real token) or `mean`"
        );
    }

    let inputs: Vec<TextInput> = args
        .texts
        .iter()
        .map(|t| TextInput::Single(t.clone()))
        .collect();
    if let Some(max_len) = args.max_len {
        if max_len == 0 || max_len > model.max_positions() {
            bail!(
                "--max-len {max_len}: must be between 1 and the model's {} positions",
                model.max_positions()
            );
        }
        model.tokenizer.configure(max_len, PaddingSide::Right)?;
    }
    let batch = model.tokenizer.encode_batch(&inputs)?;
    let mask = batch.mask_tensor(device);
    let hidden = model.hidden_states(&batch, device);
    let width = hidden.dims()[2];

    let pooled = match args.pooling {
        Pooling::None => None,
        Pooling::Mean => Some(mean_pool(hidden.clone(), mask.clone())),
        Pooling::Cls => Some(hidden.clone().narrow(1, 0, 1).reshape([batch.batch, width])),
        Pooling::Last => Some(last_token_pool(hidden.clone(), mask.clone())),
    };
    let vectors: Option<Vec<Vec<f32>>> = pooled.map(rows);
    // Token-level states are copied out only when they are printed.
    let token_states: Vec<f32> = match args.pooling {
        Pooling::None => to_vec(hidden.clone()),
        _ => Vec::new(),
    };

    let next_tokens = match (&model.backbone, args.lm_top_k) {
        (Backbone::Gpt2(gpt2, _), Some(k)) => {
            let last = last_token_pool(hidden, mask);
            let logits = gpt2.lm_logits(last.unsqueeze_dim::<3>(1));
            let logits = logits.reshape([batch.batch, gpt2_vocab(gpt2)]);
            Some(
                rows(logits)
                    .iter()
                    .map(|row| top_k(row, k))
                    .collect::<Vec<_>>(),
            )
        }
        _ => None,
    };

    let mut texts = Vec::new();
    for (i, text) in args.texts.iter().enumerate() {
        let mask = batch.mask_row(i);
        let real: Vec<usize> = (0..batch.seq).filter(|&t| mask[t] == 1).collect();
        let ids: Vec<u32> = real
            .iter()
            .map(|&t| batch.input_ids[i * batch.seq + t] as u32)
            .collect();
        let tokens: Vec<String> = ids
            .iter()
            .map(|&id| model.tokenizer.token(id).unwrap_or_default())
            .collect();
        let mut entry = json!({ "text": text, "input_ids": ids, "tokens": tokens });
        match &vectors {
            Some(vectors) => entry["embedding"] = json!(vectors[i]),
            None => {
                let states: Vec<&[f32]> = real
                    .iter()
                    .map(|&t| {
                        let start = (i * batch.seq + t) * width;
                        &token_states[start..start + width]
                    })
                    .collect();
                entry["hidden_states"] = json!(states);
            }
        }
        if let Some(next) = &next_tokens {
            let described: Vec<Value> = next[i]
                .iter()
                .map(|&(id, logit)| {
                    json!({
                        "id": id,
                        "token": model.tokenizer.token(id as u32).unwrap_or_default(),
                        "text": model.tokenizer.decode(&[id as u32]).unwrap_or_default(),
                        "logit": logit,
                    })
                })
                .collect();
            entry["next_tokens"] = json!(described);
        }
        texts.push(entry);
    }
    let report = json!({
        "model": args.model.display().to_string(),
        "model_type": if is_gpt2 { "gpt2" } else { "bert" },
        "device": choice.to_string(),
        "pooling": format!("{:?}", args.pooling).to_lowercase(),
        "texts": texts,
    });

    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(())
}

fn gpt2_vocab(model: &kiln_models::Gpt2) -> usize {
    model.wte.weight.shape().dims::<2>()[0]
}

fn to_vec<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("float tensor converts to f32")
}

fn rows(matrix: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, width] = matrix.dims();
    to_vec(matrix).chunks(width).map(<[f32]>::to_vec).collect()
}

/// The `k` largest entries as `(index, value)`, largest first.
fn top_k(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut indexed: Vec<(usize, f32)> = values.iter().copied().enumerate().collect();
    indexed.sort_by(|a, b| b.1.total_cmp(&a.1));
    indexed.truncate(k);
    indexed
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

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn top_k_orders_by_value() {
        assert_eq!(top_k(&[0.1, 3.0, -1.0, 2.0], 2), vec![(1, 3.0), (3, 2.0)]);
    }
}
