// f32 microkernel for 32-bit ARM with NEON (Cortex-A7, A53/A72 in 32-bit mode, ...):
// c[4 x 8] += a[4 x k] * b[k x 8].
//
//   void edge_classify_sgemm_4x8_armv7(const struct F32Tile *tile);
//   struct F32Tile { k, a[4], b, ldb, c, ldc }  (32-bit words; strides in bytes)
//
// The four activation rows are read in place (four k at a time, then one at a time); each
// k's eight weights are one load from row-major b. Accumulators q8-q15 (row r: q8+2r,
// q9+2r); vmla by scalar takes its multiplier from d0-d7. Rust cannot name NEON
// registers on this target (no stable `neon` feature), hence a whole function here.
    .syntax unified
    .arm
    .fpu neon
.macro sgemm_4x8_mla wlo, whi, r0, r1, r2, r3
    // one k: the eight weights (wlo, whi) times each row's value (r0-r3, d0-d7 lanes)
    vmla.f32 q8, \wlo, \r0
    vmla.f32 q9, \whi, \r0
    vmla.f32 q10, \wlo, \r1
    vmla.f32 q11, \whi, \r1
    vmla.f32 q12, \wlo, \r2
    vmla.f32 q13, \whi, \r2
    vmla.f32 q14, \wlo, \r3
    vmla.f32 q15, \whi, \r3
.endm

    .section .text.edge_classify_sgemm_4x8_armv7,"ax",%progbits
    .globl edge_classify_sgemm_4x8_armv7
    .type edge_classify_sgemm_4x8_armv7,%function
    .p2align 2
edge_classify_sgemm_4x8_armv7:
    push {r4-r9}
    vpush {d8-d15}
    ldr r1, [r0, #0]
    ldr r2, [r0, #4]
    ldr r3, [r0, #8]
    ldr r4, [r0, #12]
    ldr r5, [r0, #16]
    ldr r6, [r0, #20]
    ldr r7, [r0, #24]
    vmov.i32 q8, #0
    vmov.i32 q9, #0
    vmov.i32 q10, #0
    vmov.i32 q11, #0
    vmov.i32 q12, #0
    vmov.i32 q13, #0
    vmov.i32 q14, #0
    vmov.i32 q15, #0
    lsrs r8, r1, #2
    beq 2f
1:  // four k: rows' values in d0-d7, weights of k and k+1 in q4-q5 and q6-q7
    vld1.32 {d0-d1}, [r2]!
    vld1.32 {d2-d3}, [r3]!
    vld1.32 {d4-d5}, [r4]!
    vld1.32 {d6-d7}, [r5]!
    vld1.32 {d8-d11}, [r6], r7
    vld1.32 {d12-d15}, [r6], r7
    sgemm_4x8_mla q4, q5, d0[0], d2[0], d4[0], d6[0]
    vld1.32 {d8-d11}, [r6], r7
    sgemm_4x8_mla q6, q7, d0[1], d2[1], d4[1], d6[1]
    vld1.32 {d12-d15}, [r6], r7
    sgemm_4x8_mla q4, q5, d1[0], d3[0], d5[0], d7[0]
    sgemm_4x8_mla q6, q7, d1[1], d3[1], d5[1], d7[1]
    subs r8, r8, #1
    bne 1b
2:
    ands r8, r1, #3
    beq 4f
3:  // the last k % 4, one at a time
    vld1.32 {d0[0]}, [r2]!
    vld1.32 {d2[0]}, [r3]!
    vld1.32 {d4[0]}, [r4]!
    vld1.32 {d6[0]}, [r5]!
    vld1.32 {d8-d11}, [r6], r7
    sgemm_4x8_mla q4, q5, d0[0], d2[0], d4[0], d6[0]
    subs r8, r8, #1
    bne 3b
4:  // c += acc, row by row
    ldr r8, [r0, #28]
    ldr r9, [r0, #32]
    vld1.32 {d0-d3}, [r8]
    vadd.f32 q0, q0, q8
    vadd.f32 q1, q1, q9
    vst1.32 {d0-d3}, [r8], r9
    vld1.32 {d0-d3}, [r8]
    vadd.f32 q0, q0, q10
    vadd.f32 q1, q1, q11
    vst1.32 {d0-d3}, [r8], r9
    vld1.32 {d0-d3}, [r8]
    vadd.f32 q0, q0, q12
    vadd.f32 q1, q1, q13
    vst1.32 {d0-d3}, [r8], r9
    vld1.32 {d0-d3}, [r8]
    vadd.f32 q0, q0, q14
    vadd.f32 q1, q1, q15
    vst1.32 {d0-d3}, [r8]
    vpop {d8-d15}
    pop {r4-r9}
    bx lr
    .size edge_classify_sgemm_4x8_armv7, .-edge_classify_sgemm_4x8_armv7
