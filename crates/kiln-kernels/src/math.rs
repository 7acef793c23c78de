//! Branch-free single-precision `exp`, `erf` and the counter-based dropout hash, written so that
//! the compiler vectorises loops over them (no calls into libm, no data-dependent branches).

/// How a polynomial step `a * b + c` is computed: [`Fused`] as one fused multiply-add, for
/// code compiled with the FMA extension (the kernels' AVX2 and AVX-512 paths); [`Plain`] as a
/// multiply and an add, for the baseline, where `f32::mul_add` would be a call into libm on
/// every element. (Rust never contracts `a * b + c` into an FMA on its own.)
pub trait MulAdd {
    /// `a * b + c`.
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One fused multiply-add instruction (with the FMA extension compiled in).
pub struct Fused;
/// A multiply and an add.
pub struct Plain;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Plain {
    #[inline(always)]
    #[allow(clippy::suboptimal_flops)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// [`exp_with`] by multiply and add.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_with::<Plain>(x)
}

/// `e^x` to about 2 ulp for x in [-87, 88]; below, a value under 1.4e-38 (softmax treats it as
/// zero next to the row's maximum, whose term is 1); above, clamped to `e^88.7`.
#[inline(always)]
pub fn exp_with<M: MulAdd>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exact in f32 and the rest, as Cephes does.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let n = M::mul_add(x, LOG2E, ROUND) - ROUND;
    let r = M::mul_add(-n, LN2_LO, M::mul_add(-n, LN2_HI, x));
    // e^r on |r| <= ln2/2, Cephes' expf polynomial.
    let p = 1.987_569_1e-4_f32;
    let p = M::mul_add(p, r, 1.398_199_9e-3);
    let p = M::mul_add(p, r, 8.333_452e-3);
    let p = M::mul_add(p, r, 4.166_579_6e-2);
    let p = M::mul_add(p, r, 1.666_666_5e-1);
    let p = M::mul_add(p, r, 5e-1);
    let er = M::mul_add(p, r * r, r) + 1.0;
    // 2^n from its exponent bits. n + 127 is an integer in [1, 255] after the clamp, and the
    // low mantissa bits of n + 127 + 2^23 hold it: no float-to-int conversion, whose saturating
    // Rust semantics the compiler cannot vectorise.
    let biased = ((n + 127.0 + 8_388_608.0).to_bits() & 0x007f_ffff).clamp(1, 254);
    let two_n = f32::from_bits(biased << 23);
    er * two_n
}

/// The error function to under 1e-6 absolute (Abramowitz & Stegun 7.1.26, 1.5e-7 in exact
/// arithmetic, evaluated in f32 with the exponential
/// above), odd by construction.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    erf_given_gaussian::<Plain>(x, exp(-x * x))
}

/// `erf(x)` from `gaussian = exp(-x^2)`, which GELU's derivative needs too: one exponential
/// serves both.
#[inline(always)]
fn erf_given_gaussian<M: MulAdd>(x: f32, gaussian: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let t = 1.0 / M::mul_add(P, x.abs(), 1.0);
    let poly = M::mul_add(
        M::mul_add(M::mul_add(M::mul_add(A5, t, A4), t, A3), t, A2),
        t,
        A1,
    ) * t;
    M::mul_add(-poly, gaussian, 1.0).copysign(x)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi), the standard normal density's constant.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `(Phi(x), exp(-x^2 / 2))`: the standard normal CDF and the density's exponential.
#[inline(always)]
fn normal_cdf<M: MulAdd>(x: f32) -> (f32, f32) {
    let gaussian = exp_with::<M>(-0.5 * x * x);
    (
        M::mul_add(
            0.5,
            erf_given_gaussian::<M>(x * FRAC_1_SQRT_2, gaussian),
            0.5,
        ),
        gaussian,
    )
}

/// Exact GELU, `x * Phi(x)` with `Phi(x) = (1 + erf(x / sqrt 2)) / 2` (BERT's `gelu`).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    gelu_with::<Plain>(x)
}

/// [`gelu`] with the multiply-adds of `M`.
#[inline(always)]
pub fn gelu_with<M: MulAdd>(x: f32) -> f32 {
    x * normal_cdf::<M>(x).0
}

/// The exact derivative of [`gelu`]: `Phi(x) + x * phi(x)`.
#[inline(always)]
pub fn gelu_derivative(x: f32) -> f32 {
    gelu_derivative_with::<Plain>(x)
}

/// [`gelu_derivative`] with the multiply-adds of `M`.
#[inline(always)]
pub fn gelu_derivative_with<M: MulAdd>(x: f32) -> f32 {
    let (cdf, gaussian) = normal_cdf::<M>(x);
    M::mul_add(x * INV_SQRT_2PI, gaussian, cdf)
}

/// A 32-bit avalanche hash (Wellons' `lowbias32`): every input bit flips each output bit with
/// probability close to 1/2, using only shifts, xors and 32-bit multiplies, which vectorise.
#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The dropout stream of one call: a key from the seed and the rule that keeps element `i`.
#[derive(Debug, Clone, Copy)]
pub struct KeepMask {
    key_lo: u32,
    key_hi: u32,
    /// Element `i` is dropped when its hash is below this (`prob * 2^32`).
    threshold: u32,
    /// `1 / (1 - prob)`: kept values are scaled so the expectation is unchanged.
    pub scale: f32,
}

impl KeepMask {
    /// The mask that drops with probability `prob`, drawn from `seed`.
    pub fn new(prob: f32, seed: u64) -> Self {
        Self {
            key_lo: mix32(seed as u32 ^ 0x9e37_79b9),
            key_hi: mix32((seed >> 32) as u32 ^ 0x85eb_ca6b),
            threshold: (f64::from(prob) * 4_294_967_296.0).min(4_294_967_295.0) as u32,
            scale: 1.0 / (1.0 - prob),
        }
    }

    /// The factor element `i` is multiplied by: 0 (dropped) or `scale` (kept). Two rounds of the
    /// hash over the index and both halves of the key, so streams of nearby seeds are unrelated.
    #[inline(always)]
    pub fn factor(&self, i: usize) -> f32 {
        let low = i as u32;
        let high = (i >> 32) as u32;
        let h = mix32(mix32(low ^ self.key_lo).wrapping_add(high) ^ self.key_hi);
        if h >= self.threshold { self.scale } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_over_the_softmax_range() {
        let mut worst: f32 = 0.0;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = x.exp();
            for got in [exp(x), exp_with::<Fused>(x)] {
                worst = worst.max(((got - want) / want).abs());
            }
        }
        assert!(worst < 1e-6, "relative error {worst}");
        assert!(exp(f32::MIN) < 1.5e-38 && exp(f32::MIN) >= 0.0);
    }

    #[test]
    fn erf_and_gelu_match_f64() {
        let erf64 = |x: f64| {
            // erf by its Taylor series, converging well on |x| <= 3 in f64.
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        for i in 0..=6000 {
            let x = -3.0 + i as f64 / 1000.0;
            let error = (f64::from(erf(x as f32)) - erf64(f64::from(x as f32))).abs();
            assert!(error < 1e-6, "erf({x}) off by {error}");
            let x = f64::from(x as f32);
            let gelu64 = 0.5 * x * (1.0 + erf64(x / 2f64.sqrt()));
            for gelu in [gelu(x as f32), gelu_with::<Fused>(x as f32)] {
                assert!((f64::from(gelu) - gelu64).abs() < 1e-6, "gelu({x})");
            }
            let h = 1e-4;
            let numeric = (0.5 * (x + h) * (1.0 + erf64((x + h) / 2f64.sqrt()))
                - 0.5 * (x - h) * (1.0 + erf64((x - h) / 2f64.sqrt())))
                / (2.0 * h);
            for derivative in [
                gelu_derivative(x as f32),
                gelu_derivative_with::<Fused>(x as f32),
            ] {
                assert!((f64::from(derivative) - numeric).abs() < 1e-5, "gelu'({x})");
            }
        }
    }

    #[test]
    fn keep_mask_drops_the_asked_share_and_depends_on_the_seed() {
        let n = 1_000_000;
        for prob in [0.1f32, 0.5] {
            let mask = KeepMask::new(prob, 42);
            let dropped = (0..n).filter(|&i| mask.factor(i) == 0.0).count();
            let share = dropped as f64 / n as f64;
            assert!((share - f64::from(prob)).abs() < 0.002, "{prob}: {share}");
        }
        let (a, b) = (KeepMask::new(0.5, 1), KeepMask::new(0.5, 2));
        let same = (0..n).filter(|&i| a.factor(i) == b.factor(i)).count();
        assert!((same as f64 / n as f64 - 0.5).abs() < 0.005);
    }
}
