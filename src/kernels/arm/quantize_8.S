// Activation quantization for 32-bit ARM with NEON, eight values a step:
// out[i] = trunc(clamp(values[i] * inverse + 0.5, 0, top)), NaN -> 0.
//
//   void edge_classify_quantize_8_armv7(const float *values, uint8_t *out, size_t steps,
//                                       float inverse, float top);    (steps > 0)
//
// `vmla` rounds the product before the add, as the portable `x * inverse + 0.5` does,
// and `vcvt` truncates like Rust's `to_int_unchecked`: the same bytes.
    .syntax unified
    .arm
    .fpu neon
    .section .text.edge_classify_quantize_8_armv7,"ax",%progbits
    .globl edge_classify_quantize_8_armv7
    .type edge_classify_quantize_8_armv7,%function
    .p2align 2
edge_classify_quantize_8_armv7:
    vmov d6, d0             // d6[0] = inverse
    vdup.32 q11, d0[1]      // top
    vmov.f32 q2, #0.5
    vmov.i32 q10, #0
1:
    vld1.32 {d0-d3}, [r0]!
    vmov q8, q2
    vmov q9, q2
    vmla.f32 q8, q0, d6[0]
    vmla.f32 q9, q1, d6[0]
    vmax.f32 q8, q8, q10
    vmax.f32 q9, q9, q10
    vmin.f32 q8, q8, q11
    vmin.f32 q9, q9, q11
    vcvt.u32.f32 q8, q8
    vcvt.u32.f32 q9, q9
    vmovn.i32 d0, q8
    vmovn.i32 d1, q9
    vmovn.i16 d0, q0
    vst1.8 {d0}, [r1]!
    subs r2, r2, #1
    bne 1b
    bx lr
    .size edge_classify_quantize_8_armv7, .-edge_classify_quantize_8_armv7
