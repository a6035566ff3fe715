//! The int8 product on AVX-512 VNNI (`avx512vnni`: `vpdpbusd`, 64 multiply-adds per
//! instruction, activations 0..255), and the store the x86 int8 tiles share: the bias,
//! the shortcut and the ReLU in the same pass as the dequantizing `fma`. The AVX2 tile is
//! `qgemm_avx2.rs`, the AMX one `amx.rs`.

use std::arch::x86_64::*;

use super::tile::{fetch_ahead, TileFinish};
use crate::kernels::qgemm::{
    for_each_tile, quad_of, Kernel, Product, QMatMul, QTile, PANEL, QUAD_BYTES,
};
use crate::kernels::Finish;

pub static AVX512_VNNI: Kernel = Kernel {
    name: "avx512vnni",
    max_activation: 255,
    run: Product::Finishing(|p, c, finish| unsafe { run_vnni(p, c, finish) }),
};

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn run_vnni(p: &QMatMul, c: &mut [f32], finish: &Finish) {
    for_each_tile!(p, c, [12, 4, 1], PANEL, |rows, t| {
        let finish = TileFinish::at(finish, t.ldc(), t.row, t.first);
        match rows {
            12 => vnni_tile::<12>(t, finish),
            4 => vnni_tile::<4>(t, finish),
            _ => vnni_tile::<1>(t, finish),
        }
    });
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_tile<const MR: usize>(t: QTile, finish: TileFinish) {
    let (k, ldc) = (t.k(), t.ldc());
    let rows: [&[u8]; MR] = t.rows();
    finish.prefetch(t.c.as_ptr(), MR, ldc);
    let mut acc = [[_mm512_setzero_si512(); 2]; MR];
    let full_quads = k / 4;
    let bp = t.b.as_ptr();
    // Whole quads straight from the rows, then the ragged last quad zero-padded.
    for q in 0..full_quads {
        fetch_ahead(bp.add(q * QUAD_BYTES) as *const u8, 2);
        let b0 = _mm512_loadu_si512(bp.add(q * QUAD_BYTES) as *const _);
        let b1 = _mm512_loadu_si512(bp.add(q * QUAD_BYTES + 64) as *const _);
        for r in 0..MR {
            let quad = (rows[r].as_ptr().add(q * 4) as *const i32).read_unaligned();
            let a = _mm512_set1_epi32(quad);
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a, b0);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a, b1);
        }
    }
    if !k.is_multiple_of(4) {
        let q = full_quads;
        let b0 = _mm512_loadu_si512(bp.add(q * QUAD_BYTES) as *const _);
        let b1 = _mm512_loadu_si512(bp.add(q * QUAD_BYTES + 64) as *const _);
        for r in 0..MR {
            let a = _mm512_set1_epi32(quad_of(rows[r], q));
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a, b0);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a, b1);
        }
    }
    let scale = t.scale();
    for (r, sums) in acc.iter().enumerate() {
        store_row(*sums, t.row_scale(r), scale, t.cols, &finish, t.c, r, ldc);
    }
}

/// Scales the i32 sums of a tile's row `r` (two halves of 16 columns, `cols` of them
/// real) by `scale[col] * row_scale` and finishes them into `c` (rows `ldc` apart).
/// The scale and the sum meet in one `fma`: a `mul` and an `add` instead rounded
/// twice and lost 0.2 points of ImageNet-sample agreement with f32.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn store_row(
    sums: [__m512i; 2],
    row_scale: f32,
    scale: &[f32],
    cols: usize,
    finish: &TileFinish,
    c: &mut [f32],
    r: usize,
    ldc: usize,
) {
    for (half, sums) in sums.iter().enumerate() {
        let first = half * 16;
        if first >= cols {
            break;
        }
        let mask = TileFinish::lanes(first, cols);
        let s = _mm512_mul_ps(
            _mm512_maskz_loadu_ps(mask, scale.as_ptr().add(first)),
            _mm512_set1_ps(row_scale),
        );
        let add = |start| _mm512_fmadd_ps(_mm512_cvtepi32_ps(*sums), s, start);
        finish.store16(add, c.as_mut_ptr(), r, ldc, first, mask);
    }
}
