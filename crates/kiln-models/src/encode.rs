//! What `kiln encode` reports: a model's token ids, tokens and states (pooled or per token) for
//! some texts, and GPT-2's most likely next tokens, as JSON: the output a user checks kiln
//! against Python with. The report's shape is documented in the README:
//! `{model, model_type, device, pooling, texts: [{text, input_ids, tokens, embedding |
//! hidden_states, next_tokens?}]}`.

use std::path::Path;

use burn::tensor::Tensor;
use serde_json::{Value, json};

use crate::device::DeviceChoice;
use crate::error::{ModelError, Result};
use crate::gpt2::Gpt2;
use crate::pretrained::{Backbone, Pooling, Pretrained};
use crate::states::{last_token_pool, mean_pool};
use crate::tokenizer::{PaddingSide, TextInput};

/// Runs `texts` through the model in `model_dir` on `choice`'s device and reports, per text,
/// its ids, tokens and either one pooled embedding or every token's state, plus GPT-2's `top_k`
/// next tokens when asked: the report `kiln encode --json` prints (its shape is in the README).
pub fn encode(
    model_dir: &Path,
    texts: &[String],
    pooling: Pooling,
    max_len: Option<usize>,
    lm_top_k: Option<usize>,
    choice: DeviceChoice,
) -> Result<Value> {
    let device = &choice.device()?;
    let mut model = Pretrained::load(model_dir, device)?;
    let is_gpt2 = matches!(model.backbone, Backbone::Gpt2(..));
    if lm_top_k.is_some() && !is_gpt2 {
        return Err(ModelError::InvalidInput(format!(
            "--lm-top-k needs a GPT-2 model, but {} is BERT",
            model_dir.join("config.json").display()
        )));
    }
    if pooling == Pooling::Cls && is_gpt2 {
        return Err(ModelError::InvalidInput(
            "--pooling cls: GPT-2 has no [CLS] token; use `last` (the last real token) or `mean`"
                .into(),
        ));
    }

    let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::Single(t.clone())).collect();
    if let Some(max_len) = max_len {
        if max_len == 0 || max_len > model.max_positions() {
            return Err(ModelError::InvalidInput(format!(
                "--max-len {max_len}: must be between 1 and the model's {} positions",
                model.max_positions()
            )));
        }
        model.tokenizer.configure(max_len, PaddingSide::Right)?;
    }
    let batch = model.tokenizer.encode_batch(&inputs)?;
    let mask = batch.mask_tensor(device);
    let hidden = model.hidden_states(&batch, device);
    let width = hidden.dims()[2];

    let pooled = match pooling {
        Pooling::None => None,
        Pooling::Mean => Some(mean_pool(hidden.clone(), mask.clone())),
        Pooling::Cls => Some(hidden.clone().narrow(1, 0, 1).reshape([batch.batch, width])),
        Pooling::Last => Some(last_token_pool(hidden.clone(), mask.clone())),
    };
    let vectors: Option<Vec<Vec<f32>>> = pooled.map(rows);
    // Token-level states are copied out only when they are printed.
    let token_states: Vec<f32> = match pooling {
        Pooling::None => to_vec(hidden.clone()),
        _ => Vec::new(),
    };

    let next_tokens = match (&model.backbone, lm_top_k) {
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

    let mut entries = Vec::new();
    for (i, text) in texts.iter().enumerate() {
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
        entries.push(entry);
    }
    Ok(json!({
        "model": model_dir.display().to_string(),
        "model_type": if is_gpt2 { "gpt2" } else { "bert" },
        "device": choice.to_string(),
        "pooling": format!("{pooling:?}").to_lowercase(),
        "texts": entries,
    }))
}

fn gpt2_vocab(model: &Gpt2) -> usize {
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

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn top_k_orders_by_value() {
        assert_eq!(top_k(&[0.1, 3.0, -1.0, 2.0], 2), vec![(1, 3.0), (3, 2.0)]);
    }
}
