//! Criterion benchmarks on the CPU backend (and wgpu with the `wgpu` feature and
//! `KILN_BENCH_DEVICE=wgpu`): for every registered text method one training step and one
//! inference batch of a MiniLM-shaped BERT at 16 x 128; LoRA inference merged and unmerged;
//! tokenizer throughput and batch building on BBC News with MiniLM's tokenizer (when `cargo
//! xtask assets` has fetched them). `cargo xtask bench` runs this and writes the summary.

use std::path::PathBuf;
use std::time::Duration;

use burn::module::Module;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group};

use kiln_benches::{
    BATCH, Batch, SEQ_LEN, Shape, TrainStep, backbone, classifier, infer, text_methods,
};
use kiln_data::{OnBadRow, ReadOptions, TextExample, make_batch, read_class_folders};
use kiln_models::{DeviceChoice, ModelKind, PaddingSide, TextInput, TextTokenizer};

fn device_choice() -> DeviceChoice {
    std::env::var("KILN_BENCH_DEVICE")
        .ok()
        .map(|d| d.parse().expect("KILN_BENCH_DEVICE is cpu or wgpu"))
        .unwrap_or_default()
}

/// A step of a second or more: ten samples of one iteration each (criterion's minimum).
fn slow<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements((BATCH * SEQ_LEN) as u64));
    group
}

fn methods(c: &mut Criterion) {
    let device = device_choice().device().expect("the benchmark device");
    let train_device = device.clone().autodiff();
    let methods = text_methods();

    let mut group = slow(c, "train_step");
    for method in &methods {
        group.bench_function(BenchmarkId::from_parameter(method), |b| {
            let model = backbone(None, Shape::MiniLm, &train_device).expect("backbone");
            let (model, _) = classifier(model, method, &train_device).expect("method applies");
            let vocab = model.word_embeddings().dims()[0];
            let batch = Batch::random(BATCH, SEQ_LEN, vocab, 7, &train_device);
            let mut step = TrainStep::new(model);
            b.iter(|| step.run(&batch));
        });
    }
    group.finish();

    let mut group = slow(c, "inference");
    for method in &methods {
        group.bench_function(BenchmarkId::from_parameter(method), |b| {
            let model = backbone(None, Shape::MiniLm, &device).expect("backbone");
            let (model, _) = classifier(model, method, &device).expect("method applies");
            let model = model.valid();
            let vocab = model.word_embeddings().dims()[0];
            let batch = Batch::random(BATCH, SEQ_LEN, vocab, 7, &device);
            b.iter(|| infer(&model, &batch));
        });
    }
    group.finish();

    // A merged LoRA model is the plain backbone again: its inference costs what the base does.
    let mut group = slow(c, "lora_inference");
    for merged in [false, true] {
        let name = if merged { "merged" } else { "unmerged" };
        group.bench_function(name, |b| {
            let model = backbone(None, Shape::MiniLm, &device).expect("backbone");
            let (mut model, _) = classifier(model, "lora", &device).expect("lora applies");
            if merged {
                model.merge_lora();
            }
            let model = model.valid();
            let vocab = model.word_embeddings().dims()[0];
            let batch = Batch::random(BATCH, SEQ_LEN, vocab, 7, &device);
            b.iter(|| infer(&model, &batch));
        });
    }
    group.finish();
}

fn kiln_home() -> PathBuf {
    std::env::var_os("KILN_HOME").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.kiln"),
        PathBuf::from,
    )
}

/// MiniLM's tokenizer at length 128 and the BBC News documents, when fetched.
fn text_assets() -> Option<(TextTokenizer, Vec<TextExample>)> {
    let home = kiln_home();
    let minilm = home.join("models/all-MiniLM-L6-v2");
    let bbc = home.join("data/bbcnews");
    if !minilm.is_dir() || !bbc.is_dir() {
        eprintln!(
            "tokenizer benchmarks skipped: run `cargo xtask assets` (looked in {})",
            home.display()
        );
        return None;
    }
    let mut tokenizer =
        TextTokenizer::from_dir(&minilm, ModelKind::Bert).expect("MiniLM tokenizer");
    tokenizer
        .configure(SEQ_LEN, PaddingSide::Right)
        .expect("length 128");
    let options = ReadOptions {
        on_bad_row: OnBadRow::Skip,
        encoding: None,
    };
    let dataset = read_class_folders(&bbc, options).expect("BBC News");
    Some((tokenizer, dataset.examples))
}

fn text(c: &mut Criterion) {
    let Some((tokenizer, examples)) = text_assets() else {
        return;
    };
    let documents: Vec<TextInput> = examples
        .iter()
        .take(256)
        .map(|e| TextInput::Single(e.text.clone()))
        .collect();
    let mut group = c.benchmark_group("tokenizer");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(documents.len() as u64));
    group.bench_function("encode_256_bbc_documents", |b| {
        b.iter(|| tokenizer.encode_batch(&documents).expect("encodes"));
    });
    group.finish();

    let device = DeviceChoice::Cpu.device().expect("CPU backend");
    let batch: Vec<&TextExample> = examples.iter().take(BATCH).collect();
    let mut group = c.benchmark_group("batching");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("make_batch_16x128_to_tensors", |b| {
        b.iter(|| {
            make_batch(&tokenizer, &batch)
                .expect("batch")
                .encoded
                .bert_input(&device)
        });
    });
    group.finish();
}

criterion_group!(benches, methods, text);

/// `criterion_main!` with the allocator set up as in the `kiln` binary.
fn main() {
    kiln_train::memory::tune_allocator();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
