//! How M2-BERT's mixers grow against BERT's: forward time of one sequence mixer (gated long
//! convolution through the four-step DFT) against one self-attention block at sequence lengths
//! 256..4096, and of the block-diagonal (Monarch) GLU MLP against BERT's dense MLP at widths
//! 256..1024, and of one square Monarch matrix with `sqrt(n)` blocks against a dense `n x n`
//! linear map at widths 256..4096. Prints Markdown tables with the least-squares growth exponent
//! of each column (time ∝ size^k). Run in release:
//! `cargo run --release -p kiln-benches --bin m2_scaling`.

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor};

use kiln_models::attention::padding_bias;
use kiln_models::bert::BertConfig;
use kiln_models::m2::M2BertConfig;
use kiln_models::monarch::MonarchConfig;
use kiln_models::{AdapterContext, Bert, DeviceChoice, M2Bert};

/// Median wall time of `runs` calls after one warm-up, in milliseconds.
fn time_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Slope of log(time) against log(size).
fn exponent(points: &[(f64, f64)]) -> f64 {
    let logs: Vec<(f64, f64)> = points.iter().map(|(x, y)| (x.ln(), y.ln())).collect();
    let n = logs.len() as f64;
    let (mx, my) = (
        logs.iter().map(|p| p.0).sum::<f64>() / n,
        logs.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = logs.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = logs.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    cov / var
}

fn configs(width: usize, positions: usize) -> (BertConfig, M2BertConfig) {
    let fields = serde_json::json!({
        "model_type": "bert", "vocab_size": 8, "hidden_size": width, "num_hidden_layers": 1,
        "num_attention_heads": width / 64, "intermediate_size": 4 * width,
        "max_position_embeddings": positions, "hyena_filter_order": 64,
        "monarch_mlp_nblocks": 4, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0
    });
    (
        serde_json::from_value(fields.clone()).expect("BERT config"),
        serde_json::from_value(fields).expect("M2 config"),
    )
}

fn models(width: usize, positions: usize, device: &Device) -> (Bert, M2Bert) {
    let (bert, m2) = configs(width, positions);
    (bert.init(device), m2.init(device).expect("M2 model"))
}

fn main() {
    kiln_train::memory::tune_allocator();
    let device = DeviceChoice::Cpu.device().expect("CPU backend");
    let runs = 9;
    let width = 256;
    println!("Sequence mixers, batch 1, width {width}: forward ms (median of {runs})\n");
    println!("| length | self-attention | M2 long-conv mixer |");
    println!("|---|---|---|");
    let (mut attention_points, mut mixer_points) = (Vec::new(), Vec::new());
    for len in [256usize, 512, 1024, 2048, 4096] {
        let (bert, m2) = models(width, len, &device);
        let x = Tensor::<3>::random(
            [1, len, width],
            burn::tensor::Distribution::Default,
            &device,
        );
        let mask = Tensor::<2, Int>::ones([1, len], &device);
        let bias = padding_bias(&mask);
        let attention = &bert.layers[0].attention;
        let mixer = &m2.layers[0].mixer;
        let a = time_ms(runs, || {
            let _ = attention.forward(x.clone(), &bias, None).into_data();
        });
        let m = time_ms(runs, || {
            let _ = mixer.forward(x.clone()).into_data();
        });
        println!("| {len} | {a:.1} | {m:.1} |");
        attention_points.push((len as f64, a));
        mixer_points.push((len as f64, m));
    }
    println!(
        "| exponent | {:.2} | {:.2} |\n",
        exponent(&attention_points),
        exponent(&mixer_points)
    );

    // Four sequences per call: per-call overheads would otherwise hide the growth at small widths.
    let (batch, len) = (4, 512);
    println!("Dimension mixers, batch {batch}, length {len}: forward ms (median of {runs})\n");
    println!("| width | dense MLP (BERT) | block-diagonal GLU MLP (M2, 4 blocks) |");
    println!("|---|---|---|");
    let (mut dense_points, mut monarch_points) = (Vec::new(), Vec::new());
    for width in [256usize, 512, 768, 1024] {
        let (bert, m2) = models(width, len, &device);
        let x = Tensor::<3>::random(
            [batch, len, width],
            burn::tensor::Distribution::Default,
            &device,
        );
        let layer = &bert.layers[0];
        let mlp = &m2.layers[0].mlp;
        let d = time_ms(runs, || {
            let inner = layer
                .activation
                .forward(layer.intermediate.forward(x.clone()));
            let out = layer
                .output_norm
                .forward(layer.output.forward(inner) + x.clone());
            let _ = out.into_data();
        });
        let b = time_ms(runs, || {
            let _ = mlp
                .forward(x.clone(), None, &AdapterContext::default())
                .into_data();
        });
        println!("| {width} | {d:.1} | {b:.1} |");
        dense_points.push((width as f64, d));
        monarch_points.push((width as f64, b));
    }
    println!(
        "| exponent | {:.2} | {:.2} |\n",
        exponent(&dense_points),
        exponent(&monarch_points)
    );

    // M2's MLP keeps 4 blocks at every width, so it stays quadratic with a quarter of the work;
    // a Monarch matrix with sqrt(n) blocks is what grows as n^1.5.
    println!("One square layer, batch {batch}, length {len}: forward ms (median of {runs})\n");
    println!(
        "| width n | dense n x n | Monarch, sqrt(n) blocks | multiplies per row, dense / Monarch |"
    );
    println!("|---|---|---|---|");
    let (mut dense_points, mut monarch_points) = (Vec::new(), Vec::new());
    for blocks in [16usize, 24, 32, 48, 64] {
        let width = blocks * blocks;
        let dense = burn::nn::LinearConfig::new(width, width).init(&device);
        let monarch = MonarchConfig::new(width, width, blocks)
            .init(&device)
            .expect("Monarch layer");
        let x = Tensor::<3>::random(
            [batch, len, width],
            burn::tensor::Distribution::Default,
            &device,
        );
        let d = time_ms(runs, || {
            let _ = dense.forward(x.clone()).into_data();
        });
        let m = time_ms(runs, || {
            let _ = monarch.forward(x.clone()).into_data();
        });
        println!(
            "| {width} | {d:.2} | {m:.2} | {} / {} |",
            width * width,
            monarch.num_multiplies_per_row()
        );
        dense_points.push((width as f64, d));
        monarch_points.push((width as f64, m));
    }
    println!(
        "| exponent | {:.2} | {:.2} | 2 / 1.5 |",
        exponent(&dense_points),
        exponent(&monarch_points)
    );
}
