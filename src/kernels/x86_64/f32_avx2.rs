//! The AVX2 + FMA register tile of the f32 panel driver (`avx2`), for x86 CPUs without
//! AVX-512 (Haswell to Alder Lake, Zen 1 to 3): 3 rows x 32 columns in 12 of the 16 ymm
//! registers, in assembly. Each k broadcasts the 3 rows' values and multiplies them by the
//! panel's four vectors read straight from memory by the `vfmadd231ps` (AVX2 has no
//! broadcast operand, but a memory one): 15 instructions for 96 multiply-adds, where a
//! 6 x 16 tile with its weights in registers (the common choice) takes 20 and the same
//! with folded weights 18. Shorter tiles for a product's last rows from intrinsics.

use std::arch::asm;
use std::arch::x86_64::*;

use super::f32::{for_each_kept, segment_loops, PanelTile, Segment, Tile};
use crate::kernels::unrolled;

/// Rows of the main tile.
const ROWS: usize = 3;

/// The 3 x 32 tile.
pub(super) struct Avx2;

impl PanelTile for Avx2 {
    const ROWS: usize = ROWS;
    const FETCH_LINES: usize = 2;

    #[inline(always)]
    unsafe fn run(rows: usize, t: &Tile) {
        match rows {
            ROWS => {
                let sums = sums_3(t);
                store(&sums, t)
            }
            1 => tile::<1>(t),
            2 => tile::<2>(t),
            _ => unreachable!("at most {ROWS} rows a tile"),
        }
    }
}

/// A tile's sums: four 8-lane vectors a row.
type Sums<const MR: usize> = [[__m256; 4]; MR];

/// `MR` rows times the panel, from intrinsics (the last rows of a product).
///
/// # Safety
/// AVX2 and FMA are present; as [`PanelTile::run`], with `MR` rows.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const MR: usize>(t: &Tile) {
    let mut acc = [[_mm256_setzero_ps(); 4]; MR];
    t.for_each_k(|a, bp| {
        let b: [__m256; 4] = unrolled(|j| _mm256_loadu_ps(bp.add(8 * j)));
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*a.add(r * t.lda));
            for (acc, b) in acc.iter_mut().zip(b) {
                *acc = _mm256_fmadd_ps(x, b, *acc);
            }
        }
    });
    store(&acc, t);
}

/// One k of the 3 x 32 tile: `$a` bytes into the rows, `$b` into the panel. Rows 0, 1
/// and 2 broadcast into ymm12-14, their sums in ymm0-3, ymm4-7 and ymm8-11.
macro_rules! step_3 {
    ($a:literal, $b:literal) => {
        concat!(
            "vbroadcastss ymm12, dword ptr [{p0} + ",
            $a,
            "]\n",
            "vbroadcastss ymm13, dword ptr [{p0} + {l} + ",
            $a,
            "]\n",
            "vbroadcastss ymm14, dword ptr [{p0} + {l}*2 + ",
            $a,
            "]\n",
            "vfmadd231ps ymm0, ymm12, ymmword ptr [{b} + ",
            $b,
            "]\n",
            "vfmadd231ps ymm1, ymm12, ymmword ptr [{b} + ",
            $b,
            " + 32]\n",
            "vfmadd231ps ymm2, ymm12, ymmword ptr [{b} + ",
            $b,
            " + 64]\n",
            "vfmadd231ps ymm3, ymm12, ymmword ptr [{b} + ",
            $b,
            " + 96]\n",
            "vfmadd231ps ymm4, ymm13, ymmword ptr [{b} + ",
            $b,
            "]\n",
            "vfmadd231ps ymm5, ymm13, ymmword ptr [{b} + ",
            $b,
            " + 32]\n",
            "vfmadd231ps ymm6, ymm13, ymmword ptr [{b} + ",
            $b,
            " + 64]\n",
            "vfmadd231ps ymm7, ymm13, ymmword ptr [{b} + ",
            $b,
            " + 96]\n",
            "vfmadd231ps ymm8, ymm14, ymmword ptr [{b} + ",
            $b,
            "]\n",
            "vfmadd231ps ymm9, ymm14, ymmword ptr [{b} + ",
            $b,
            " + 32]\n",
            "vfmadd231ps ymm10, ymm14, ymmword ptr [{b} + ",
            $b,
            " + 64]\n",
            "vfmadd231ps ymm11, ymm14, ymmword ptr [{b} + ",
            $b,
            " + 96]\n",
        )
    };
}

/// The sums of 3 rows (`lda` apart) times one panel `b` (`k x 32`), the rows' k read
/// segment by segment, four k per loop. Assembly, so that the weights stay memory
/// operands of the `vfmadd231ps` (compiled from intrinsics, they were loaded into
/// registers first: four more instructions a k).
///
/// # Safety
/// AVX2 and FMA are present; as [`PanelTile::run`], with 3 rows and at least one segment.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn sums_3(t: &Tile) -> Sums<ROWS> {
    let segments: &[Segment] = t.segments;
    assert!(!segments.is_empty());
    let mut s = [_mm256_setzero_ps(); 4 * ROWS];
    asm!(
        // The sums start at zero: every ymm register at once.
        "vzeroall",
        segment_loops!(
            rows: [],
            quad: [step_3!(0, 0), step_3!(4, 128), step_3!(8, 256), step_3!(12, 384)],
            fetch: ["prefetcht1 [{pf}]", "prefetcht1 [{pf} + 64]"],
            next_quad: ["add {p0}, 16"],
            one: [step_3!(0, 0)],
            next_one: ["add {p0}, 4"],
        ),
        p0 = out(reg) _,
        l = in(reg) t.lda * 4,
        b = inout(reg) t.b => _,
        count = out(reg) _,
        segment = inout(reg) segments.as_ptr() => _,
        segments = inout(reg) segments.len() => _,
        pf = inout(reg) t.fetch.0 => _,
        pf_step = in(reg) t.fetch.1,
        out("ymm0") s[0], out("ymm1") s[1], out("ymm2") s[2], out("ymm3") s[3],
        out("ymm4") s[4], out("ymm5") s[5], out("ymm6") s[6], out("ymm7") s[7],
        out("ymm8") s[8], out("ymm9") s[9], out("ymm10") s[10], out("ymm11") s[11],
        out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
        options(nostack, readonly),
    );
    unrolled(|r| [s[4 * r], s[4 * r + 1], s[4 * r + 2], s[4 * r + 3]])
}

/// Finishes a tile's sums into its output (the columns kept).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store<const MR: usize>(acc: &Sums<MR>, t: &Tile) {
    for_each_kept!(acc, 8, t.cols, |sums, r, first| {
        let add = |start| _mm256_add_ps(sums, start);
        t.finish.store8(add, t.c, r, t.ldc, first, t.cols)
    });
}
