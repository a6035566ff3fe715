//! The f32 panel kernels on x86 (`avx512`, `avx2`): one driver that runs a product's
//! rows in tiles over blocks of panels and chunks of k, and a register tile per
//! instruction set (`f32_avx512.rs`, `f32_avx2.rs`) that adds the bias, the shortcut and
//! the ReLU as it stores, like the int8 kernels. The `gemm` crate they replace packs the
//! weights again in every call and, on ResNet's 7 x 7 layers (49 rows of up to 4608),
//! reached 52-61 GMAC/s against 89-96 on the 3 x 3 layers of 28 x 28 and 14 x 14 maps
//! (Zen 5, one thread, against the AVX-512 tile); the f32 layers took ~10 % less time in
//! all.

use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};

use super::f32_avx2::Avx2;
use super::f32_avx512::Avx512;
use super::tile::{fetch_ahead, TileFinish};
use crate::kernels::f32_weights::{F32Kernel, F32Run, Left, PanelProduct, PANEL};
use crate::kernels::{panel_blocks, Finish};

pub static AVX512: F32Kernel = F32Kernel {
    name: "avx512",
    run: F32Run::Panels(run_avx512),
};

pub static AVX2: F32Kernel = F32Kernel {
    name: "avx2",
    run: F32Run::Panels(run_avx2),
};

/// The loops of an assembly tile over its segments (`{segment}` points at the first of
/// `{segments}`, [`Segment`]'s fields at 0, 8 and 16 bytes): for each, `rows` sets up
/// the row pointers from `{p0}`; its quads of k run `quad` (four k), `fetch` and
/// `next_quad`, its last k `one` and `next_one` each; `{b}` walks the panel, `{pf}`
/// the next chunk's weights by `{pf_step}` every quad.
macro_rules! segment_loops {
    (
        rows: [$($rows:expr),*],
        quad: [$($quad:expr),*],
        fetch: [$($fetch:expr),*],
        next_quad: [$($next_quad:expr),*],
        one: [$($one:expr),*],
        next_one: [$($next_one:expr),*] $(,)?
    ) => {
        concat!(
            "6:\n",
            "mov {p0}, [{segment}]\n",
            "mov {count}, [{segment} + 8]\n",
            $($rows, "\n",)*
            "test {count}, {count}\n",
            "jz 3f\n",
            "2:\n",
            $($quad,)*
            $($fetch, "\n",)*
            "add {pf}, {pf_step}\n",
            $($next_quad, "\n",)*
            "add {b}, 512\n",
            "dec {count}\n",
            "jnz 2b\n",
            "3:\n",
            "mov {count}, [{segment} + 16]\n",
            "test {count}, {count}\n",
            "jz 5f\n",
            "4:\n",
            $($one,)*
            $($next_one, "\n",)*
            "add {b}, 128\n",
            "dec {count}\n",
            "jnz 4b\n",
            "5:\n",
            "add {segment}, 24\n",
            "dec {segments}\n",
            "jnz 6b\n",
        )
    };
}
pub(super) use segment_loops;

/// A panel kernel: [`drive`] with tile `$tile`, compiled for `$features`.
macro_rules! panel_kernel {
    ($name:ident, $tile:ty, $features:literal) => {
        /// # Safety
        /// The CPU has the features named; as [`drive`].
        #[target_feature(enable = $features)]
        unsafe fn $name(product: &PanelProduct) {
            drive::<$tile>(product)
        }
    };
}

panel_kernel!(run_avx512, Avx512, "avx512f,avx2,fma");
panel_kernel!(run_avx2, Avx2, "avx2,fma");

/// A register tile the driver runs: up to `ROWS` rows times one panel of 32 columns.
pub(super) trait PanelTile {
    /// Rows of the main tile.
    const ROWS: usize;
    /// 64-byte lines of the next chunk's weights a row tile fetches into L2 every 4 k.
    const FETCH_LINES: usize;
    /// `rows` (1 to `ROWS`) rows of `tile` times its panel, finished into its output.
    ///
    /// # Safety
    /// The CPU has the tile's instructions; `tile`'s segments hold `rows` rows each,
    /// `lda` apart, of as many values as they say; `b` a panel of 32 values a k for all
    /// of them; `c` `rows` rows of `cols`, `ldc` apart.
    unsafe fn run(rows: usize, tile: &Tile);
}

/// `$store` with `$sums`, `$r` and `$first` bound to each of a tile's sum vectors
/// (`$lanes` columns each) that holds some of the `$cols` columns kept, its row and its
/// first column: the tiles' stores, expanded in the tile's own code (compiled with its
/// target features). A `break` past the columns kept: a `take` of as many vectors cost
/// 20 M more instructions a ResNet-50 pass on AVX2 (qemu, Haswell: 0.793e9, not 0.772e9).
macro_rules! for_each_kept {
    ($acc:expr, $lanes:literal, $cols:expr, |$sums:ident, $r:ident, $first:ident| $store:expr) => {
        for ($r, row) in $acc.iter().enumerate() {
            for (i, &$sums) in row.iter().enumerate() {
                let $first = i * $lanes;
                if $first >= $cols {
                    break;
                }
                $store;
            }
        }
    };
}
pub(super) use for_each_kept;

/// One row tile's operands.
pub(super) struct Tile<'a> {
    pub segments: &'a [Segment],
    /// Elements from one row to the next.
    pub lda: usize,
    pub b: *const f32,
    pub c: *mut f32,
    pub ldc: usize,
    /// Columns of the panel kept (the last panel's may be fewer than 32).
    pub cols: usize,
    pub finish: TileFinish<'a>,
    /// Where the tile fetches the next chunk's weights from, and by how much it moves
    /// every 4 k ([`Fetch::slice`]).
    pub fetch: (*const u8, usize),
}

impl Tile<'_> {
    /// The tile's k in order: `step(rows at k, panel at k)` for the intrinsic tiles of
    /// few rows, with the panel's weights fetched into L1 ahead and the next chunk's
    /// into L2.
    ///
    /// # Safety
    /// As [`PanelTile::run`].
    #[inline(always)]
    pub unsafe fn for_each_k(&self, mut step: impl FnMut(*const f32, *const f32)) {
        let (fetch_at, fetch_step) = self.fetch;
        let mut bp = self.b;
        let mut kk = 0;
        for segment in self.segments {
            for i in 0..segment.quads * 4 + segment.rest {
                fetch_ahead(bp as *const u8, 2);
                let ahead = fetch_at.wrapping_add(kk * fetch_step / 4) as *const i8;
                _mm_prefetch::<_MM_HINT_T1>(ahead);
                step(segment.at.add(i), bp);
                bp = bp.add(PANEL);
                kk += 1;
            }
        }
    }
}

/// A run of k that a tile's rows read from `at` on (rows `lda` apart).
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Segment {
    pub at: *const f32,
    pub quads: usize,
    pub rest: usize,
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
/// The CPU has `T`'s instructions; as [`PanelKernel`](crate::kernels::f32_weights::PanelKernel).
#[inline(always)]
unsafe fn drive<T: PanelTile>(product: &PanelProduct) {
    let PanelProduct {
        w,
        m,
        left,
        c,
        finish,
        ref panels,
    } = *product;
    let panels = panels.clone();
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
    let tiles = row_tiles(m, left, T::ROWS);
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
            let fetch = Fetch::share(tiles.len(), chunk_len, T::FETCH_LINES);
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
                    let tile = Tile {
                        segments,
                        lda,
                        b: b.as_ptr(),
                        c,
                        ldc: n,
                        cols,
                        finish: tile_finish,
                        fetch,
                    };
                    T::run(rows, &tile);
                }
            }
        }
    }
}

/// The row tiles of a product, `(first row, rows)`: `tile_rows` each, except that a
/// padded product's tiles end where image rows do (its rows lie a fixed step apart
/// only within one image row, unless they continue into the next).
fn row_tiles(m: usize, left: Left, tile_rows: usize) -> Vec<(usize, usize)> {
    let row_end = |row: usize| match left {
        Left::Matrix { .. } => m,
        Left::Padded { rows, .. } if rows.rows_continue() => m,
        Left::Padded { rows, first_pixel } => {
            let x = (first_pixel + row) % rows.out_width;
            (row + rows.out_width - x).min(m)
        }
    };
    let mut tiles = Vec::with_capacity(m.div_ceil(tile_rows));
    let mut row = 0;
    while row < m {
        let rows = (row_end(row) - row).min(tile_rows);
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
    fn share(row_tiles: usize, chunk_len: usize, lines: usize) -> Self {
        let chunk_bytes = chunk_len * PANEL * size_of::<f32>();
        let step = (chunk_bytes / chunk_len.div_ceil(4).max(1) / row_tiles.max(1))
            .next_multiple_of(64)
            .min(64 * lines);
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
