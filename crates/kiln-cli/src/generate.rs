//! `kiln generate`: continue a prompt with a GPT-2 (a HF directory, a hub name, the model a
//! `kiln pretrain` run wrote) or a `kiln train --objective causal-lm` run; arguments, then
//! [`kiln_train::generate`].

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::module::Module;
use clap::Args;

use kiln_models::{Backbone, Pretrained};
use kiln_train::generate::{GenerateSettings, generate};

#[derive(Args)]
pub struct GenerateArgs {
    /// A GPT-2 model: HF directory (a `kiln pretrain` run's RUN/model) or hub name.
    #[arg(long, required_unless_present = "run", conflicts_with = "run")]
    model: Option<PathBuf>,
    /// A `kiln train --objective causal-lm` run: its base model with the method it trained
    /// (LoRA, adapters, prompts, ...), at its best evaluation.
    #[arg(long)]
    run: Option<PathBuf>,
    /// With --run: go on when the base model's files changed since the run trained.
    #[arg(long, requires = "run")]
    allow_changed_inputs: bool,
    /// The text to continue.
    #[arg(long)]
    prompt: String,
    /// Tokens to add at most (generation also stops at <|endoftext|>).
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// 0: the most probable token each step (greedy, transformers' default); above 0: sample
    /// from the softmax of the logits divided by it.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// When sampling, only the K most probable tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// When sampling, only the most probable tokens whose probabilities add up to P.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seeds the sampling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Run the whole sequence again for every new token instead of reusing the key/value
    /// cache (slower; for comparison).
    #[arg(long)]
    no_cache: bool,
    /// Print the result as one JSON object (text, tokens, tokens/s).
    #[arg(long)]
    json: bool,
}

pub fn run(args: GenerateArgs, device: &burn::tensor::Device) -> Result<()> {
    let settings = GenerateSettings {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        cache: !args.no_cache,
    };
    let generation = match (&args.run, &args.model) {
        (Some(run), _) => kiln_train::causal_lm::load(run, device, args.allow_changed_inputs)?
            .generate(&args.prompt, &settings)?,
        (None, Some(model)) => {
            let pretrained = Pretrained::load(model, device)?;
            let Backbone::Gpt2(gpt2, _) = pretrained.backbone else {
                bail!(
                    "--model {}: generation needs a GPT-2 (a causal language model); this is \
                     BERT or M2-BERT",
                    model.display()
                );
            };
            generate(
                &gpt2.valid(),
                &pretrained.tokenizer,
                &args.prompt,
                &settings,
                device,
            )?
        }
        (None, None) => bail!("give --model or --run"),
    };
    if args.json {
        let record = serde_json::json!({
            "prompt": args.prompt,
            "text": generation.text,
            "tokens": generation.tokens,
            "stopped": generation.stopped,
            "seconds": generation.seconds,
            "tokens_per_second": generation.tokens_per_second(),
            "cache": settings.cache,
        });
        println!("{record}");
    } else {
        println!("{}{}", args.prompt, generation.text);
        eprintln!(
            "{} tokens in {:.2} s ({:.1} tokens/s, {} cache; stopped at {})",
            generation.tokens.len(),
            generation.seconds,
            generation.tokens_per_second(),
            if settings.cache { "with" } else { "without" },
            generation.stopped
        );
    }
    Ok(())
}
