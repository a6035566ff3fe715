//! The activation quantization loops, written so that the compiler vectorizes them: the
//! portable kernel, and what the x86 kernels compile again with wider vectors enabled.

use crate::kernels::pool::larger;
use crate::kernels::quantize::QuantizeKernel;

pub static QUANTIZE: QuantizeKernel = QuantizeKernel {
    name: "portable",
    max_value: max_value_portable,
    maxima: maxima_portable,
    quantize: quantize_portable,
};

#[inline(always)]
pub(crate) fn max_value_portable(values: &[f32]) -> f32 {
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

/// The largest value of each run of `run` values (equal lengths checked by the caller).
#[inline(always)]
pub(crate) fn maxima_portable(values: &[f32], run: usize, out: &mut [f32]) {
    for (values, largest) in values.chunks_exact(run).zip(out) {
        *largest = max_value_portable(values);
    }
}

#[inline(always)]
pub(crate) fn quantize_portable(values: &[f32], inverse_scale: f32, max: u8, out: &mut [u8]) {
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
