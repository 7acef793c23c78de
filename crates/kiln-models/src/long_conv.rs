//! Long convolutions in sub-quadratic time from matrix multiplies alone: the discrete Fourier
//! transform of length `N = N1·N2` computed as a DFT of length `N1` along one axis, a twiddle
//! multiply, and a DFT of length `N2` along the other (the "four-step" FFT: a Monarch
//! factorisation of the DFT matrix, which is how Monarch Mixer computes its convolutions with
//! GEMMs). Each transform costs `N·(N1 + N2)` complex multiply-adds per row, `O(N^1.5)` at
//! `N1 ≈ N2`, against `N²` for the direct sum; Burn's own FFT does not run on the ndarray
//! backend, this does on every backend and differentiates like any matmul.
//!
//! Complex numbers are `(real, imaginary)` pairs of real tensors.

use std::f64::consts::PI;

use burn::tensor::{Device, Tensor, TensorData};

/// A complex tensor as its real and imaginary parts.
#[derive(Debug, Clone)]
pub struct Complex<const D: usize> {
    /// Real part.
    pub re: Tensor<D>,
    /// Imaginary part.
    pub im: Tensor<D>,
}

impl<const D: usize> Complex<D> {
    fn mul(self, other: Complex<D>) -> Complex<D> {
        Complex {
            re: self.re.clone() * other.re.clone() - self.im.clone() * other.im.clone(),
            im: self.re * other.im + self.im * other.re,
        }
    }
}

/// The transform length used for a linear convolution of `len` samples (no wrap-around):
/// the next power of two at or above `2 len`.
pub fn transform_len(len: usize) -> usize {
    (2 * len).next_power_of_two()
}

/// `N = N1 · N2` with `N1` the power of two nearest below `sqrt(N)`.
fn split(n: usize) -> (usize, usize) {
    let n1 = 1usize << (n.trailing_zeros() / 2);
    (n1, n / n1)
}

/// `[n, n]` DFT matrix `exp(sign · 2πi · j k / n)`.
fn dft_matrix(n: usize, sign: f64, device: &Device) -> Complex<2> {
    let angle = |j: usize, k: usize| sign * 2.0 * PI * ((j * k) % n) as f64 / n as f64;
    let re: Vec<f32> = (0..n * n)
        .map(|i| angle(i / n, i % n).cos() as f32)
        .collect();
    let im: Vec<f32> = (0..n * n)
        .map(|i| angle(i / n, i % n).sin() as f32)
        .collect();
    Complex {
        re: Tensor::from_data(TensorData::new(re, [n, n]), device),
        im: Tensor::from_data(TensorData::new(im, [n, n]), device),
    }
}

/// `[n1, n2]` twiddle factors `exp(sign · 2πi · k1 n2 / N)`.
fn twiddles(n1: usize, n2: usize, sign: f64, device: &Device) -> Complex<2> {
    let n = n1 * n2;
    let angle = |k1: usize, j2: usize| sign * 2.0 * PI * ((k1 * j2) % n) as f64 / n as f64;
    let re: Vec<f32> = (0..n).map(|i| angle(i / n2, i % n2).cos() as f32).collect();
    let im: Vec<f32> = (0..n).map(|i| angle(i / n2, i % n2).sin() as f32).collect();
    Complex {
        re: Tensor::from_data(TensorData::new(re, [n1, n2]), device),
        im: Tensor::from_data(TensorData::new(im, [n1, n2]), device),
    }
}

/// DFT of each row of `x: [rows, N]` (`sign` -1: forward, +1: inverse without the `1/N`), with
/// `N` a power of two.
pub fn dft_rows(x: Complex<2>, sign: f64) -> Complex<2> {
    let [rows, n] = x.re.dims();
    assert!(
        n.is_power_of_two(),
        "transform length {n} must be a power of two"
    );
    let device = x.re.device();
    let (n1, n2) = split(n);
    // Sample j = n2·j1 + j2 sits at [j1, j2].
    let grid = |t: Tensor<2>| t.reshape([rows, n1, n2]);
    let x = Complex {
        re: grid(x.re),
        im: grid(x.im),
    };
    // Length-n1 DFTs down the columns: [n1, n1] x [rows, n1, n2].
    let f1 = dft_matrix(n1, sign, &device);
    let left = |m: Tensor<2>, t: Tensor<3>| m.unsqueeze_dim::<3>(0).matmul(t);
    let a = Complex {
        re: left(f1.re.clone(), x.re.clone()) - left(f1.im.clone(), x.im.clone()),
        im: left(f1.re, x.im) + left(f1.im, x.re),
    };
    let t = twiddles(n1, n2, sign, &device);
    let a = a.mul(Complex {
        re: t.re.unsqueeze_dim(0),
        im: t.im.unsqueeze_dim(0),
    });
    // Length-n2 DFTs along the rows: [rows, n1, n2] x [n2, n2].
    let f2 = dft_matrix(n2, sign, &device);
    let right = |t: Tensor<3>, m: Tensor<2>| t.matmul(m.unsqueeze_dim::<3>(0));
    let out = Complex {
        re: right(a.re.clone(), f2.re.clone()) - right(a.im.clone(), f2.im.clone()),
        im: right(a.re, f2.im) + right(a.im, f2.re),
    };
    // Frequency k = k1 + n1·k2 sits at [k1, k2]: read the grid by columns.
    let flat = |t: Tensor<3>| t.swap_dims(1, 2).reshape([rows, n]);
    Complex {
        re: flat(out.re),
        im: flat(out.im),
    }
}

/// Bidirectional long convolution of `v: [rows, L]` with per-row kernels (`forward`, `reverse`:
/// `[rows, L]`, or `[1, L]` shared by every row):
/// `y[n] = Σ_{m ≤ n} v[m]·forward[n − m] + Σ_{d = 1}^{L−1−n} v[n + d]·reverse[d − 1]`, as
/// M2-BERT's Hyena filters (the reverse kernel's first tap acts one step ahead). With
/// `reverse = None` the convolution is causal.
pub fn long_conv(v: Tensor<2>, forward: Tensor<2>, reverse: Option<Tensor<2>>) -> Tensor<2> {
    let len = v.dims()[1];
    let n = transform_len(len);
    let device = v.device();
    let pad = |t: Tensor<2>| {
        let r = t.dims()[0];
        Tensor::cat(vec![t, Tensor::zeros([r, n - len], &device)], 1)
    };
    let mut kernel = pad(forward);
    if let Some(reverse) = reverse {
        // Tap d−1 of the reverse kernel at position N − d: a lag of −d around the circle.
        let r = reverse.dims()[0];
        let taps = reverse.narrow(1, 0, len - 1).flip([1]);
        kernel = kernel + Tensor::cat(vec![Tensor::zeros([r, n - len + 1], &device), taps], 1);
    }
    let spectrum = |t: Tensor<2>| {
        let im = t.zeros_like();
        dft_rows(Complex { re: t, im }, -1.0)
    };
    let product = spectrum(pad(v)).mul(spectrum(kernel));
    // Real part of the inverse transform, scaled by 1/N.
    let back = dft_rows(product, 1.0);
    back.re.narrow(1, 0, len) / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceChoice;

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("floats")
    }

    fn tensor(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values, [rows, cols]), device)
    }

    #[test]
    fn dft_matches_the_definition() {
        let device = DeviceChoice::Cpu.device().expect("cpu");
        for n in [2usize, 8, 32] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 5 % 7) as f32 - 3.0) / 2.0).collect();
            let out = dft_rows(
                Complex {
                    re: tensor(x.clone(), 1, n, &device),
                    im: Tensor::zeros([1, n], &device),
                },
                -1.0,
            );
            let (re, im) = (values(out.re), values(out.im));
            for k in 0..n {
                let (mut want_re, mut want_im) = (0.0f64, 0.0f64);
                for (j, &v) in x.iter().enumerate() {
                    let angle = -2.0 * PI * (j * k) as f64 / n as f64;
                    want_re += f64::from(v) * angle.cos();
                    want_im += f64::from(v) * angle.sin();
                }
                assert!((want_re - f64::from(re[k])).abs() < 1e-3, "n {n} k {k}");
                assert!((want_im - f64::from(im[k])).abs() < 1e-3, "n {n} k {k}");
            }
        }
    }

    #[test]
    fn long_conv_equals_the_direct_sum() {
        let device = DeviceChoice::Cpu.device().expect("cpu");
        for len in [5usize, 16, 37] {
            let rows = 2;
            let signal = |seed: usize| -> Vec<f32> {
                (0..rows * len)
                    .map(|i| (((i + seed) * 7919 % 101) as f32 / 50.0) - 1.0)
                    .collect()
            };
            let (v, kf, kr) = (signal(1), signal(2), signal(3));
            let got = values(long_conv(
                tensor(v.clone(), rows, len, &device),
                tensor(kf.clone(), rows, len, &device),
                Some(tensor(kr.clone(), rows, len, &device)),
            ));
            let causal = values(long_conv(
                tensor(v.clone(), rows, len, &device),
                tensor(kf.clone(), rows, len, &device),
                None,
            ));
            for r in 0..rows {
                let at = |x: &[f32], i: usize| x[r * len + i];
                for n in 0..len {
                    let forward: f32 = (0..=n).map(|m| at(&v, m) * at(&kf, n - m)).sum();
                    let backward: f32 = (1..len - n).map(|d| at(&v, n + d) * at(&kr, d - 1)).sum();
                    let (want, have) = (forward + backward, got[r * len + n]);
                    assert!(
                        (want - have).abs() < 1e-3,
                        "L {len} n {n}: {want} vs {have}"
                    );
                    assert!((forward - causal[r * len + n]).abs() < 1e-3);
                }
            }
        }
    }
}
