//! Several tasks' adapters answered in one forward pass (a Parallel composition,
//! `kiln_train::multitask::ParallelTasks`) against the same tasks run one after another: N
//! Pfeiffer adapters with their heads on one base, one batch of 16 x 128 at inference, with
//! AdapterDrop running the lowest K layers without adapters (computed once for all tasks in
//! the parallel pass, once per task one by one). Prints a Markdown table of median
//! milliseconds per batch and the largest difference between the two outputs. Run in release:
//! `cargo run --release -p kiln-benches --bin parallel_tasks -- --model .kiln/models/all-MiniLM-L6-v2`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::Tensor;
use clap::Parser;

use kiln_benches::{BATCH, Batch, CLASSES, SEQ_LEN};
use kiln_data::TaskKind;
use kiln_models::{DeviceChoice, HeadConfig, Pretrained, Readout, SequenceClassifier};
use kiln_train::multitask::ParallelTasks;
use kiln_tuning::MethodConfig;

#[derive(Parser, Debug)]
struct Args {
    /// A HF BERT directory (all-MiniLM-L6-v2 from `cargo xtask assets`).
    #[arg(long, default_value = ".kiln/models/all-MiniLM-L6-v2")]
    model: PathBuf,
    /// Task counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [2usize, 4, 8])]
    tasks: Vec<usize>,
    /// Layers without adapters (AdapterDrop at inference), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0usize, 3, 5])]
    drop: Vec<usize>,
    #[arg(long, default_value_t = BATCH)]
    batch: usize,
    #[arg(long, default_value_t = SEQ_LEN)]
    len: usize,
    /// Timed batches per case, after one warm-up.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

/// Median wall time of `runs` calls after one warm-up, in milliseconds.
fn time_ms(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// The largest absolute difference between two lists of outputs.
fn largest_difference(a: &[Tensor<2>], b: &[Tensor<2>]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.clone() - y.clone()).abs().max().into_scalar::<f32>())
        .fold(0.0, f32::max)
}

fn main() -> Result<()> {
    kiln_train::memory::tune_allocator();
    let args = Args::parse();
    let device = args.device.device()?;
    let pretrained = Pretrained::load(&args.model, &device).with_context(|| {
        format!(
            "loading {} (run `cargo xtask assets`)",
            args.model.display()
        )
    })?;
    let head = HeadConfig {
        layers: 1,
        outputs: CLASSES,
        dropout: 0.1,
    };
    let base = SequenceClassifier::new(pretrained.backbone, Readout::Mean, head, &device)?;
    let vocab = base.word_embeddings().dims()[0];
    let batch = Batch::random(args.batch, args.len, vocab, 7, &device);
    let pfeiffer = MethodConfig::parse("pfeiffer", &[])?;
    let kind = TaskKind::Classification {
        labels: (0..CLASSES).map(|c| c.to_string()).collect(),
    };
    println!(
        "Inference, batch {} x {}, {} layers: median ms per batch of {} runs\n",
        args.batch,
        args.len,
        base.num_layers(),
        args.runs
    );
    println!(
        "| tasks | layers without adapters | one by one | parallel | speed-up | max difference |"
    );
    println!("|---|---|---|---|---|---|");
    for &count in &args.tasks {
        // Every task: the base with a fresh Pfeiffer adapter and a fresh head.
        let mut models = Vec::with_capacity(count);
        for _ in 0..count {
            let (mut model, _) = pfeiffer.apply(base.clone())?;
            model.head = head.init(model.hidden_size(), &device)?;
            models.push(model.valid());
        }
        let names = (0..count).map(|i| format!("task{i}")).collect();
        let kinds = vec![kind.clone(); count];
        let mut tasks = ParallelTasks::new(names, models, kinds, pretrained.tokenizer.clone())?;
        for &drop in &args.drop {
            tasks.set_adapter_drop(drop)?;
            let parallel = tasks.forward(batch.input.clone());
            let sequential = tasks.forward_one_by_one(batch.input.clone())?;
            let difference = largest_difference(&parallel, &sequential);
            let one_by_one = time_ms(args.runs, || {
                tasks.forward_one_by_one(batch.input.clone())?;
                Ok(())
            })?;
            let together = time_ms(args.runs, || {
                tasks.forward(batch.input.clone());
                Ok(())
            })?;
            println!(
                "| {count} | {drop} | {one_by_one:.0} | {together:.0} | {:.2}x | {difference:.1e} |",
                one_by_one / together
            );
        }
    }
    Ok(())
}
