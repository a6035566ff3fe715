//! Activation quantization: the largest value of a feature map, and f32 -> u8 with one
//! scale. Plain loops, compiled for the baseline CPU and, chosen at run time, with AVX2 or
//! AVX-512 enabled so the compiler vectorizes them (the baseline SSE2 build converts one
//! value at a time and took a fifth of an int8 forward pass; AVX-512 took 41 % less time
//! than AVX2 relative to the int8 product on Zen 4). On 32-bit ARM with NEON the
//! conversion is an assembly loop (`armv7`), since Rust cannot vectorize for NEON there.

use super::pool::larger;

/// The largest value, or 0 when none is positive.
pub fn max_value(values: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512 F and BW.
        return unsafe { max_value_avx512(values) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { max_value_avx2(values) };
    }
    max_value_portable(values)
}

/// The largest value of each run of `run` values (0 when none is positive): one per
/// pixel of an NHWC feature map.
pub fn maxima(values: &[f32], run: usize, out: &mut [f32]) {
    assert_eq!(values.len(), run * out.len());
    for (values, largest) in values.chunks_exact(run).zip(out) {
        *largest = max_value(values);
    }
}

/// `out[i] = round(values[i] * inverse_scale)` clamped to `0..=max`.
pub fn quantize(values: &[f32], inverse_scale: f32, max: u8, out: &mut [u8]) {
    assert_eq!(values.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512 F and BW.
        return unsafe { quantize_avx512(values, inverse_scale, max, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { quantize_avx2(values, inverse_scale, max, out) };
    }
    #[cfg(target_arch = "arm")]
    if super::armv7::has_neon() {
        // SAFETY: the CPU has NEON.
        let done = unsafe { super::armv7::quantize_prefix(values, inverse_scale, max, out) };
        return quantize_portable(&values[done..], inverse_scale, max, &mut out[done..]);
    }
    quantize_portable(values, inverse_scale, max, out)
}

#[inline(always)]
fn max_value_portable(values: &[f32]) -> f32 {
    // Sixteen running maxima, so the loop vectorizes.
    let mut lanes = [0f32; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane = if *x > *lane { *x } else { *lane };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(0f32, |m, &x| if x > m { x } else { m })
}

#[inline(always)]
fn quantize_portable(values: &[f32], inverse_scale: f32, max: u8, out: &mut [u8]) {
    let top = max as f32;
    for (q, &x) in out.iter_mut().zip(values) {
        // Clamped into 0..=top first (NaN becomes 0), so the conversion is exact;
        // comparisons rather than `f32::max`/`min` (libm calls on 32-bit ARM).
        let clamped = larger(0.0, x * inverse_scale + 0.5);
        let clamped = if clamped < top { clamped } else { top };
        // SAFETY: `clamped` is finite and within 0..=255. The checked `as i32` kept x86
        // from vectorizing this loop (one scalar conversion and NaN test per value).
        *q = unsafe { clamped.to_int_unchecked::<i32>() } as u8;
    }
}

/// AVX-512 F and BW: sixteen values a vector and a narrowing store to bytes (`vpmovdb`)
/// where AVX2 shuffles lanes (`vpshufb`, `vextracti128`, `vpermq`).
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn max_value_avx512(values: &[f32]) -> f32 {
    max_value_portable(values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn quantize_avx512(values: &[f32], inverse_scale: f32, max: u8, out: &mut [u8]) {
    quantize_portable(values, inverse_scale, max, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn max_value_avx2(values: &[f32]) -> f32 {
    max_value_portable(values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2(values: &[f32], inverse_scale: f32, max: u8, out: &mut [u8]) {
    quantize_portable(values, inverse_scale, max, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    type MaxValue = unsafe fn(&[f32]) -> f32;
    type Quantize = unsafe fn(&[f32], f32, u8, &mut [u8]);

    /// Every build this CPU runs, the dispatching functions first.
    fn builds() -> Vec<(&'static str, MaxValue, Quantize)> {
        #[allow(unused_mut)]
        let mut builds: Vec<(&str, MaxValue, Quantize)> = vec![("dispatched", max_value, quantize)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                builds.push(("avx2", max_value_avx2, quantize_avx2));
            }
            if has_avx512() {
                builds.push(("avx512", max_value_avx512, quantize_avx512));
            }
        }
        builds
    }

    #[test]
    fn every_build_agrees_with_the_portable_loops_and_rounds_to_nearest() {
        let values: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let largest = max_value_portable(&values);
        let mut portable = vec![0; values.len()];
        quantize_portable(&values, 255.0 / largest, 255, &mut portable);
        // Edge values through the vector loops (64, 16 or 8 at a time) and the scalar tail.
        let edges = [
            -1.0,
            0.49,
            0.5,
            300.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            126.5,
        ];
        let input: Vec<f32> = edges.iter().cycle().take(77).copied().collect();
        for (name, max_value, quantize) in builds() {
            // SAFETY: `builds` lists what this CPU runs.
            unsafe {
                assert_eq!(max_value(&values), largest, "{name}");
                assert_eq!(max_value(&[-3.0, -1.0]), 0.0, "{name}");
                let mut fast = vec![0; values.len()];
                quantize(&values, 255.0 / largest, 255, &mut fast);
                assert_eq!(fast, portable, "{name}");
                let mut out = vec![0u8; input.len()];
                quantize(&input, 1.0, 255, &mut out);
                let expected = [0, 0, 1, 255, 0, 255, 0, 127];
                let all = |out: &[u8], expected: [u8; 8]| {
                    out.iter().zip(expected.iter().cycle()).all(|(o, e)| o == e)
                };
                assert!(all(&out, expected), "{name}: {out:?}");
                quantize(&input, 1.0, 127, &mut out);
                let expected = [0, 0, 1, 127, 0, 127, 0, 127];
                assert!(all(&out, expected), "{name}: {out:?}");
            }
        }
    }
}
