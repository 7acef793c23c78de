//! One benchmark case in a process of its own, so that its peak memory is its own: a training
//! step (`--mode train`) or an inference batch (`--mode infer`) of a method on a MiniLM-shaped
//! BERT (or `--model DIR`), batch 16 x 128 by default. Prints one JSON object: the milliseconds
//! of every timed step, their median, tokens per second and the process's peak resident memory.
//! `cargo xtask bench --anchor` runs it beside `benches/anchor/anchor.py`, which does the same in
//! PyTorch.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::Module;
use clap::{Parser, ValueEnum};

use kiln_benches::{BATCH, Batch, SEQ_LEN, Shape, TrainStep, backbone, classifier, infer};
use kiln_models::DeviceChoice;
use kiln_train::plan::{StepShape, plan};
use kiln_tuning::MethodConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Train,
    Infer,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "full")]
    method: String,
    #[arg(long, value_enum, default_value_t = Mode::Train)]
    mode: Mode,
    /// A HF model directory; a BERT of `--shape` at random initialisation without it.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Shape::MiniLm)]
    shape: Shape,
    #[arg(long, default_value_t = BATCH)]
    batch: usize,
    #[arg(long, default_value_t = SEQ_LEN)]
    len: usize,
    /// Timed steps, after the warm-up ones.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Merge LoRA's deltas into the base weights before inference.
    #[arg(long)]
    merged: bool,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Print the methods that train from their defaults alone, one per line, and exit.
    #[arg(long)]
    list_methods: bool,
}

fn main() -> Result<()> {
    kiln_train::memory::tune_allocator();
    let args = Args::parse();
    if args.list_methods {
        for method in kiln_tuning::registry() {
            if method.command.is_none() && method.needs.is_none() {
                println!("{}", method.name);
            }
        }
        return Ok(());
    }
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let device = args.device.device()?;
    let train_device = device.clone().autodiff();
    let on = if args.mode == Mode::Train {
        &train_device
    } else {
        &device
    };
    let (mut model, report) = classifier(
        backbone(args.model.as_deref(), args.shape, on)?,
        &args.method,
        on,
    )?;
    if args.merged {
        model.merge_lora();
    }
    let prediction = plan(
        &model,
        &report,
        StepShape {
            batch: args.batch,
            seq: args.len,
            virtual_tokens: MethodConfig::parse(&args.method, &[])?
                .method()
                .virtual_tokens(),
        },
    )
    .ok();
    let vocab = model.word_embeddings().dims()[0];
    let batch = Batch::random(args.batch, args.len, vocab, 7, on);
    let mut timings = Vec::with_capacity(args.steps);
    match args.mode {
        Mode::Train => {
            let mut step = TrainStep::new(model);
            for i in 0..args.warmup + args.steps {
                let started = Instant::now();
                step.run(&batch);
                if i >= args.warmup {
                    timings.push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        Mode::Infer => {
            let model = model.valid();
            for i in 0..args.warmup + args.steps {
                let started = Instant::now();
                infer(&model, &batch);
                if i >= args.warmup {
                    timings.push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    }
    let mut sorted = timings.clone();
    sorted.sort_by(f64::total_cmp);
    // The lower median, as the anchor's `statistics.median_low`.
    let median = sorted[(sorted.len() - 1) / 2];
    let output = serde_json::json!({
        "engine": "kiln",
        "method": args.method,
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "merged": args.merged,
        "batch": args.batch,
        "len": args.len,
        "device": args.device.to_string(),
        "shape": if args.model.is_some() { "model".to_string() } else { format!("{:?}", args.shape).to_lowercase() },
        "trainable_params": report.trainable(),
        "total_params": report.total(),
        "ms": timings,
        "median_ms": median,
        "tokens_per_second": batch.tokens() as f64 / (median / 1e3),
        "peak_rss_mib": kiln_train::memory::peak_rss_mib(),
        // What `kiln plan` predicts for a training step of this case.
        "predicted_peak_mib": prediction.as_ref().map(|p| p.peak_bytes / (1024.0 * 1024.0)),
        "predicted_flops": prediction.as_ref().map(|p| p.forward_flops + p.backward_flops),
        // The matrix-product work of the timed step: forward and backward, or forward alone.
        "step_flops": prediction.as_ref().map(|p| match args.mode {
            Mode::Train => p.forward_flops + p.backward_flops,
            Mode::Infer => p.forward_flops,
        }),
    });
    println!("{output}");
    Ok(())
}
