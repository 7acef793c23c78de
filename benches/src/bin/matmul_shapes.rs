//! GFLOP/s of kiln's matrix product (gemm, straight from the operands' strides) on BERT's
//! projection shapes, forward and both backward forms, to set beside a BLAS on the same machine.

use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use clap::Parser;
use kiln_models::DeviceChoice;

#[derive(Parser)]
struct Args {
    /// Tokens in a batch (batch x sequence length).
    #[arg(long, default_value_t = 2048)]
    tokens: usize,
    /// Hidden width; the feed-forward width is four times it.
    #[arg(long, default_value_t = 384)]
    hidden: usize,
}

/// A tensor's values, row-major.
fn host(t: &Tensor<2>) -> Vec<f32> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 values")
}

/// Mean seconds of `run` over about 20 GFLOP of calls, after three warm-up calls.
fn seconds_per_call(flops: f64, mut run: impl FnMut()) -> f64 {
    for _ in 0..3 {
        run();
    }
    let reps = (2e10 / flops).ceil().max(5.0) as usize;
    let start = Instant::now();
    for _ in 0..reps {
        run();
    }
    start.elapsed().as_secs_f64() / reps as f64
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let device = DeviceChoice::Cpu.device()?;
    let (t, h) = (args.tokens, args.hidden);
    println!(
        "| product | shape (m x k x n) | kiln (gemm) ms | GFLOP/s | matrixmultiply ms | GFLOP/s |\n|---|---|---|---|---|---|"
    );
    for (name, m, k, n, ta, tb) in [
        ("x W (q, k, v, o)", t, h, h, false, false),
        ("x W (up)", t, h, 4 * h, false, false),
        ("x W (down)", t, 4 * h, h, false, false),
        ("g W^T (up's input grad)", t, 4 * h, h, false, true),
        ("x^T g (up's weight grad)", h, t, 4 * h, true, false),
        ("g W^T (down's input grad)", t, h, 4 * h, false, true),
        ("x^T g (down's weight grad)", 4 * h, t, h, true, false),
    ] {
        let a_dims = if ta { [k, m] } else { [m, k] };
        let b_dims = if tb { [n, k] } else { [k, n] };
        let a = Tensor::<2>::random(a_dims, Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<2>::random(b_dims, Distribution::Normal(0.0, 1.0), &device);
        let (a_host, b_host) = (host(&a), host(&b));
        let a = if ta { a.transpose() } else { a };
        let b = if tb { b.transpose() } else { b };
        let flops = 2.0 * (m * k * n) as f64;
        let kiln = seconds_per_call(flops, || {
            kiln_kernels::matmul(a.clone(), b.clone()).into_data();
        });
        // The same product through matrixmultiply (ndarray's), its operands read by stride.
        let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
        let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
        let mut c = vec![0.0f32; m * n];
        let other = seconds_per_call(flops, || {
            // SAFETY: the strides address exactly the host buffers' elements.
            #[allow(unsafe_code)]
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a_host.as_ptr(),
                    a_rs,
                    a_cs,
                    b_host.as_ptr(),
                    b_rs,
                    b_cs,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        });
        println!(
            "| {name} | {m} x {k} x {n} | {:.2} | {:.0} | {:.2} | {:.0} |",
            kiln * 1e3,
            flops / kiln / 1e9,
            other * 1e3,
            flops / other / 1e9
        );
    }
    Ok(())
}
