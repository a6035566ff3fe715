//! The AVX-512 register tile of the f32 panel driver (`avx512`): 14 rows x 32 columns, 28
//! accumulators, one broadcast a row and two loads a k, in assembly; shorter tiles for a
//! product's last rows from intrinsics.

use std::arch::asm;
use std::arch::x86_64::*;

use super::f32::{for_each_kept, segment_loops, PanelTile, Segment, Tile};
use super::tile::{TileFinish, FETCH_AHEAD_BYTES};
use crate::kernels::f32_weights::TILE_ROWS as ROWS;
use crate::kernels::unrolled;

/// The 14 x 32 tile.
pub(super) struct Avx512;

impl PanelTile for Avx512 {
    const ROWS: usize = ROWS;
    const FETCH_LINES: usize = 4;

    #[inline(always)]
    unsafe fn run(rows: usize, t: &Tile) {
        if rows == ROWS {
            t.finish.prefetch(t.c, ROWS, t.ldc);
            let sums = sums_14(t.segments, t.lda, t.b, t.fetch);
            return store(&sums, t.c, t.ldc, t.cols, &t.finish);
        }
        macro_rules! rest_tile {
            ($($rows:literal)*) => {
                match rows {
                    $($rows => tile::<$rows>(t),)*
                    _ => unreachable!("fewer than {ROWS} rows left"),
                }
            };
        }
        rest_tile!(1 2 3 4 5 6 7 8 9 10 11 12 13);
    }
}

type Sums<const MR: usize> = [[__m512; 2]; MR];

/// `MR` rows (`lda` apart, read segment by segment) times one panel `b` (32 values a
/// k), finished into `c` (rows `ldc` apart, `cols` of them kept).
///
/// # Safety
/// AVX-512F is present; as [`PanelTile::run`], with `MR` rows.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tile<const MR: usize>(t: &Tile) {
    t.finish.prefetch(t.c, MR, t.ldc);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    t.for_each_k(|a, bp| {
        let b0 = _mm512_loadu_ps(bp);
        let b1 = _mm512_loadu_ps(bp.add(16));
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*a.add(r * t.lda));
            acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
        }
    });
    store(&acc, t.c, t.ldc, t.cols, &t.finish);
}

/// One row's step: its value at the current k broadcast into `zmm{tmp}`, times the
/// panel's two registers (`zmm28`, `zmm29`), added to `zmm{acc}` and the next one.
/// The row lies at `{base}` plus `index` (`{l}` is a row's length in bytes).
macro_rules! row_step {
    ($base:literal $index:literal, $a:literal, $acc0:literal, $acc1:literal, $tmp:literal) => {
        concat!(
            "vbroadcastss zmm",
            $tmp,
            ", dword ptr [{",
            $base,
            "}",
            $index,
            " + ",
            $a,
            "]\n",
            "vfmadd231ps zmm",
            $acc0,
            ", zmm28, zmm",
            $tmp,
            "\n",
            "vfmadd231ps zmm",
            $acc1,
            ", zmm29, zmm",
            $tmp,
            "\n",
        )
    };
}

/// One k of the 14 x 32 tile: `$a` bytes into the rows, `$b` into the panel.
macro_rules! step_14 {
    ($a:literal, $b:literal) => {
        concat!(
            "vmovups zmm28, [{b} + ", $b, "]\n",
            "vmovups zmm29, [{b} + ", $b, " + 64]\n",
            "prefetcht0 [{b} + {ahead} + ", $b, "]\n",
            "prefetcht0 [{b} + {ahead} + ", $b, " + 64]\n",
            row_step!("p0" "", $a, 0, 1, 30),
            row_step!("p0" " + {l}", $a, 2, 3, 31),
            row_step!("p0" " + {l}*2", $a, 4, 5, 30),
            row_step!("p3" "", $a, 6, 7, 31),
            row_step!("p3" " + {l}", $a, 8, 9, 30),
            row_step!("p3" " + {l}*2", $a, 10, 11, 31),
            row_step!("p6" "", $a, 12, 13, 30),
            row_step!("p6" " + {l}", $a, 14, 15, 31),
            row_step!("p6" " + {l}*2", $a, 16, 17, 30),
            row_step!("p9" "", $a, 18, 19, 31),
            row_step!("p9" " + {l}", $a, 20, 21, 30),
            row_step!("p9" " + {l}*2", $a, 22, 23, 31),
            row_step!("p12" "", $a, 24, 25, 30),
            row_step!("p12" " + {l}", $a, 26, 27, 31),
        )
    };
}

/// The sums of 14 rows (`lda` apart) times one panel `b` (`k x 32`), the rows' k
/// read segment by segment. Assembly, because compiled from the loop of [`tile`] each
/// row's address took an `add` (the compiler walks the 14 rows with one register),
/// which competes with the `fma`s for their ports: here five row pointers and a row
/// length address all 14 rows, and four k run per loop.
///
/// # Safety
/// AVX-512F is present; `segments` (at least one) hold 14 rows each, `lda` apart, of
/// as many values as they say; `b` a panel of 32 values a k for all of them.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn sums_14(
    segments: &[Segment],
    lda: usize,
    b: *const f32,
    (fetch_at, fetch_step): (*const u8, usize),
) -> Sums<ROWS> {
    assert!(!segments.is_empty());
    let mut s = [_mm512_setzero_ps(); 2 * ROWS];
    asm!(
        "vpxord zmm0, zmm0, zmm0", "vpxord zmm1, zmm1, zmm1", "vpxord zmm2, zmm2, zmm2",
        "vpxord zmm3, zmm3, zmm3", "vpxord zmm4, zmm4, zmm4", "vpxord zmm5, zmm5, zmm5",
        "vpxord zmm6, zmm6, zmm6", "vpxord zmm7, zmm7, zmm7", "vpxord zmm8, zmm8, zmm8",
        "vpxord zmm9, zmm9, zmm9", "vpxord zmm10, zmm10, zmm10", "vpxord zmm11, zmm11, zmm11",
        "vpxord zmm12, zmm12, zmm12", "vpxord zmm13, zmm13, zmm13", "vpxord zmm14, zmm14, zmm14",
        "vpxord zmm15, zmm15, zmm15", "vpxord zmm16, zmm16, zmm16", "vpxord zmm17, zmm17, zmm17",
        "vpxord zmm18, zmm18, zmm18", "vpxord zmm19, zmm19, zmm19", "vpxord zmm20, zmm20, zmm20",
        "vpxord zmm21, zmm21, zmm21", "vpxord zmm22, zmm22, zmm22", "vpxord zmm23, zmm23, zmm23",
        "vpxord zmm24, zmm24, zmm24", "vpxord zmm25, zmm25, zmm25", "vpxord zmm26, zmm26, zmm26",
        "vpxord zmm27, zmm27, zmm27",
        // Each segment: its rows 0, 3, 6, 9 and 12, then its quads of k, then the rest.
        segment_loops!(
            rows: [
                "lea {p3}, [{p0} + {l}*2]", "add {p3}, {l}",
                "lea {p6}, [{p3} + {l}*2]", "add {p6}, {l}",
                "lea {p9}, [{p6} + {l}*2]", "add {p9}, {l}",
                "lea {p12}, [{p9} + {l}*2]", "add {p12}, {l}"
            ],
            quad: [step_14!(0, 0), step_14!(4, 128), step_14!(8, 256), step_14!(12, 384)],
            fetch: [
                "prefetcht1 [{pf}]", "prefetcht1 [{pf} + 64]",
                "prefetcht1 [{pf} + 128]", "prefetcht1 [{pf} + 192]"
            ],
            next_quad: ["add {p0}, 16", "add {p3}, 16", "add {p6}, 16", "add {p9}, 16", "add {p12}, 16"],
            one: [step_14!(0, 0)],
            next_one: ["add {p0}, 4", "add {p3}, 4", "add {p6}, 4", "add {p9}, 4", "add {p12}, 4"],
        ),
        p0 = out(reg) _,
        p3 = out(reg) _,
        p6 = out(reg) _,
        p9 = out(reg) _,
        p12 = out(reg) _,
        l = in(reg) lda * 4,
        b = inout(reg) b => _,
        count = out(reg) _,
        segment = inout(reg) segments.as_ptr() => _,
        segments = inout(reg) segments.len() => _,
        ahead = const FETCH_AHEAD_BYTES,
        pf = inout(reg) fetch_at => _,
        pf_step = in(reg) fetch_step,
        out("zmm0") s[0], out("zmm1") s[1], out("zmm2") s[2], out("zmm3") s[3],
        out("zmm4") s[4], out("zmm5") s[5], out("zmm6") s[6], out("zmm7") s[7],
        out("zmm8") s[8], out("zmm9") s[9], out("zmm10") s[10], out("zmm11") s[11],
        out("zmm12") s[12], out("zmm13") s[13], out("zmm14") s[14], out("zmm15") s[15],
        out("zmm16") s[16], out("zmm17") s[17], out("zmm18") s[18], out("zmm19") s[19],
        out("zmm20") s[20], out("zmm21") s[21], out("zmm22") s[22], out("zmm23") s[23],
        out("zmm24") s[24], out("zmm25") s[25], out("zmm26") s[26], out("zmm27") s[27],
        out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
        options(nostack, readonly),
    );
    unrolled(|r| [s[2 * r], s[2 * r + 1]])
}

/// Finishes a tile's sums into `c` (rows `ldc` apart, `cols` of them kept).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn store<const MR: usize>(
    acc: &Sums<MR>,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    finish: &TileFinish,
) {
    for_each_kept!(acc, 16, cols, |sums, r, first| {
        let add = |start| _mm512_add_ps(sums, start);
        finish.store16(add, c, r, ldc, first, TileFinish::lanes(first, cols))
    });
}
