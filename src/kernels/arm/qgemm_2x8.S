// int8 microkernel for 32-bit ARM with NEON: two activation rows x eight output columns
// of one packed weight panel (qgemm/mod.rs: k in quads, 32 columns x 4 bytes per quad, so a
// group of eight columns is 32 bytes and the next quad 128 bytes on).
//
//   void edge_classify_qgemm_2x8_armv7(const struct QTile *tile);
//   struct QTile { quads, a[2], b, c, ldc, scale, row_scale }  (32-bit words; ldc in bytes)
//
// c[r][j] += (sum_k a[r][k] * b[k][j]) * scale[j] * row_scale[r]
//
// Activations are 0..127 and weights -127..127, so a row's quad, replicated across a
// d register (`vld1.32 {d[]}`), multiplies eight columns' quads as i8 (`vmull.s8`); two
// quads' products add in i16 without overflow (2 x 127 x 127 < 32767, `vmlal.s8`), then
// pairs widen into the i32 accumulators (`vpadal.s16`). Accumulator lanes hold half a
// column each; `vpadd` joins the halves at the end.
    .syntax unified
    .arm
    .fpu neon
.macro qgemm_2x8_row_two_quads qa, qb, acc0, acc1, acc2, acc3
    // one row's two quads (qa, qb) times the weights of both (d8-d11, d12-d15):
    // columns 0-1, 2-3, 4-5, 6-7 into acc0-acc3
    vmull.s8 q2, \qa, d8
    vmull.s8 q3, \qa, d9
    vmlal.s8 q2, \qb, d12
    vmlal.s8 q3, \qb, d13
    vpadal.s16 \acc0, q2
    vpadal.s16 \acc1, q3
    vmull.s8 q2, \qa, d10
    vmull.s8 q3, \qa, d11
    vmlal.s8 q2, \qb, d14
    vmlal.s8 q3, \qb, d15
    vpadal.s16 \acc2, q2
    vpadal.s16 \acc3, q3
.endm

.macro qgemm_2x8_row_one_quad qa, acc0, acc1, acc2, acc3
    vmull.s8 q2, \qa, d8
    vmull.s8 q3, \qa, d9
    vpadal.s16 \acc0, q2
    vpadal.s16 \acc1, q3
    vmull.s8 q2, \qa, d10
    vmull.s8 q3, \qa, d11
    vpadal.s16 \acc2, q2
    vpadal.s16 \acc3, q3
.endm

    .section .text.edge_classify_qgemm_2x8_armv7,"ax",%progbits
    .globl edge_classify_qgemm_2x8_armv7
    .type edge_classify_qgemm_2x8_armv7,%function
    .p2align 2
edge_classify_qgemm_2x8_armv7:
    push {r4-r8}
    vpush {d8-d15}
    ldr r1, [r0, #0]
    ldr r2, [r0, #4]
    ldr r3, [r0, #8]
    ldr r4, [r0, #12]
    mov r5, #128
    vmov.i32 q8, #0
    vmov.i32 q9, #0
    vmov.i32 q10, #0
    vmov.i32 q11, #0
    vmov.i32 q12, #0
    vmov.i32 q13, #0
    vmov.i32 q14, #0
    vmov.i32 q15, #0
    lsrs r6, r1, #1
    beq 2f
1:  // two quads: row 0's in d0, d1; row 1's in d2, d3; the weights in d8-d11, d12-d15
    vld1.32 {d0[]}, [r2]!
    vld1.32 {d1[]}, [r2]!
    vld1.32 {d2[]}, [r3]!
    vld1.32 {d3[]}, [r3]!
    vld1.8 {d8-d11}, [r4], r5
    vld1.8 {d12-d15}, [r4], r5
    qgemm_2x8_row_two_quads d0, d1, q8, q9, q10, q11
    qgemm_2x8_row_two_quads d2, d3, q12, q13, q14, q15
    subs r6, r6, #1
    bne 1b
2:
    tst r1, #1
    beq 3f
    // an odd last quad
    vld1.32 {d0[]}, [r2]
    vld1.32 {d2[]}, [r3]
    vld1.8 {d8-d11}, [r4]
    qgemm_2x8_row_one_quad d0, q8, q9, q10, q11
    qgemm_2x8_row_one_quad d2, q12, q13, q14, q15
3:  // column sums: row 0 in q8 (columns 0-3), q9 (4-7); row 1 in q10, q11
    vpadd.i32 d16, d16, d17
    vpadd.i32 d17, d18, d19
    vpadd.i32 d18, d20, d21
    vpadd.i32 d19, d22, d23
    vpadd.i32 d20, d24, d25
    vpadd.i32 d21, d26, d27
    vpadd.i32 d22, d28, d29
    vpadd.i32 d23, d30, d31
    vcvt.f32.s32 q8, q8
    vcvt.f32.s32 q9, q9
    vcvt.f32.s32 q10, q10
    vcvt.f32.s32 q11, q11
    ldr r6, [r0, #24]
    vld1.32 {d8-d11}, [r6]
    ldr r6, [r0, #28]
    vld1.32 {d12}, [r6]
    ldr r7, [r0, #16]
    ldr r8, [r0, #20]
    // c += acc * (scale * row_scale), the reference's order of rounding
    vmul.f32 q0, q4, d12[0]
    vmul.f32 q1, q5, d12[0]
    vld1.32 {d4-d7}, [r7]
    vmla.f32 q2, q8, q0
    vmla.f32 q3, q9, q1
    vst1.32 {d4-d7}, [r7], r8
    vmul.f32 q0, q4, d12[1]
    vmul.f32 q1, q5, d12[1]
    vld1.32 {d4-d7}, [r7]
    vmla.f32 q2, q10, q0
    vmla.f32 q3, q11, q1
    vst1.32 {d4-d7}, [r7]
    vpop {d8-d15}
    pop {r4-r8}
    bx lr
    .size edge_classify_qgemm_2x8_armv7, .-edge_classify_qgemm_2x8_armv7
