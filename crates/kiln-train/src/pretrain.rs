//! Causal language modelling for GPT-2: documents become fixed-length blocks of token ids (each
//! document ends with the end-of-text token, as GPT-2 was trained), the loss is next-token
//! cross-entropy, and evaluation reports it with its perplexity. The trained model is written
//! as a HF GPT-2 directory (config.json, model.safetensors under HF's names, the tokenizer
//! files) that kiln and transformers load.

use std::path::Path;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};

use kiln_models::gpt2::GPT2_KEYS;
use kiln_models::{Gpt2, Gpt2Config, Gpt2Input};

use crate::checkpoint::{save_params_hf, write_atomically};
use crate::error::{Result, TrainError};
use crate::metrics::Metrics;
use crate::task_model::TaskModel;

/// Concatenates the documents (each followed by `eos`) and cuts them into blocks of `block`
/// tokens; the ragged end is dropped.
pub fn token_blocks(documents: &[Vec<u32>], eos: u32, block: usize) -> Vec<Vec<u32>> {
    let stream: Vec<u32> = documents
        .iter()
        .flat_map(|d| d.iter().copied().chain(std::iter::once(eos)))
        .collect();
    stream
        .chunks_exact(block.max(2))
        .map(<[u32]>::to_vec)
        .collect()
}

/// Next-token logits `[blocks * (block - 1), vocab]` and the ids they predict.
fn next_token_logits(
    model: &Gpt2,
    blocks: &[&Vec<u32>],
    device: &Device,
) -> Result<(Tensor<2>, Tensor<1, Int>)> {
    let (batch, len) = (blocks.len(), blocks.first().map_or(0, |b| b.len()));
    if len < 2 || blocks.iter().any(|b| b.len() != len) {
        return Err(TrainError::Invalid(
            "language-model blocks must share one length of at least 2".into(),
        ));
    }
    let ids: Vec<i64> = blocks
        .iter()
        .flat_map(|b| b.iter().map(|&t| i64::from(t)))
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, len]), device);
    let hidden = model.forward(Gpt2Input {
        input_ids: ids.clone(),
        attention_mask: ids.ones_like(),
    });
    let logits = model.lm_logits(hidden.narrow(1, 0, len - 1));
    let vocab = logits.dims()[2];
    let targets = ids.narrow(1, 1, len - 1).reshape([batch * (len - 1)]);
    Ok((logits.reshape([batch * (len - 1), vocab]), targets))
}

fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>, device: &Device) -> Tensor<1> {
    CrossEntropyLossConfig::new()
        .init(device)
        .forward(logits, targets)
}

impl TaskModel for Gpt2 {
    type Task = ();
    type Example = Vec<u32>;

    fn batch_loss(
        &self,
        _task: &(),
        blocks: &[&Vec<u32>],
        device: &Device,
    ) -> Result<(Tensor<1>, usize)> {
        let (logits, targets) = next_token_logits(self, blocks, device)?;
        let tokens = targets.dims()[0];
        Ok((cross_entropy(logits, targets, device), tokens))
    }

    fn evaluate(
        &self,
        _task: &(),
        blocks: &[&Vec<u32>],
        device: &Device,
        batch_size: usize,
    ) -> Result<Metrics> {
        let (mut loss_sum, mut count) = (0.0, 0usize);
        for chunk in blocks.chunks(batch_size.max(1)) {
            let (logits, targets) = next_token_logits(self, chunk, device)?;
            let n = targets.dims()[0];
            let loss = cross_entropy(logits, targets, device);
            loss_sum += f64::from(loss.into_scalar::<f32>()) * n as f64;
            count += n;
        }
        Ok(Metrics::language_model(loss_sum / count.max(1) as f64))
    }
}

/// Writes `model` as a HF GPT-2 directory: `config.json` (with `model_type`, the tied LM head
/// and the end-of-text id), `model.safetensors` under HF's names, and the tokenizer's
/// `vocab.json` and `merges.txt` copied from `tokenizer_dir` (which may name them
/// `encoder.json` and `vocab.bpe`, as the npm package does).
pub fn save_hf_gpt2(
    model: &Gpt2,
    config: &Gpt2Config,
    tokenizer_dir: &Path,
    out: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let mut json = serde_json::to_value(config).map_err(|e| TrainError::Invalid(e.to_string()))?;
    if let Some(fields) = json.as_object_mut() {
        fields.insert("model_type".into(), "gpt2".into());
        fields.insert(
            "architectures".into(),
            serde_json::json!(["GPT2LMHeadModel"]),
        );
        fields.insert("bos_token_id".into(), config.eos_token_id.into());
        fields.insert("tie_word_embeddings".into(), true.into());
    }
    let text =
        serde_json::to_string_pretty(&json).map_err(|e| TrainError::Invalid(e.to_string()))?;
    write_atomically(&out.join("config.json"), text.as_bytes())?;
    save_params_hf(model, &out.join("model.safetensors"), GPT2_KEYS, "")?;
    for (names, target) in [
        (["vocab.json", "encoder.json"], "vocab.json"),
        (["merges.txt", "vocab.bpe"], "merges.txt"),
    ] {
        let Some(source) = names
            .iter()
            .map(|n| tokenizer_dir.join(n))
            .find(|p| p.is_file())
        else {
            return Err(TrainError::Invalid(format!(
                "{}: no {} to copy into the checkpoint",
                tokenizer_dir.display(),
                names.join(" or ")
            )));
        };
        let bytes = std::fs::read(&source).map_err(|e| TrainError::io(&source, e))?;
        write_atomically(&out.join(target), &bytes)?;
    }
    Ok(())
}
