//! The int8 products on aarch64: `neon` (every aarch64 CPU: Pi 3, Pi 4; `smull` +
//! `sadalp`), `neon-dotprod` (Armv8.2 `sdot`: Pi 5's Cortex-A76) and `neon-i8mm` (Armv8.6
//! `smmla`: Neoverse V1/N2, Graviton 3/4). Activations 0..127 on all three, so they
//! multiply as i8 and every NEON kernel gives the same sums. The main tiles of `neon`
//! and `neon-dotprod` are assembly (from intrinsics their accumulators were spilled to
//! the stack every step); the edge tiles and `smmla` are intrinsics.

use std::arch::aarch64::*;

use crate::kernels::qgemm::{for_each_tile, quad_of, Kernel, Product, QMatMul, QTile, QUAD_BYTES};

pub static NEON: Kernel = Kernel {
    name: "neon",
    max_activation: 127,
    // SAFETY: Advanced SIMD is mandatory on aarch64.
    run: Product::Accumulating(|p, c| unsafe { run::<WIDENING>(p, c) }),
};

pub static NEON_DOTPROD: Kernel = Kernel {
    name: "neon-dotprod",
    max_activation: 127,
    // SAFETY: listed by `available` only when the CPU reports the dot product.
    run: Product::Accumulating(|p, c| unsafe { run_dotprod(p, c) }),
};

/// Columns per tile: a panel's 32 columns in four groups of eight (32 bytes a quad).
const GROUP: usize = 8;

pub static NEON_I8MM: Kernel = Kernel {
    name: "neon-i8mm",
    max_activation: 127,
    // SAFETY: listed by `available` only when the CPU reports the int8 matrix multiply.
    run: Product::Accumulating(|p, c| unsafe { run_i8mm(p, c) }),
};

/// The three ways through a tile: `smull` + `sadalp`, `sdot`, `smmla`.
const WIDENING: u8 = 0;
const DOTPROD: u8 = 1;
const MATMUL: u8 = 2;

#[target_feature(enable = "dotprod")]
unsafe fn run_dotprod(p: &QMatMul, c: &mut [f32]) {
    run::<DOTPROD>(p, c)
}

#[target_feature(enable = "i8mm")]
unsafe fn run_i8mm(p: &QMatMul, c: &mut [f32]) {
    run::<MATMUL>(p, c)
}

#[inline(always)]
unsafe fn run<const KIND: u8>(p: &QMatMul, c: &mut [f32]) {
    // `sdot` and `smmla` need two accumulators per row, the widening path four.
    let sizes: &[usize] = if KIND == WIDENING {
        &[4, 1]
    } else {
        &[8, 4, 1]
    };
    for_each_tile!(p, c, *sizes, GROUP, |rows, t| match (KIND, rows) {
        (MATMUL, 8) => matmul_tile::<8>(&mut t),
        (MATMUL, 4) => matmul_tile::<4>(&mut t),
        (MATMUL, _) => matmul_tile::<1>(&mut t),
        (DOTPROD, 8) => dotprod_tile_8(&mut t),
        (DOTPROD, 4) => tile::<4, true>(&mut t),
        (DOTPROD, _) => tile::<1, true>(&mut t),
        (_, 4) => widening_tile_4(&mut t),
        _ => tile::<1, false>(&mut t),
    });
}

/// An accumulating int8 instruction stable Rust has no intrinsic for, as a function
/// `acc += op(a, b)` on whole registers.
macro_rules! accumulating {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[inline(always)]
        unsafe fn $name(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
            let mut acc = acc;
            std::arch::asm!(
                concat!(stringify!($name), " {acc:v}.4s, {a:v}.16b, {b:v}.16b"),
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
            acc
        }
    };
}

accumulating!(
    /// `acc += dot(a's four bytes, each column's four bytes)`, four columns per lane.
    sdot
);
accumulating!(
    /// `acc += a * bᵀ` with `a` two rows and `b` two columns of eight k each: the 2 x 2
    /// block of sums `[r0c0, r0c1, r1c0, r1c1]`.
    smmla
);

/// [`sdot`] with the four activation bytes taken from lane `LANE` of `a`, so four
/// k-quads of a row come from one load.
#[inline(always)]
unsafe fn sdot_lane<const LANE: i32>(acc: int32x4_t, b: int8x16_t, a: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    std::arch::asm!(
        "sdot {acc:v}.4s, {b:v}.16b, {a:v}.4b[{lane}]",
        acc = inout(vreg) acc,
        b = in(vreg) b,
        a = in(vreg) a,
        lane = const LANE,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// One k-quad of eight columns (`b`) for `MR` rows, each row's quad given as an i32.
#[inline(always)]
unsafe fn quad_step<const MR: usize, const DOT: bool>(
    acc: &mut [[int32x4_t; 4]; MR],
    b: *const i8,
    quads: [i32; MR],
) {
    let (b0, b1) = (vld1q_s8(b), vld1q_s8(b.add(16)));
    for r in 0..MR {
        let a = vreinterpretq_s8_s32(vdupq_n_s32(quads[r]));
        if DOT {
            acc[r][0] = sdot(acc[r][0], a, b0);
            acc[r][1] = sdot(acc[r][1], a, b1);
        } else {
            widening_step(&mut acc[r], a, b0, b1);
        }
    }
}

/// `smull` + `sadalp` for one row: `a` holds the row's quad in every lane.
#[inline(always)]
unsafe fn widening_step(acc: &mut [int32x4_t; 4], a: int8x16_t, b0: int8x16_t, b1: int8x16_t) {
    let a_low = vget_low_s8(a);
    acc[0] = vpadalq_s16(acc[0], vmull_s8(a_low, vget_low_s8(b0)));
    acc[1] = vpadalq_s16(acc[1], vmull_high_s8(a, b0));
    acc[2] = vpadalq_s16(acc[2], vmull_s8(a_low, vget_low_s8(b1)));
    acc[3] = vpadalq_s16(acc[3], vmull_high_s8(a, b1));
}

/// One tile: `MR` rows x eight columns. Without `DOT`, each accumulator lane holds
/// half a column's sum (`smull` then `sadalp` add products in pairs) and the halves
/// are added at the end; with it, `sdot` gives whole column sums. Activations are
/// 0..=127, so as i8 they keep their value.
#[inline(always)]
unsafe fn tile<const MR: usize, const DOT: bool>(t: &mut QTile) {
    let (k, rows): (usize, [&[u8]; MR]) = (t.k(), t.rows());
    let mut acc = [[vdupq_n_s32(0); 4]; MR];
    let bp = t.b.as_ptr();
    let full_quads = k / 4;
    // Four quads at a time: one 16-byte load per row, its lanes used in turn.
    let mut q = 0;
    while q + 4 <= full_quads {
        let a: [int8x16_t; MR] =
            crate::kernels::unrolled(|r| vld1q_s8(rows[r].as_ptr().add(q * 4) as *const i8));
        macro_rules! lane {
            ($lane:literal) => {{
                let at = bp.add((q + $lane) * QUAD_BYTES);
                let (b0, b1) = (vld1q_s8(at), vld1q_s8(at.add(16)));
                for r in 0..MR {
                    if DOT {
                        acc[r][0] = sdot_lane::<$lane>(acc[r][0], b0, a[r]);
                        acc[r][1] = sdot_lane::<$lane>(acc[r][1], b1, a[r]);
                    } else {
                        let quad = vdupq_laneq_s32::<$lane>(vreinterpretq_s32_s8(a[r]));
                        widening_step(&mut acc[r], vreinterpretq_s8_s32(quad), b0, b1);
                    }
                }
            }};
        }
        lane!(0);
        lane!(1);
        lane!(2);
        lane!(3);
        q += 4;
    }
    rest_quads::<MR, DOT>(&mut acc, &rows, bp, q);
    store_rows::<MR, DOT>(&acc, t);
}

/// Stores every row of a tile's accumulators: with `DOT` the first two hold the column
/// sums 0..4 and 4..8; without, all four hold half sums that add pairwise into them.
#[inline(always)]
unsafe fn store_rows<const MR: usize, const DOT: bool>(acc: &[[int32x4_t; 4]; MR], t: &mut QTile) {
    for (r, acc) in acc.iter().enumerate() {
        let sums = if DOT {
            [acc[0], acc[1]]
        } else {
            [vpaddq_s32(acc[0], acc[1]), vpaddq_s32(acc[2], acc[3])]
        };
        store_row(sums, t, r);
    }
}

/// `asm!` of a tile whose sixteen accumulators are v16..v31: zeroed first, then
/// `$body`, then written to the array `$s`; `$operands` are the rest.
macro_rules! accumulating_asm {
    ($s:ident, [$($body:expr),* $(,)?], $($operands:tt)*) => {
        std::arch::asm!(
            "movi v16.4s, #0", "movi v17.4s, #0", "movi v18.4s, #0", "movi v19.4s, #0",
            "movi v20.4s, #0", "movi v21.4s, #0", "movi v22.4s, #0", "movi v23.4s, #0",
            "movi v24.4s, #0", "movi v25.4s, #0", "movi v26.4s, #0", "movi v27.4s, #0",
            "movi v28.4s, #0", "movi v29.4s, #0", "movi v30.4s, #0", "movi v31.4s, #0",
            $($body),*,
            $($operands)*
            out("v16") $s[0], out("v17") $s[1], out("v18") $s[2], out("v19") $s[3],
            out("v20") $s[4], out("v21") $s[5], out("v22") $s[6], out("v23") $s[7],
            out("v24") $s[8], out("v25") $s[9], out("v26") $s[10], out("v27") $s[11],
            out("v28") $s[12], out("v29") $s[13], out("v30") $s[14], out("v31") $s[15],
            options(nostack, readonly),
        )
    };
}

/// The k-quads from `from` on (the ragged last one zero-padded), for what a tile's
/// unrolled steps leave over.
#[inline(always)]
unsafe fn rest_quads<const MR: usize, const DOT: bool>(
    acc: &mut [[int32x4_t; 4]; MR],
    rows: &[&[u8]; MR],
    bp: *const i8,
    from: usize,
) {
    let k = rows[0].len();
    let full_quads = k / 4;
    for q in from..full_quads {
        let quads = crate::kernels::unrolled(|r| {
            (rows[r].as_ptr().add(q * 4) as *const i32).read_unaligned()
        });
        quad_step::<MR, DOT>(acc, bp.add(q * QUAD_BYTES), quads);
    }
    if !k.is_multiple_of(4) {
        let quads = crate::kernels::unrolled(|r| quad_of(rows[r], full_quads));
        quad_step::<MR, DOT>(acc, bp.add(full_quads * QUAD_BYTES), quads);
    }
}

/// Rows of [`dotprod_tile_8`].
const DOTPROD_ROWS: usize = 8;

/// One k-quad (`$lane` of the rows' loaded four) of [`dotprod_tile_8`]: the quad's eight
/// columns from `[{b} + $offset]` into `$b0`, `$b1`, then `sdot` by element for each of
/// the eight rows (v0..v7) into its two accumulators.
#[rustfmt::skip] // one instruction a line
macro_rules! dotprod_quad {
    ($lane:literal, $offset:literal, $b0:literal, $b1:literal) => {
        concat!(
            "ldp q", $b0, ", q", $b1, ", [{b}, #", $offset, "]\n",
            dotprod_row!($lane, "0", $b0, $b1, "16", "17"),
            dotprod_row!($lane, "1", $b0, $b1, "18", "19"),
            dotprod_row!($lane, "2", $b0, $b1, "20", "21"),
            dotprod_row!($lane, "3", $b0, $b1, "22", "23"),
            dotprod_row!($lane, "4", $b0, $b1, "24", "25"),
            dotprod_row!($lane, "5", $b0, $b1, "26", "27"),
            dotprod_row!($lane, "6", $b0, $b1, "28", "29"),
            dotprod_row!($lane, "7", $b0, $b1, "30", "31"),
        )
    };
}

#[rustfmt::skip] // one instruction a line
macro_rules! dotprod_row {
    ($lane:literal, $a:literal, $b0:literal, $b1:literal, $s0:literal, $s1:literal) => {
        concat!(
            "sdot v", $s0, ".4s, v", $b0, ".16b, v", $a, ".4b[", $lane, "]\n",
            "sdot v", $s1, ".4s, v", $b1, ".16b, v", $a, ".4b[", $lane, "]\n",
        )
    };
}

/// The 8-row tile of the `sdot` path (Pi 5's Cortex-A76) in assembly: compiled from
/// intrinsics, every accumulator went back to the stack after each `sdot` (a store per
/// product). Four k-quads a step: one 16-byte load per row, then per quad one load of the
/// eight columns and 16 `sdot`s: 79 instructions for 1,024 multiply-adds.
#[inline(always)]
unsafe fn dotprod_tile_8(t: &mut QTile) {
    let k = t.k();
    let rows: [&[u8]; DOTPROD_ROWS] = t.rows();
    let full_quads = k / 4;
    let steps = full_quads / 4;
    let bp = t.b.as_ptr();
    let mut s = [vdupq_n_s32(0); 2 * DOTPROD_ROWS];
    if steps > 0 {
        accumulating_asm!(
            s,
            [
                "2:",
                "ldr q0, [{r0}], #16", "ldr q1, [{r1}], #16",
                "ldr q2, [{r2}], #16", "ldr q3, [{r3}], #16",
                "ldr q4, [{r4}], #16", "ldr q5, [{r5}], #16",
                "ldr q6, [{r6}], #16", "ldr q7, [{r7}], #16",
                dotprod_quad!("0", "0", "8", "9"),
                dotprod_quad!("1", "128", "10", "11"),
                dotprod_quad!("2", "256", "8", "9"),
                dotprod_quad!("3", "384", "10", "11"),
                "add {b}, {b}, #512",
                "subs {steps}, {steps}, #1",
                "b.ne 2b",
            ],
            r0 = inout(reg) rows[0].as_ptr() => _,
            r1 = inout(reg) rows[1].as_ptr() => _,
            r2 = inout(reg) rows[2].as_ptr() => _,
            r3 = inout(reg) rows[3].as_ptr() => _,
            r4 = inout(reg) rows[4].as_ptr() => _,
            r5 = inout(reg) rows[5].as_ptr() => _,
            r6 = inout(reg) rows[6].as_ptr() => _,
            r7 = inout(reg) rows[7].as_ptr() => _,
            b = inout(reg) bp => _,
            steps = inout(reg) steps => _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
        );
    }
    // Four accumulators a row as the intrinsic steps take them; `sdot` fills two.
    let mut acc: [[int32x4_t; 4]; DOTPROD_ROWS] =
        crate::kernels::unrolled(|r| [s[2 * r], s[2 * r + 1], vdupq_n_s32(0), vdupq_n_s32(0)]);
    // The last quads (fewer than four) and the ragged k from intrinsics.
    rest_quads::<DOTPROD_ROWS, true>(&mut acc, &rows, bp, 4 * steps);
    store_rows::<DOTPROD_ROWS, true>(&acc, t);
}

/// Rows of [`widening_tile_4`].
const WIDENING_ROWS: usize = 4;

/// One k-quad pair of one row of [`widening_tile_4`]: the row's two quads broadcast
/// (`ld1r`, the row pointer stepping on), `smull` of the first against the quad's eight
/// columns (v0, v1) and `smlal` of the second (v2, v3) into four 16-bit temporaries, one
/// `sadalp` each into the row's accumulators.
#[rustfmt::skip] // one instruction a line
macro_rules! widening_row_pair {
    ($row:literal, [$a0:literal, $a1:literal], [$t0:literal, $t1:literal, $t2:literal, $t3:literal], [$s0:literal, $s1:literal, $s2:literal, $s3:literal]) => {
        concat!(
            "ld1r {{v", $a0, ".4s}}, [", $row, "], #4\n",
            "ld1r {{v", $a1, ".4s}}, [", $row, "], #4\n",
            "smull v", $t0, ".8h, v", $a0, ".8b, v0.8b\n",
            "smull2 v", $t1, ".8h, v", $a0, ".16b, v0.16b\n",
            "smull v", $t2, ".8h, v", $a0, ".8b, v1.8b\n",
            "smull2 v", $t3, ".8h, v", $a0, ".16b, v1.16b\n",
            "smlal v", $t0, ".8h, v", $a1, ".8b, v2.8b\n",
            "smlal2 v", $t1, ".8h, v", $a1, ".16b, v2.16b\n",
            "smlal v", $t2, ".8h, v", $a1, ".8b, v3.8b\n",
            "smlal2 v", $t3, ".8h, v", $a1, ".16b, v3.16b\n",
            "sadalp v", $s0, ".4s, v", $t0, ".8h\n",
            "sadalp v", $s1, ".4s, v", $t1, ".8h\n",
            "sadalp v", $s2, ".4s, v", $t2, ".8h\n",
            "sadalp v", $s3, ".4s, v", $t3, ".8h\n",
        )
    };
}

/// The 4-row tile of the widening path (every aarch64 CPU without `sdot`: Pi 3 and 4),
/// in assembly: compiled from intrinsics, its 16 accumulators and their temporaries did
/// not fit the 32 registers and went to the stack every step. Two k-quads a step:
/// `smull` of the first and `smlal` of the second into the same 16-bit lanes, then one
/// `sadalp`, so the widening add is paid once per eight k: 56 instructions (the
/// broadcasts included, the weight loads not) for 256 multiply-adds, where one `sadalp`
/// per `smull` took 72. Two products fit an i16: activations 0..=127 times weights
/// -127..=127 are at most 16,129 in magnitude.
#[inline(always)]
unsafe fn widening_tile_4(t: &mut QTile) {
    let k = t.k();
    let rows: [&[u8]; WIDENING_ROWS] = t.rows();
    let full_quads = k / 4;
    let pairs = full_quads / 2;
    let bp = t.b.as_ptr();
    let mut s = [vdupq_n_s32(0); 4 * WIDENING_ROWS];
    if pairs > 0 {
        accumulating_asm!(
            s,
            [
                "2:",
                "ldp q0, q1, [{b}]",
                "ldp q2, q3, [{b}, #{quad}]",
                "add {b}, {b}, #{pair}",
                widening_row_pair!("{r0}", ["4", "5"], ["12", "13", "14", "15"], ["16", "17", "18", "19"]),
                widening_row_pair!("{r1}", ["6", "7"], ["8", "9", "10", "11"], ["20", "21", "22", "23"]),
                widening_row_pair!("{r2}", ["4", "5"], ["12", "13", "14", "15"], ["24", "25", "26", "27"]),
                widening_row_pair!("{r3}", ["6", "7"], ["8", "9", "10", "11"], ["28", "29", "30", "31"]),
                "subs {pairs}, {pairs}, #1",
                "b.ne 2b",
            ],
            r0 = inout(reg) rows[0].as_ptr() => _,
            r1 = inout(reg) rows[1].as_ptr() => _,
            r2 = inout(reg) rows[2].as_ptr() => _,
            r3 = inout(reg) rows[3].as_ptr() => _,
            b = inout(reg) bp => _,
            pairs = inout(reg) pairs => _,
            quad = const QUAD_BYTES,
            pair = const 2 * QUAD_BYTES,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
        );
    }
    let mut acc: [[int32x4_t; 4]; WIDENING_ROWS] =
        crate::kernels::unrolled(|r| crate::kernels::unrolled(|j| s[4 * r + j]));
    // The odd last quad and the ragged k (not a multiple of four) from intrinsics.
    rest_quads::<WIDENING_ROWS, false>(&mut acc, &rows, bp, 2 * pairs);
    store_rows::<WIDENING_ROWS, false>(&acc, t);
}

/// `out[col] += sums[col] * scale[col] * row_scale` for the tile's row `r`, its `cols`
/// columns' eight sums in two vectors.
#[inline(always)]
unsafe fn store_row(sums: [int32x4_t; 2], t: &mut QTile, r: usize) {
    let (scale, cols, row_scale) = (t.scale(), t.cols, t.row_scale(r));
    let ldc = t.ldc();
    let out = &mut t.c[r * ldc..];
    if cols == GROUP {
        for (half, sum) in sums.iter().enumerate() {
            let s = vmulq_n_f32(vld1q_f32(scale.as_ptr().add(half * 4)), row_scale);
            let o = out.as_mut_ptr().add(half * 4);
            vst1q_f32(o, vfmaq_f32(vld1q_f32(o), vcvtq_f32_s32(*sum), s));
        }
    } else {
        let mut lanes = [0i32; GROUP];
        vst1q_s32(lanes.as_mut_ptr(), sums[0]);
        vst1q_s32(lanes.as_mut_ptr().add(4), sums[1]);
        for col in 0..cols {
            out[col] = (lanes[col] as f32).mul_add(scale[col] * row_scale, out[col]);
        }
    }
}

/// The `smmla` operands of eight columns for k-quads `quad` and `quad + 1` (zero when
/// `second` is false): `zip` of the two packed quads gives each column pair's eight k.
#[inline(always)]
unsafe fn column_pairs(b: *const i8, quad: usize, second: bool) -> [int8x16_t; 4] {
    let low = b.add(quad * QUAD_BYTES);
    let (x0, x1) = (
        vld1q_s32(low as *const i32),
        vld1q_s32(low.add(16) as *const i32),
    );
    let (y0, y1) = if second {
        let high = low.add(QUAD_BYTES);
        (
            vld1q_s32(high as *const i32),
            vld1q_s32(high.add(16) as *const i32),
        )
    } else {
        (vdupq_n_s32(0), vdupq_n_s32(0))
    };
    [
        vreinterpretq_s8_s32(vzip1q_s32(x0, y0)),
        vreinterpretq_s8_s32(vzip2q_s32(x0, y0)),
        vreinterpretq_s8_s32(vzip1q_s32(x1, y1)),
        vreinterpretq_s8_s32(vzip2q_s32(x1, y1)),
    ]
}

/// Rows per [`matmul_tile`], in pairs.
const MAX_PAIRS: usize = 4;

/// The `smmla` operands of `pairs` row pairs for sixteen k from `at`: rows `2 pair`
/// and `2 pair + 1` interleaved by eight bytes, k `at..at + 8` then `at + 8..at + 16`.
#[inline(always)]
unsafe fn row_pairs(
    rows: &[*const u8; 2 * MAX_PAIRS],
    at: usize,
    pairs: usize,
) -> [[int8x16_t; MAX_PAIRS]; 2] {
    let mut operands = [[vdupq_n_s8(0); MAX_PAIRS]; 2];
    for pair in 0..pairs {
        let first = vld1q_s64(rows[2 * pair].add(at) as *const i64);
        let second = vld1q_s64(rows[2 * pair + 1].add(at) as *const i64);
        operands[0][pair] = vreinterpretq_s8_s64(vzip1q_s64(first, second));
        operands[1][pair] = vreinterpretq_s8_s64(vzip2q_s64(first, second));
    }
    operands
}

/// Eight k of a [`matmul_tile`]: each of `pairs` row pairs' operand against four
/// column pairs. (Whole arrays, not slices of them: with slices the accumulators
/// went back to the stack every step.)
#[inline(always)]
unsafe fn matmul_step(
    acc: &mut [[int32x4_t; 4]; MAX_PAIRS],
    rows: &[int8x16_t; MAX_PAIRS],
    pairs: usize,
    columns: [int8x16_t; 4],
) {
    for pair in 0..pairs {
        for (acc, b) in acc[pair].iter_mut().zip(columns) {
            *acc = smmla(*acc, rows[pair], b);
        }
    }
}

/// One tile with the int8 matrix multiply (Armv8.6 `smmla`: 32 multiply-adds per
/// instruction, twice `sdot`'s): `MR` rows in pairs (a lone last row is paired with
/// itself and the copy dropped) x eight columns, sixteen k a step. Accumulator
/// `[pair][column pair]` holds a 2 x 2 block.
#[inline(always)]
unsafe fn matmul_tile<const MR: usize>(t: &mut QTile) {
    let pairs = MR.div_ceil(2);
    let (p, k) = (t.p, t.k());
    let rows: [*const u8; 2 * MAX_PAIRS] =
        crate::kernels::unrolled(|r| p.a[(t.row + r.min(MR - 1)) * p.lda..][..k].as_ptr());
    let mut acc = [[vdupq_n_s32(0); 4]; MAX_PAIRS];
    let (bp, quads) = (t.b.as_ptr(), k.div_ceil(4));
    let mut at = 0;
    while at + 16 <= k {
        let [low, high] = row_pairs(&rows, at, pairs);
        let q = at / 4;
        matmul_step(&mut acc, &low, pairs, column_pairs(bp, q, true));
        matmul_step(&mut acc, &high, pairs, column_pairs(bp, q + 2, true));
        at += 16;
    }
    if at < k {
        // The last k < 16: each row's rest, zero-padded; the packed quads past `k`
        // are zero already, those past the panel's end are not read.
        let mut rest = [[0u8; 16]; 2 * MAX_PAIRS];
        for (rest, row) in rest.iter_mut().zip(rows) {
            std::ptr::copy_nonoverlapping(row.add(at), rest.as_mut_ptr(), k - at);
        }
        let rest = crate::kernels::unrolled(|r| rest[r].as_ptr());
        let [low, high] = row_pairs(&rest, 0, pairs);
        let q = at / 4;
        let columns = column_pairs(bp, q, q + 1 < quads);
        matmul_step(&mut acc, &low, pairs, columns);
        if at + 8 < k {
            let columns = column_pairs(bp, q + 2, q + 3 < quads);
            matmul_step(&mut acc, &high, pairs, columns);
        }
    }
    // Row 2 pair: the blocks' low halves; row 2 pair + 1: their high ones.
    let low = |x: int32x4_t, y: int32x4_t| {
        vreinterpretq_s32_s64(vzip1q_s64(
            vreinterpretq_s64_s32(x),
            vreinterpretq_s64_s32(y),
        ))
    };
    let high = |x: int32x4_t, y: int32x4_t| {
        vreinterpretq_s32_s64(vzip2q_s64(
            vreinterpretq_s64_s32(x),
            vreinterpretq_s64_s32(y),
        ))
    };
    for (pair, &[c01, c23, c45, c67]) in acc.iter().enumerate().take(pairs) {
        let halves = [
            [low(c01, c23), low(c45, c67)],
            [high(c01, c23), high(c45, c67)],
        ];
        // A lone last row's twin is not stored.
        for (r, sums) in (2 * pair..MR).zip(halves) {
            store_row(sums, t, r);
        }
    }
}
