//! Activation quantization: the largest value of a feature map, and f32 -> u8 with one
//! scale. The kernels are plain loops (`portable/`), compiled again with AVX2 or AVX-512
//! enabled so the compiler vectorizes them (`x86_64/`: the baseline SSE2 build converts
//! one value at a time and took a fifth of an int8 forward pass; AVX-512 took 41 % less
//! time than AVX2 relative to the int8 product on Zen 4), and on 32-bit ARM with NEON an
//! assembly loop (`arm/`), since Rust cannot vectorize for NEON there.

use super::table::table;

/// One build of the loops.
#[derive(Debug)]
pub struct QuantizeKernel {
    pub name: &'static str,
    /// The largest value, or 0 when none is positive.
    pub max_value: fn(&[f32]) -> f32,
    /// [`maxima`]: the loop over pixels in the kernel's own build, so that each pixel's
    /// maximum is inlined rather than a call through the table.
    pub maxima: fn(&[f32], usize, &mut [f32]),
    /// `out[i] = round(values[i] * inverse_scale)` clamped to `0..=max` (equal lengths).
    pub quantize: fn(&[f32], f32, u8, &mut [u8]),
}

/// The largest value, or 0 when none is positive.
pub fn max_value(values: &[f32]) -> f32 {
    (table().quantize.max_value)(values)
}

/// The largest value of each run of `run` values (0 when none is positive): one per
/// pixel of an NHWC feature map.
pub fn maxima(values: &[f32], run: usize, out: &mut [f32]) {
    assert_eq!(values.len(), run * out.len());
    (table().quantize.maxima)(values, run, out)
}

/// `out[i] = round(values[i] * inverse_scale)` clamped to `0..=max`.
pub fn quantize(values: &[f32], inverse_scale: f32, max: u8, out: &mut [u8]) {
    assert_eq!(values.len(), out.len());
    (table().quantize.quantize)(values, inverse_scale, max, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::portable::quantize::{max_value_portable, quantize_portable};
    use crate::kernels::table::variants;

    /// The dispatching functions, as a kernel.
    static DISPATCHED: QuantizeKernel = QuantizeKernel {
        name: "dispatched",
        max_value,
        maxima,
        quantize,
    };

    /// Every kernel this CPU runs, and the dispatching functions.
    fn builds() -> Vec<&'static QuantizeKernel> {
        let mut builds = variants("quantize", |k| k.quantize, |k| k.name);
        builds.push(&DISPATCHED);
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
        for kernel in builds() {
            let (name, max_value, quantize) = (kernel.name, kernel.max_value, kernel.quantize);
            {
                assert_eq!(max_value(&values), largest, "{name}");
                assert_eq!(max_value(&[-3.0, -1.0]), 0.0, "{name}");
                // Runs of 17 (a vector and a tail), each against the portable maximum.
                let runs = &values[..17 * 59];
                let mut maxima = vec![f32::NAN; 59];
                (kernel.maxima)(runs, 17, &mut maxima);
                let expected: Vec<f32> = runs.chunks(17).map(max_value_portable).collect();
                assert_eq!(maxima, expected, "{name}");
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
