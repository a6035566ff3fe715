//! The f32 panel kernel on x86 with AVX-512F (`avx512`): our 14 x 32 register tile (28
//! accumulators, one broadcast a row and two loads a k) in assembly, which adds the
//! bias, the shortcut and the ReLU as it stores, like the int8 kernels. The `gemm` crate
//! it replaces packs the weights again in every call and, on ResNet's 7 x 7 layers (49
//! rows of up to 4608), reached 52-61 GMAC/s against 89-96 on the 3 x 3 layers of 28 x 28
//! and 14 x 14 maps (Zen 5, one thread); the f32 layers took ~10 % less time in all.
use std::arch::asm;
use std::arch::x86_64::*;

use std::ops::Range;

use crate::kernels::f32_weights::{F32Kernel, F32Run, F32Weights, Left, PANEL, TILE_ROWS as ROWS};
use crate::kernels::{fetch_ahead, panel_blocks, unrolled, Finish, TileFinish, FETCH_AHEAD_BYTES};

pub static AVX512: F32Kernel = F32Kernel {
    name: "avx512",
    run: F32Run::Panels(run),
};

/// A run of k that a tile's 14 rows read from `at` on (rows `lda` apart).
#[repr(C)]
#[derive(Clone, Copy)]
struct Segment {
    at: *const f32,
    quads: usize,
    rest: usize,
}

impl Segment {
    fn new(at: *const f32, len: usize) -> Self {
        Self {
            at,
            quads: len / 4,
            rest: len % 4,
        }
    }
}

// The assembly reads a segment's fields at 0, 8 and 16 bytes.
const _: () = assert!(size_of::<Segment>() == 24);

/// Kernel rows a chunk of a padded product holds at most (the segments of a tile).
const MAX_SEGMENTS: usize = 16;

/// # Safety
/// AVX-512F is present; `left` holds `m` rows of `k` values (its bounds checked),
/// `c` points at `m x n` values of which this call alone reads and writes the columns
/// of `panels`, and `w` is in panels.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run(
    w: &F32Weights,
    m: usize,
    left: Left,
    c: *mut f32,
    finish: &Finish,
    panels: Range<usize>,
) {
    let (k, n) = (w.k, w.n);
    let panel_len = k * PANEL;
    let mut chunks = k.div_ceil(K_CHUNK).max(1);
    let (chunk_len, lda) = match left {
        Left::Matrix { lda, .. } => (k.div_ceil(chunks).next_multiple_of(4), lda),
        // Chunks of whole kernel rows, one segment each.
        Left::Padded { rows, .. } => {
            let per_chunk = rows.kernel.div_ceil(chunks).min(MAX_SEGMENTS);
            chunks = rows.kernel.div_ceil(per_chunk);
            (per_chunk * rows.kernel_row_len(), rows.pixel_step())
        }
    };
    let tiles = row_tiles(m, left);
    let (first_panel, end_panel) = (panels.start, panels.end);
    let blocks = panel_blocks(panels.len(), chunk_len.max(1) * PANEL * 4);
    for panels in blocks.map(|block| block.start + first_panel..block.end + first_panel) {
        for chunk in 0..chunks {
            let first_k = chunk * chunk_len;
            let len = chunk_len.min(k - first_k);
            let last = chunk + 1 == chunks;
            // What follows this chunk of a panel: the panel's next chunk, or the first
            // one of the panel in the same place in the next block.
            let successor = |panel: usize| match last {
                false => Some(panel * panel_len + (first_k + chunk_len) * PANEL),
                true => {
                    let next = panel + panels.len();
                    (next < end_panel).then_some(next * panel_len)
                }
            };
            let fetch = Fetch::share(tiles.len(), chunk_len);
            for (row_tile, &(row, rows)) in tiles.iter().enumerate() {
                let mut segments = [Segment::new(std::ptr::null(), 0); MAX_SEGMENTS];
                let segments = match left {
                    Left::Matrix { a, lda } => {
                        let a = &a[row * lda + first_k..][..(rows - 1) * lda + len];
                        segments[0] = Segment::new(a.as_ptr(), len);
                        &segments[..1]
                    }
                    Left::Padded { rows, first_pixel } => {
                        let row_len = rows.kernel_row_len();
                        let (count, first_ky) = (len / row_len, first_k / row_len);
                        for (i, segment) in segments[..count].iter_mut().enumerate() {
                            let at = rows.kernel_row_start(first_pixel + row, first_ky + i);
                            *segment = Segment::new(rows.data.as_ptr().add(at), row_len);
                        }
                        &segments[..count]
                    }
                };
                for panel in panels.clone() {
                    let col = panel * PANEL;
                    let cols = (n - col).min(PANEL);
                    let b = &w.data[panel * panel_len + first_k * PANEL..][..len * PANEL];
                    let c = c.add(row * n + col);
                    // The first chunk starts from the finish's start, the others
                    // from what the chunks before them left in `c`.
                    let start = if chunk == 0 {
                        finish
                    } else {
                        &Finish::ACCUMULATE
                    };
                    let mut tile_finish = TileFinish::at(start, n, row, col);
                    tile_finish.relu = last && finish.relu;
                    let fetch = fetch.slice(&w.data, successor(panel), row_tile);
                    if rows == ROWS {
                        tile_finish.prefetch(c, ROWS, n);
                        let sums = sums_14(segments, lda, b.as_ptr(), fetch);
                        store(&sums, c, n, cols, tile_finish);
                        continue;
                    }
                    macro_rules! rest_tile {
                        ($($rows:literal)*) => {
                            match rows {
                                $($rows => tile::<$rows>(
                                    segments, lda, b.as_ptr(), c, n, cols, tile_finish, fetch
                                ),)*
                                _ => unreachable!("fewer than {ROWS} rows left"),
                            }
                        };
                    }
                    rest_tile!(1 2 3 4 5 6 7 8 9 10 11 12 13);
                }
            }
        }
    }
}

/// The row tiles of a product, `(first row, rows)`: 14 rows each, except that a
/// padded product's tiles end where image rows do (its rows lie a fixed step apart
/// only within one image row, unless they continue into the next).
fn row_tiles(m: usize, left: Left) -> Vec<(usize, usize)> {
    let row_end = |row: usize| match left {
        Left::Matrix { .. } => m,
        Left::Padded { rows, .. } if rows.rows_continue() => m,
        Left::Padded { rows, first_pixel } => {
            let x = (first_pixel + row) % rows.out_width;
            (row + rows.out_width - x).min(m)
        }
    };
    let mut tiles = Vec::with_capacity(m.div_ceil(ROWS));
    let mut row = 0;
    while row < m {
        let rows = (row_end(row) - row).min(ROWS);
        tiles.push((row, rows));
        row += rows;
    }
    tiles
}

/// The k of a product run at a time: longer products are cut into chunks of at most
/// this many, each run over all the rows and adding onto what the chunks before it
/// left in the output, so that the weights that the first row tile reads from memory
/// are ones the tiles of the chunk before fetched in the background ([`Fetch`]).
/// ResNet-50's 7 x 7 layers (49 rows in 4 tiles, 60 MB of weights) took 12.9 ms of a
/// one-thread pass run whole and 10.2 in chunks, and the pass 6-8 % less on one thread
/// and on two (Xeon, one core reads ~11 GB/s); chunks of 256 to 1024 measured alike.
const K_CHUNK: usize = 1024;

/// How the row tiles of a chunk share the fetching of its successor into L2 (a line
/// every k to every fourth k each, in turn), so memory streams at an even pace while
/// the rows are multiplied rather than in a burst when the next chunk starts.
struct Fetch {
    /// Bytes a row tile fetches every 4 k.
    step: usize,
    /// Bytes a row tile fetches in all.
    per_tile: usize,
    chunk_bytes: usize,
}

impl Fetch {
    fn share(row_tiles: usize, chunk_len: usize) -> Self {
        let chunk_bytes = chunk_len * PANEL * size_of::<f32>();
        let step = (chunk_bytes / chunk_len.div_ceil(4).max(1) / row_tiles.max(1))
            .next_multiple_of(64)
            .min(256);
        Self {
            step,
            per_tile: step * chunk_len.div_ceil(4),
            chunk_bytes,
        }
    }

    /// Where row tile `row_tile` starts fetching the successor chunk at `successor`
    /// (an index in `data`), and by how much it moves every 4 k: by nothing, over
    /// the first line of `data`, when the successor is whole without it.
    fn slice(&self, data: &[f32], successor: Option<usize>, row_tile: usize) -> (*const u8, usize) {
        let done = row_tile * self.per_tile;
        match successor {
            Some(at) if done < self.chunk_bytes => {
                let at = data.as_ptr().wrapping_add(at) as *const u8;
                (at.wrapping_add(done), self.step)
            }
            _ => (data.as_ptr() as *const u8, 0),
        }
    }
}

type Sums<const MR: usize> = [[__m512; 2]; MR];

/// `MR` rows (`lda` apart, read segment by segment) times one panel `b` (32 values a
/// k), finished into `c` (rows `ldc` apart, `cols` of them kept).
///
/// # Safety
/// AVX-512F is present; `segments` hold `MR` rows each, `lda` apart, of as many values
/// as they say; `b` a panel of 32 values a k for all of them; `c` `MR` rows of `cols`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const MR: usize>(
    segments: &[Segment],
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    finish: TileFinish,
    (fetch_at, fetch_step): (*const u8, usize),
) {
    finish.prefetch(c, MR, ldc);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let mut bp = b;
    let mut kk = 0;
    for segment in segments {
        for i in 0..segment.quads * 4 + segment.rest {
            fetch_ahead(bp as *const u8, 2);
            _mm_prefetch::<_MM_HINT_T1>(fetch_at.wrapping_add(kk * fetch_step / 4) as *const i8);
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*segment.at.add(r * lda + i));
                acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
            }
            bp = bp.add(PANEL);
            kk += 1;
        }
    }
    store(&acc, c, ldc, cols, finish);
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
        "6:",
        "mov {p0}, [{segment}]",
        "mov {count}, [{segment} + 8]",
        "lea {p3}, [{p0} + {l}*2]", "add {p3}, {l}",
        "lea {p6}, [{p3} + {l}*2]", "add {p6}, {l}",
        "lea {p9}, [{p6} + {l}*2]", "add {p9}, {l}",
        "lea {p12}, [{p9} + {l}*2]", "add {p12}, {l}",
        "test {count}, {count}",
        "jz 3f",
        "2:",
        step_14!(0, 0),
        step_14!(4, 128),
        step_14!(8, 256),
        step_14!(12, 384),
        "prefetcht1 [{pf}]", "prefetcht1 [{pf} + 64]",
        "prefetcht1 [{pf} + 128]", "prefetcht1 [{pf} + 192]",
        "add {pf}, {pf_step}",
        "add {p0}, 16", "add {p3}, 16", "add {p6}, 16", "add {p9}, 16", "add {p12}, 16",
        "add {b}, 512",
        "dec {count}",
        "jnz 2b",
        "3:",
        "mov {count}, [{segment} + 16]",
        "test {count}, {count}",
        "jz 5f",
        "4:",
        step_14!(0, 0),
        "add {p0}, 4", "add {p3}, 4", "add {p6}, 4", "add {p9}, 4", "add {p12}, 4",
        "add {b}, 128",
        "dec {count}",
        "jnz 4b",
        "5:",
        "add {segment}, 24",
        "dec {segments}",
        "jnz 6b",
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
    finish: TileFinish,
) {
    for (r, acc) in acc.iter().enumerate() {
        for (half, &sums) in acc.iter().enumerate() {
            let first = half * 16;
            if first >= cols {
                break;
            }
            let add = |start| _mm512_add_ps(sums, start);
            finish.store16(add, c, r, ldc, first, TileFinish::lanes(first, cols));
        }
    }
}
