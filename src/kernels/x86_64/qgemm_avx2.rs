//! The int8 product on AVX2 without VNNI (`avx2`: Haswell to Alder Lake's big cores without
//! AVX-VNNI, Zen 1 to 3). AVX2 has no int8 dot product: `vpmaddubsw` multiplies 32 u8 x
//! i8 pairs into 16 i16 pair sums, `vpmaddwd` by ones widens them into 8 i32 sums of four,
//! `vpaddd` accumulates: three instructions for 32 multiply-adds, whatever the tile.
//! Activations are 0..127 so a pair sum cannot saturate (2 x 127 x 127 < 32767).
//!
//! The main tile is 3 rows x a whole 32-column panel in 12 of the 16 ymm registers, in
//! assembly, the weights as memory operands of `vpmaddubsw` (compiled from intrinsics,
//! they were loaded into registers first, which then did not hold a 32-column tile): per
//! k-quad one broadcast per row and 36 products, 39 instructions for 384 multiply-adds,
//! where the 4 x 16 tile with its weights in registers took 30 for 256. The last rows of
//! a product take tiles of 2 and 1 rows from intrinsics.

use std::arch::asm;
use std::arch::x86_64::*;

use super::tile::{first_lanes, TileFinish, FETCH_AHEAD_BYTES};
use crate::kernels::qgemm::{for_each_tile, quad_of, Kernel, Product, QMatMul, QTile};
use crate::kernels::qgemm::{PANEL, QUAD_BYTES};
use crate::kernels::{unrolled, Finish};

pub static AVX2: Kernel = Kernel {
    name: "avx2",
    max_activation: 127,
    // SAFETY: the table lists this kernel only where AVX2 and FMA are present.
    run: Product::Finishing(|p, c, finish| unsafe { run(p, c, finish) }),
};

/// Rows of the main tile.
const ROWS: usize = 3;

/// A tile's i32 sums: four vectors of eight columns a row.
type Sums<const MR: usize> = [[__m256i; 4]; MR];

#[target_feature(enable = "avx2,fma")]
unsafe fn run(p: &QMatMul, c: &mut [f32], finish: &Finish) {
    for_each_tile!(p, c, [ROWS, 2, 1], PANEL, |rows, t| {
        let finish = TileFinish::at(finish, t.ldc(), t.row, t.first);
        match rows {
            ROWS => {
                let sums = sums_3(&t);
                store(&sums, &mut t, &finish)
            }
            2 => store(&sums::<2>(&t), &mut t, &finish),
            _ => store(&sums::<1>(&t), &mut t, &finish),
        }
    });
}

/// One row's k-quad against the panel: the row's four bytes at `[$row + $a]` broadcast,
/// then the panel's four vectors of the quad at `[{b} + $b]` into the row's sums.
macro_rules! row_quad {
    ($row:literal, $a:literal, $b:literal, [$s0:literal, $s1:literal, $s2:literal, $s3:literal]) => {
        concat!(
            "vpbroadcastd ymm12, dword ptr [",
            $row,
            " + ",
            $a,
            "]\n",
            product!("ymm13", $b, 0, $s0),
            product!("ymm14", $b, 32, $s1),
            product!("ymm13", $b, 64, $s2),
            product!("ymm14", $b, 96, $s3),
        )
    };
}

/// `$sum += widen(maddubs(ymm12, [{b} + $b + $offset]))`, through the scratch `$t`; the
/// ones to widen by are in ymm15.
macro_rules! product {
    ($t:literal, $b:literal, $offset:literal, $sum:literal) => {
        concat!(
            "vpmaddubsw ",
            $t,
            ", ymm12, ymmword ptr [{b} + ",
            $b,
            " + ",
            $offset,
            "]\n",
            "vpmaddwd ",
            $t,
            ", ",
            $t,
            ", ymm15\n",
            "vpaddd ",
            $sum,
            ", ",
            $sum,
            ", ",
            $t,
            "\n",
        )
    };
}

/// One k-quad of the 3-row tile: `$a` bytes into the rows (`{p0}`, `{l}` apart), `$b`
/// into the panel, whose two lines of the quad [`FETCH_AHEAD_BYTES`] on are fetched into
/// L1 first (5 % faster than none, measured on the 4 x 16 tile before it).
macro_rules! quad_3 {
    ($a:literal, $b:literal) => {
        concat!(
            "prefetcht0 [{b} + ",
            $b,
            " + {ahead}]\n",
            "prefetcht0 [{b} + ",
            $b,
            " + {ahead} + 64]\n",
            row_quad!("{p0}", $a, $b, ["ymm0", "ymm1", "ymm2", "ymm3"]),
            row_quad!("{p0} + {l}", $a, $b, ["ymm4", "ymm5", "ymm6", "ymm7"]),
            row_quad!("{p0} + {l}*2", $a, $b, ["ymm8", "ymm9", "ymm10", "ymm11"]),
        )
    };
}

/// The sums of the tile's 3 rows: the whole k-quads in assembly, four a loop, then the
/// ragged last quad (k not a multiple of four) zero-padded from intrinsics.
///
/// # Safety
/// AVX2 is present; the tile has 3 rows.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn sums_3(t: &QTile) -> Sums<ROWS> {
    let k = t.k();
    let full_quads = k / 4;
    let mut s = [_mm256_setzero_si256(); 4 * ROWS];
    asm!(
        "vpxor xmm0, xmm0, xmm0",
        "vpxor xmm1, xmm1, xmm1",
        "vpxor xmm2, xmm2, xmm2",
        "vpxor xmm3, xmm3, xmm3",
        "vpxor xmm4, xmm4, xmm4",
        "vpxor xmm5, xmm5, xmm5",
        "vpxor xmm6, xmm6, xmm6",
        "vpxor xmm7, xmm7, xmm7",
        "vpxor xmm8, xmm8, xmm8",
        "vpxor xmm9, xmm9, xmm9",
        "vpxor xmm10, xmm10, xmm10",
        "vpxor xmm11, xmm11, xmm11",
        "mov {count}, {quads}",
        "shr {count}, 2",
        "jz 3f",
        "2:",
        quad_3!(0, 0),
        quad_3!(4, 128),
        quad_3!(8, 256),
        quad_3!(12, 384),
        "add {p0}, 16",
        "add {b}, 512",
        "dec {count}",
        "jnz 2b",
        "3:",
        "and {quads}, 3",
        "jz 5f",
        "4:",
        quad_3!(0, 0),
        "add {p0}, 4",
        "add {b}, 128",
        "dec {quads}",
        "jnz 4b",
        "5:",
        p0 = inout(reg) t.p.a[t.row * t.p.lda..].as_ptr() => _,
        l = in(reg) t.p.lda,
        b = inout(reg) t.b.as_ptr() => _,
        quads = inout(reg) full_quads => _,
        count = out(reg) _,
        ahead = const FETCH_AHEAD_BYTES,
        in("ymm15") _mm256_set1_epi16(1),
        out("ymm0") s[0], out("ymm1") s[1], out("ymm2") s[2], out("ymm3") s[3],
        out("ymm4") s[4], out("ymm5") s[5], out("ymm6") s[6], out("ymm7") s[7],
        out("ymm8") s[8], out("ymm9") s[9], out("ymm10") s[10], out("ymm11") s[11],
        out("ymm12") _, out("ymm13") _, out("ymm14") _,
        options(nostack, readonly),
    );
    let mut sums: Sums<ROWS> = unrolled(|r| unrolled(|j| s[4 * r + j]));
    if !k.is_multiple_of(4) {
        let rows: [&[u8]; ROWS] = t.rows();
        let quads = unrolled(|r| quad_of(rows[r], full_quads));
        quad_step(&mut sums, t.b.as_ptr().add(full_quads * QUAD_BYTES), quads);
    }
    sums
}

/// The sums of `MR` rows from intrinsics (the last rows of a product).
///
/// # Safety
/// AVX2 is present; the tile has `MR` rows.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn sums<const MR: usize>(t: &QTile) -> Sums<MR> {
    let rows: [&[u8]; MR] = t.rows();
    let mut sums = [[_mm256_setzero_si256(); 4]; MR];
    let bp = t.b.as_ptr();
    let full_quads = t.k() / 4;
    for q in 0..full_quads {
        let quads = unrolled(|r| (rows[r].as_ptr().add(q * 4) as *const i32).read_unaligned());
        quad_step(&mut sums, bp.add(q * QUAD_BYTES), quads);
    }
    if !t.k().is_multiple_of(4) {
        let quads = unrolled(|r| quad_of(rows[r], full_quads));
        quad_step(&mut sums, bp.add(full_quads * QUAD_BYTES), quads);
    }
    sums
}

/// One k-quad of the panel at `b` for `MR` rows, each row's quad given as an i32.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn quad_step<const MR: usize>(sums: &mut Sums<MR>, b: *const i8, quads: [i32; MR]) {
    let ones = _mm256_set1_epi16(1);
    let b: [__m256i; 4] = unrolled(|j| _mm256_loadu_si256(b.add(32 * j) as *const __m256i));
    for (sums, quad) in sums.iter_mut().zip(quads) {
        let a = _mm256_set1_epi32(quad);
        for (sum, b) in sums.iter_mut().zip(b) {
            let pairs = _mm256_maddubs_epi16(a, b);
            *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, ones));
        }
    }
}

/// Finishes a tile's sums into its output: each sum times its column's and its row's
/// scale in one `fma` onto the start (the same rounding as the VNNI store).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store<const MR: usize>(sums: &Sums<MR>, t: &mut QTile, finish: &TileFinish) {
    let (cols, ldc, c) = (t.cols, t.ldc(), t.c.as_mut_ptr());
    let scale = t.scale();
    for (r, row) in sums.iter().enumerate() {
        let row_scale = _mm256_set1_ps(t.row_scale(r));
        for (i, &sum) in row.iter().enumerate() {
            let first = i * 8;
            if first >= cols {
                break;
            }
            let s = _mm256_mul_ps(load8(scale.as_ptr().add(first), cols - first), row_scale);
            let add = |start| _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), s, start);
            finish.store8(add, c, r, ldc, first, cols);
        }
    }
}

/// Eight values from `at`, those past the first `lanes` zero (not read).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load8(at: *const f32, lanes: usize) -> __m256 {
    if lanes >= 8 {
        return _mm256_loadu_ps(at);
    }
    _mm256_maskload_ps(at, first_lanes(lanes))
}
