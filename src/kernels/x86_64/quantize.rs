//! The activation quantization loops (`portable/quantize.rs`) compiled for AVX2 and for
//! AVX-512 F and BW: sixteen values a vector and a narrowing store to bytes (`vpmovdb`)
//! where AVX2 shuffles lanes (`vpshufb`, `vextracti128`, `vpermq`).

use crate::kernels::portable::quantize::{max_value_portable, maxima_portable, quantize_portable};
use crate::kernels::quantize::QuantizeKernel;

/// SAFETY (of the calls below): `plug` lists each kernel only at a level whose features
/// this CPU has.
pub static AVX2: QuantizeKernel = QuantizeKernel {
    name: "avx2",
    max_value: |values| unsafe { max_value_avx2(values) },
    maxima: |values, run, out| unsafe { maxima_avx2(values, run, out) },
    quantize: |values, inverse, max, out| unsafe { quantize_avx2(values, inverse, max, out) },
};

pub static AVX512: QuantizeKernel = QuantizeKernel {
    name: "avx512",
    max_value: |values| unsafe { max_value_avx512(values) },
    maxima: |values, run, out| unsafe { maxima_avx512(values, run, out) },
    quantize: |values, inverse, max, out| unsafe { quantize_avx512(values, inverse, max, out) },
};

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn max_value_avx512(values: &[f32]) -> f32 {
    max_value_portable(values)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn maxima_avx512(values: &[f32], run: usize, out: &mut [f32]) {
    maxima_portable(values, run, out)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn quantize_avx512(values: &[f32], inverse_scale: f32, max: u8, out: &mut [u8]) {
    quantize_portable(values, inverse_scale, max, out)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn max_value_avx2(values: &[f32]) -> f32 {
    max_value_portable(values)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn maxima_avx2(values: &[f32], run: usize, out: &mut [f32]) {
    maxima_portable(values, run, out)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2(values: &[f32], inverse_scale: f32, max: u8, out: &mut [u8]) {
    quantize_portable(values, inverse_scale, max, out)
}
