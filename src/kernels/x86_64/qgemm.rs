//! The int8 products on x86 without AMX: `avx2` (`vpmaddubsw` + `vpmaddwd`; activations
//! limited to 0..127 so the pairwise i16 sums cannot saturate, 2 x 127 x 127 < 32767) and
//! `avx512vnni` (`vpdpbusd`, 64 multiply-adds per instruction, full 0..255). Both add the
//! bias, the shortcut and the ReLU in their stores.

use std::arch::x86_64::*;

use super::tile::{fetch_ahead, TileFinish};
use crate::kernels::qgemm::{quad_of, Kernel, Product, QMatMul, PANEL, QUAD_BYTES};
use crate::kernels::Finish;

pub static AVX2: Kernel = Kernel {
    name: "avx2",
    max_activation: 127,
    run: Product::Finishing(|p, c, finish| unsafe { run_avx2(p, c, finish) }),
};

pub static AVX512_VNNI: Kernel = Kernel {
    name: "avx512vnni",
    max_activation: 255,
    run: Product::Finishing(|p, c, finish| unsafe { run_vnni(p, c, finish) }),
};

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn run_vnni(p: &QMatMul, c: &mut [f32], finish: &Finish) {
    let (k, n) = (p.b.k, p.b.n);
    for panels in p.b.panel_blocks() {
        for_row_tiles!(p.m, 12, |row, TILE| for panel in panels.clone() {
            let col = panel * PANEL;
            vnni_tile::<TILE>(
                p,
                row,
                k,
                p.b.panel(panel),
                &mut c[row * n + col..],
                n,
                &p.scale[col..],
                (n - col).min(PANEL),
                TileFinish::at(finish, n, row, col),
            )
        });
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn vnni_tile<const MR: usize>(
    p: &QMatMul,
    row: usize,
    k: usize,
    b: &[i8],
    c: &mut [f32],
    ldc: usize,
    scale: &[f32],
    cols: usize,
    finish: TileFinish,
) {
    let rows: [&[u8]; MR] = crate::kernels::unrolled(|r| &p.a[(row + r) * p.lda..][..k]);
    finish.prefetch(c.as_ptr(), MR, ldc);
    let mut acc = [[_mm512_setzero_si512(); 2]; MR];
    let full_quads = k / 4;
    let bp = b.as_ptr();
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
    for (r, sums) in acc.iter().enumerate() {
        store_row(*sums, p.row_scale[row + r], scale, cols, &finish, c, r, ldc);
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

#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(p: &QMatMul, c: &mut [f32], finish: &Finish) {
    let (k, n) = (p.b.k, p.b.n);
    for panels in p.b.panel_blocks() {
        for_row_tiles!(p.m, 4, |row, TILE| for panel in panels.clone() {
            for half in 0..2 {
                let first = panel * PANEL + half * 16;
                if first >= n {
                    break;
                }
                avx2_tile::<TILE>(
                    p,
                    row,
                    k,
                    &p.b.panel(panel)[half * 64..],
                    &mut c[row * n + first..],
                    n,
                    &p.scale[first..],
                    (n - first).min(16),
                    TileFinish::at(finish, n, row, first),
                )
            }
        });
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx2_tile<const MR: usize>(
    p: &QMatMul,
    row: usize,
    k: usize,
    b: &[i8],
    c: &mut [f32],
    ldc: usize,
    scale: &[f32],
    cols: usize,
    finish: TileFinish,
) {
    let rows: [&[u8]; MR] = crate::kernels::unrolled(|r| &p.a[(row + r) * p.lda..][..k]);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; MR];
    let full_quads = k / 4;
    let bp = b.as_ptr();
    let quad_step = |acc: &mut [[__m256i; 2]; MR], q: usize, quads: [i32; MR]| {
        // This tile reads one half of each quad: one line.
        fetch_ahead(bp.add(q * QUAD_BYTES) as *const u8, 1);
        let b0 = _mm256_loadu_si256(bp.add(q * QUAD_BYTES) as *const __m256i);
        let b1 = _mm256_loadu_si256(bp.add(q * QUAD_BYTES + 32) as *const __m256i);
        for r in 0..MR {
            let a = _mm256_set1_epi32(quads[r]);
            let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(a, b0), ones);
            let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(a, b1), ones);
            acc[r][0] = _mm256_add_epi32(acc[r][0], p0);
            acc[r][1] = _mm256_add_epi32(acc[r][1], p1);
        }
    };
    for q in 0..full_quads {
        let quads = crate::kernels::unrolled(|r| {
            (rows[r].as_ptr().add(q * 4) as *const i32).read_unaligned()
        });
        quad_step(&mut acc, q, quads);
    }
    if !k.is_multiple_of(4) {
        quad_step(
            &mut acc,
            full_quads,
            crate::kernels::unrolled(|r| quad_of(rows[r], full_quads)),
        );
    }
    for (r, acc) in acc.iter().enumerate() {
        let out = &mut c[r * ldc..];
        if cols == 16 {
            for (half, acc) in acc.iter().enumerate() {
                let s = _mm256_mul_ps(
                    _mm256_loadu_ps(scale.as_ptr().add(half * 8)),
                    _mm256_set1_ps(p.row_scale[row + r]),
                );
                let o = out.as_mut_ptr().add(half * 8);
                let start = match (finish.bias, finish.shortcut) {
                    (None, _) => _mm256_loadu_ps(o),
                    (Some(bias), None) => _mm256_loadu_ps(bias.as_ptr().add(half * 8)),
                    (Some(bias), Some(shortcut)) => _mm256_add_ps(
                        _mm256_loadu_ps(bias.as_ptr().add(half * 8)),
                        _mm256_loadu_ps(shortcut.as_ptr().add(r * ldc + half * 8)),
                    ),
                };
                let mut new = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*acc), s, start);
                if finish.relu {
                    // `max(0, x)` keeps a NaN, as the portable ReLU does.
                    new = _mm256_max_ps(_mm256_setzero_ps(), new);
                }
                _mm256_storeu_ps(o, new);
            }
        } else {
            let mut lanes = [0i32; 16];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc[0]);
            _mm256_storeu_si256(lanes.as_mut_ptr().add(8) as *mut __m256i, acc[1]);
            for col in 0..cols {
                let s = scale[col] * p.row_scale[row + r];
                let start = finish.start_value(r, ldc, col).unwrap_or(out[col]);
                out[col] = finish.finish_value((lanes[col] as f32).mul_add(s, start));
            }
        }
    }
}
