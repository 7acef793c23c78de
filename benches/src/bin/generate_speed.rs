//! Generation speed with and without the key/value cache (`kiln_train::generate`): a GPT-2 of
//! GPT-2 small's shape (12 layers, width 768, 12 heads, 50,257 tokens, 1,024 positions) at random
//! initialisation (speed does not depend on the weights), a prompt of `--prompt-tokens`, greedy
//! decoding of `--new-tokens`. Prints a Markdown table of new tokens per second. Run in release:
//! `cargo run --release -p kiln-benches --bin generate_speed`.

use std::time::Instant;

use anyhow::Result;
use clap::Parser;

use kiln_models::{DeviceChoice, Gpt2Config};
use kiln_train::generate::{GenerateSettings, generate_ids};

#[derive(Parser, Debug)]
struct Args {
    /// Prompt lengths, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [16usize, 128])]
    prompt_tokens: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Layers and width (GPT-2 small: 12 x 768).
    #[arg(long, default_value_t = 12)]
    layers: usize,
    #[arg(long, default_value_t = 768)]
    width: usize,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

fn main() -> Result<()> {
    kiln_train::memory::tune_allocator();
    let args = Args::parse();
    let device = args.device.device()?;
    let config = Gpt2Config::new(50_257, 1024, args.width, args.layers, 12, 50_256);
    let model = config.init(&device);
    println!(
        "GPT-2, {} layers x {}, random weights; greedy, {} new tokens\n",
        args.layers, args.width, args.new_tokens
    );
    println!("| prompt tokens | with the cache, tokens/s | without, tokens/s | speed-up |");
    println!("|---|---|---|---|");
    for &prompt_len in &args.prompt_tokens {
        let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| (i * 37) % 50_000).collect();
        let speed = |cache: bool| -> Result<f64> {
            let settings = GenerateSettings {
                max_new_tokens: args.new_tokens,
                cache,
                ..GenerateSettings::default()
            };
            let started = Instant::now();
            let (tokens, _) = generate_ids(&model, &prompt, &settings, None, &device)?;
            Ok(tokens.len() as f64 / started.elapsed().as_secs_f64())
        };
        let (with, without) = (speed(true)?, speed(false)?);
        println!(
            "| {prompt_len} | {with:.1} | {without:.1} | {:.1}x |",
            with / without
        );
    }
    Ok(())
}
