// One output pixel of a depthwise convolution for 32-bit ARM with NEON:
// out[c] = clamp(bias[c] + sum over taps of min(input[pixel + c], ceiling) * weights[weight + c],
//                0, ceiling), sixteen channels a step in four q registers, then four.
//
//   void edge_classify_depthwise_pixel_armv7(const DepthwisePixel *p);
//
//   struct DepthwisePixel {          // offsets in bytes
//       const float *input;          //  0
//       const float *weights;        //  4
//       const uint32_t *taps;        //  8: (pixel, weight) offsets in values, `count` pairs
//       uint32_t count;              // 12: > 0
//       const float *bias;           // 16
//       float *out;                  // 20
//       uint32_t channels;           // 24: a multiple of four, > 0
//       float ceiling;               // 28
//   };
//
// `vmla` rounds the product before the add, as the portable loop's `o += v * w` does (no
// VFPv4 `vfma`: Cortex-A8/A9 boards have NEON without it).
    .syntax unified
    .arm
    .fpu neon
.macro next_tap
    // r7, r9 = the next tap's input and weights at the block's first channel (r8 bytes)
    ldr r7, [r10], #4
    ldr r9, [r10], #4
    add r7, r0, r7, lsl #2
    add r9, r1, r9, lsl #2
    add r7, r7, r8
    add r9, r9, r8
.endm
    .section .text.edge_classify_depthwise_pixel_armv7,"ax",%progbits
    .globl edge_classify_depthwise_pixel_armv7
    .type edge_classify_depthwise_pixel_armv7,%function
    .p2align 2
edge_classify_depthwise_pixel_armv7:
    push {r4-r11, lr}
    vpush {d8-d15}
    add r7, r0, #28
    vld1.32 {d26[], d27[]}, [r7]   // q13 = ceiling
    vmov.i32 q12, #0
    ldr r1, [r0, #4]               // weights
    ldr r2, [r0, #8]               // taps
    ldr r3, [r0, #12]              // count
    ldr r4, [r0, #16]              // bias
    ldr r5, [r0, #20]              // out
    ldr r6, [r0, #24]              // channels
    ldr r0, [r0]                   // input
    lsl r6, r6, #2                 // channels in bytes
    mov r8, #0                     // the block's first channel, in bytes
16:
    sub r9, r6, r8
    cmp r9, #64
    blt 4f
    add r9, r4, r8
    vld1.32 {d16-d19}, [r9]!
    vld1.32 {d20-d23}, [r9]
    mov r10, r2
    mov r11, r3
1:
    next_tap
    vld1.32 {d0-d3}, [r7]!
    vld1.32 {d4-d7}, [r7]
    vld1.32 {d8-d11}, [r9]!
    vld1.32 {d12-d15}, [r9]
    vmin.f32 q0, q0, q13
    vmin.f32 q1, q1, q13
    vmin.f32 q2, q2, q13
    vmin.f32 q3, q3, q13
    vmla.f32 q8, q0, q4
    vmla.f32 q9, q1, q5
    vmla.f32 q10, q2, q6
    vmla.f32 q11, q3, q7
    subs r11, r11, #1
    bne 1b
    vmax.f32 q8, q8, q12
    vmax.f32 q9, q9, q12
    vmax.f32 q10, q10, q12
    vmax.f32 q11, q11, q12
    vmin.f32 q8, q8, q13
    vmin.f32 q9, q9, q13
    vmin.f32 q10, q10, q13
    vmin.f32 q11, q11, q13
    add r9, r5, r8
    vst1.32 {d16-d19}, [r9]!
    vst1.32 {d20-d23}, [r9]
    add r8, r8, #64
    b 16b
4:
    cmp r8, r6
    bge 9f
    add r9, r4, r8
    vld1.32 {d16-d17}, [r9]
    mov r10, r2
    mov r11, r3
2:
    next_tap
    vld1.32 {d0-d1}, [r7]
    vld1.32 {d8-d9}, [r9]
    vmin.f32 q0, q0, q13
    vmla.f32 q8, q0, q4
    subs r11, r11, #1
    bne 2b
    vmax.f32 q8, q8, q12
    vmin.f32 q8, q8, q13
    add r9, r5, r8
    vst1.32 {d16-d17}, [r9]
    add r8, r8, #16
    b 4b
9:
    vpop {d8-d15}
    pop {r4-r11, pc}
    .size edge_classify_depthwise_pixel_armv7, .-edge_classify_depthwise_pixel_armv7
