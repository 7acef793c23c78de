//! Run-time selection of vector extensions for the kernels' loops.

/// `vectorised!(vis name => helper, (args))` defines `vis fn name(args)`, which runs the
/// `#[inline(always)]` `helper` compiled for AVX-512 or AVX2 + FMA when the CPU has them
/// (detected once, cached by std), else for the baseline. The helpers' loops are written to
/// vectorise; compiled for the baseline alone (SSE2) they would use a quarter of an AVX-512
/// register.
macro_rules! vectorised {
    ($vis:vis $name:ident => $helper:ident, ($($arg:ident: $ty:ty),* $(,)?)) => {
        vectorised!(@emit $vis $name, ($($arg: $ty),*),
            $helper($($arg),*), $helper($($arg),*));
    };
    // `helper::<MulAdd>`: the helper is generic over how it multiplies and adds, and gets
    // fused multiply-adds where the extension is compiled in.
    ($vis:vis $name:ident => $helper:ident::<MulAdd>, ($($arg:ident: $ty:ty),* $(,)?)) => {
        vectorised!(@emit $vis $name, ($($arg: $ty),*),
            $helper::<$crate::math::Fused>($($arg),*), $helper::<$crate::math::Plain>($($arg),*));
    };
    (@emit $vis:vis $name:ident, ($($arg:ident: $ty:ty),*), $fast:expr, $baseline:expr) => {
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi1,bmi2")]
                fn avx512($($arg: $ty),*) {
                    $fast
                }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma,bmi1,bmi2")]
                fn avx2($($arg: $ty),*) {
                    $fast
                }
                if $crate::simd::cpu_has_avx512() {
                    // SAFETY: the CPU has every extension `avx512` is compiled for.
                    #[allow(unsafe_code)]
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::simd::cpu_has_avx2() {
                    // SAFETY: the CPU has every extension `avx2` is compiled for.
                    #[allow(unsafe_code)]
                    return unsafe { avx2($($arg),*) };
                }
            }
            $baseline
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn cpu_has_avx512() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512dq") && cpu_has_avx2()
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn cpu_has_avx2() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx2") && has!("fma") && has!("bmi1") && has!("bmi2")
}
