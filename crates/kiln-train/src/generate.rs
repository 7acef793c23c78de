//! Text generation with GPT-2 (`kiln generate`): a prompt continued token by token, greedily
//! (transformers' default, `do_sample=False`) or by sampling with a temperature, top-k and
//! top-p (nucleus) filtering from a seeded generator. With the key/value cache
//! ([`kiln_models::KvCache`]) each new token runs one position through the model; without it
//! every step runs the whole sequence again, which the cache's speed-up is measured against.

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};

use kiln_data::SplitMix64;
use kiln_models::{Gpt2, Gpt2Input, KvCache, TextTokenizer};

use crate::error::{Result, TrainError};

/// How to continue a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateSettings {
    /// Tokens to add at most.
    pub max_new_tokens: usize,
    /// 0 picks the most probable token (greedy); above 0 samples from the softmax of the
    /// logits divided by it.
    pub temperature: f64,
    /// When sampling, only the `k` most probable tokens (0: all).
    pub top_k: usize,
    /// When sampling, only the most probable tokens whose probabilities add up to `p` (1: all).
    pub top_p: f64,
    /// Seeds the sampling.
    pub seed: u64,
    /// Reuse every position's keys and values instead of running the sequence again.
    pub cache: bool,
}

impl Default for GenerateSettings {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 42,
            cache: true,
        }
    }
}

impl GenerateSettings {
    /// Refuses settings out of range, naming the flag.
    pub fn check(&self) -> Result<()> {
        let refuse = |m: String| Err(TrainError::Invalid(m));
        if self.max_new_tokens == 0 {
            return refuse("--max-new-tokens 0: generate at least one token".into());
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return refuse(format!(
                "--temperature {}: 0 (greedy) or above",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return refuse(format!("--top-p {}: must be in (0, 1]", self.top_p));
        }
        Ok(())
    }
}

/// What a generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The prompt's tokens.
    pub prompt: Vec<u32>,
    /// The new tokens.
    pub tokens: Vec<u32>,
    /// The new text.
    pub text: String,
    /// Wall time of the generation.
    pub seconds: f64,
    /// Why it stopped: `eos`, `max_new_tokens` or `positions` (the model's length).
    pub stopped: &'static str,
}

impl Generation {
    /// New tokens per second.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens.len() as f64 / self.seconds.max(1e-9)
    }
}

/// Continues `prompt` (text) with `model` (in inference mode: no autodiff, dropout off).
pub fn generate(
    model: &Gpt2,
    tokenizer: &TextTokenizer,
    prompt: &str,
    settings: &GenerateSettings,
    device: &Device,
) -> Result<Generation> {
    let ids = tokenizer.encode_words(prompt)?;
    if ids.is_empty() {
        return Err(TrainError::Invalid(
            "--prompt: the text has no tokens to continue".into(),
        ));
    }
    let eos = tokenizer.token_id("<|endoftext|>");
    let started = Instant::now();
    let (tokens, stopped) = generate_ids(model, &ids, settings, eos, device)?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Generation {
        text: tokenizer.decode(&tokens)?,
        prompt: ids,
        tokens,
        seconds,
        stopped,
    })
}

/// The tokens `model` adds to `prompt`, and why it stopped (see [`Generation::stopped`]).
pub fn generate_ids(
    model: &Gpt2,
    prompt: &[u32],
    settings: &GenerateSettings,
    eos: Option<u32>,
    device: &Device,
) -> Result<(Vec<u32>, &'static str)> {
    settings.check()?;
    let limit = model.wpe.weight.dims()[0];
    if prompt.len() >= limit {
        return Err(TrainError::Invalid(format!(
            "the prompt has {} tokens; the model has {limit} positions",
            prompt.len()
        )));
    }
    let mut rng = SplitMix64::new(settings.seed);
    let mut cache = KvCache::default();
    let mut sequence = prompt.to_vec();
    let mut new = Vec::new();
    let mut stopped = "max_new_tokens";
    for step in 0..settings.max_new_tokens {
        if sequence.len() >= limit {
            stopped = "positions";
            break;
        }
        let logits = if settings.cache {
            // The whole prompt first, then one token at a time.
            let fed = if step == 0 {
                prompt
            } else {
                &sequence[sequence.len() - 1..]
            };
            let hidden = model.forward_cached(ids_input(fed, device), &mut cache);
            last_logits(model, hidden)?
        } else {
            last_logits(model, model.forward(ids_input(&sequence, device)))?
        };
        let next = choose(&logits, settings, &mut rng);
        new.push(next);
        sequence.push(next);
        if Some(next) == eos {
            stopped = "eos";
            break;
        }
    }
    Ok((new, stopped))
}

fn ids_input(ids: &[u32], device: &Device) -> Gpt2Input {
    let ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    let len = ids.len();
    let input_ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), device);
    Gpt2Input {
        attention_mask: input_ids.ones_like(),
        input_ids,
    }
}

/// The logits of the last position `[vocab]`.
fn last_logits(model: &Gpt2, hidden: Tensor<3>) -> Result<Vec<f32>> {
    let seq = hidden.dims()[1];
    model
        .lm_logits(hidden.narrow(1, seq - 1, 1))
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::Invalid(format!("cannot read the logits: {e:?}")))
}

/// The next token: the argmax, or a draw from the filtered, tempered softmax.
fn choose(logits: &[f32], settings: &GenerateSettings, rng: &mut SplitMix64) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32)
    };
    if settings.temperature == 0.0 {
        return argmax();
    }
    // Candidates from the most probable down; top-k, then top-p, cut the list.
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if settings.top_k > 0 {
        order.truncate(settings.top_k);
    }
    let top = f64::from(logits[order[0]]);
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((f64::from(logits[i]) - top) / settings.temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut kept = 0;
    let mut mass = 0.0;
    for weight in &weights {
        kept += 1;
        mass += weight / total;
        if mass >= settings.top_p {
            break;
        }
    }
    let kept_total: f64 = weights[..kept].iter().sum();
    let mut draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * kept_total;
    for (&i, &weight) in order.iter().zip(&weights[..kept]) {
        if draw < weight {
            return i as u32;
        }
        draw -= weight;
    }
    order[kept - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled(settings: &GenerateSettings, logits: &[f32], draws: usize) -> Vec<usize> {
        let mut rng = SplitMix64::new(settings.seed);
        let mut counts = vec![0; logits.len()];
        for _ in 0..draws {
            counts[choose(logits, settings, &mut rng) as usize] += 1;
        }
        counts
    }

    #[test]
    fn sampling_keeps_to_top_k_and_top_p() {
        let logits = [2.0, 1.0, 0.5, -1.0];
        let greedy = GenerateSettings::default();
        assert_eq!(sampled(&greedy, &logits, 10), [10, 0, 0, 0]);
        let top_2 = GenerateSettings {
            temperature: 1.0,
            top_k: 2,
            ..GenerateSettings::default()
        };
        let counts = sampled(&top_2, &logits, 4000);
        assert_eq!(counts[2] + counts[3], 0);
        // softmax over the two: e^1 / (1 + e^1) = 0.73 for the first.
        let share = counts[0] as f64 / 4000.0;
        assert!((share - 0.731).abs() < 0.03, "{share}");
        // p = 0.5 keeps only the first (its probability alone is above it).
        let nucleus = GenerateSettings {
            temperature: 1.0,
            top_p: 0.5,
            ..GenerateSettings::default()
        };
        assert_eq!(sampled(&nucleus, &logits, 100), [100, 0, 0, 0]);
    }
}
