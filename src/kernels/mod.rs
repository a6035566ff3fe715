//! CPU kernels of the inference plan ([`crate::plan`]): matrix products, im2col, pooling.
//!
//! Every operation has a portable reference next to the fast path that is actually
//! called, and the tests compare the two on random and odd shapes. On x86 without
//! AVX-512 the f32 matrix product goes through the `gemm` crate (AVX2/FMA microkernels
//! chosen at run time); our own kernels live here only where no crate is fast enough:
//! int8 everywhere, f32 convolutions on x86 with AVX-512 (`f32_weights`: weights packed
//! once, the bias, shortcut and ReLU in the stores), and f32 on ARM (the crate is scalar
//! on armv7 and packs both operands in every call on aarch64; `armv7` holds the assembly).

/// Row tiles: as many rows as the registers hold, then smaller tiles for the rest.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(unused_macros)
)]
macro_rules! for_row_tiles {
    ($m:expr, $big:literal, |$row:ident, $tile:ident| $body:expr) => {{
        let mut $row = 0;
        while $row + $big <= $m {
            const $tile: usize = $big;
            $body;
            $row += $big;
        }
        while $row + 4 <= $m {
            const $tile: usize = 4;
            $body;
            $row += 4;
        }
        while $row < $m {
            const $tile: usize = 1;
            $body;
            $row += 1;
        }
    }};
}

pub mod aligned;
#[cfg(target_arch = "arm")]
pub mod armv7;
pub mod f32_weights;
pub mod gemm;
pub mod im2col;
pub mod pool;
pub mod qgemm;
pub mod quantize;

/// How a product's sums land in its output `c`.
#[derive(Debug, Clone, Copy)]
pub struct Finish<'a> {
    pub start: Start<'a>,
    /// ReLU on the result.
    pub relu: bool,
}

/// What a product's sums are added to.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// What `c` holds.
    Output,
    /// The bias of each column, plus a `shortcut` of `c`'s shape (a residual block's end).
    Bias {
        bias: &'a [f32],
        shortcut: Option<&'a [f32]>,
    },
}

impl Finish<'_> {
    /// `c += a * b`.
    pub const ACCUMULATE: Finish<'static> = Finish {
        start: Start::Output,
        relu: false,
    };

    /// Checks the start's shapes against `c`, rows of `n`.
    pub fn check(&self, c: &[f32], n: usize) {
        self.check_len(c.len(), n);
    }

    /// [`Self::check`] for an output of `len` values held by pointer.
    pub fn check_len(&self, len: usize, n: usize) {
        if let Start::Bias { bias, shortcut } = self.start {
            assert_eq!(bias.len(), n, "one bias per column");
            assert!(shortcut.is_none_or(|s| s.len() == len), "shortcut shape");
        }
    }

    /// Sets `c` (rows of `n`) to the start, for kernels that add their sums onto `c`.
    pub fn fill_start(&self, c: &mut [f32], n: usize) {
        if let Start::Bias { bias, shortcut } = self.start {
            for row in c.chunks_exact_mut(n) {
                row.copy_from_slice(bias);
            }
            if let Some(shortcut) = shortcut {
                c.iter_mut().zip(shortcut).for_each(|(c, s)| *c += s);
            }
        }
    }

    /// The ReLU as a pass of its own, for kernels that do not fuse it.
    pub fn apply_relu(&self, c: &mut [f32]) {
        if self.relu {
            pool::relu(c);
        }
    }
}

/// `[f(0), .., f(N - 1)]`, always inlined, for the SIMD kernels' per-row arrays (rows,
/// loads, quads): `std::array::from_fn` is only a hint to inline, and once the AVX2 int8
/// tile grew its closure became a call per k-quad (perf: 2 % -> 7 % of an int8 pass).
#[inline(always)]
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")),
    allow(dead_code)
)]
pub(crate) fn unrolled<T: Copy, const N: usize>(mut f: impl FnMut(usize) -> T) -> [T; N] {
    let mut out = std::mem::MaybeUninit::<[T; N]>::uninit();
    let first = out.as_mut_ptr() as *mut T;
    for i in 0..N {
        // SAFETY: `i < N` lies inside the array; `T: Copy` has no drop to skip should
        // `f` panic midway.
        unsafe { first.add(i).write(f(i)) };
    }
    // SAFETY: the loop wrote all `N` elements.
    unsafe { out.assume_init() }
}

/// Packed weight bytes one block of panels may hold: a quarter of a 1 MB L2 (Zen 4/5,
/// Intel server cores, Cortex-A72's shared L2), half of the 512 KB of a Cortex-A76's;
/// 64 KB to 1 MB measured within noise of each other on Zen 5.
const PANEL_BLOCK_BYTES: usize = 256 * 1024;

/// Panels (column strips of packed weights, `panel_bytes` each) in blocks of at most
/// [`PANEL_BLOCK_BYTES`], at least one panel each. A driver runs every row tile over one
/// block before the next: the block's weights stay in L2 while the rows pass, and each
/// row tile runs all the block's panels in turn, so its activations stay in L1 and its
/// output rows are written whole, in order. With panels outermost instead, a layer of
/// small K and wide output (ResNet's 1 x 1 expansions: K 64, N 256, 3136 rows) wrote its
/// 3 MB output in 32-column strips, one pass each: those int8 layers took 30 % longer,
/// the int8 pass 5-15 % (x86 Zen 5, per-layer timers, alternating runs).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn panel_blocks(
    panels: usize,
    panel_bytes: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    let per_block = (PANEL_BLOCK_BYTES / panel_bytes.max(1)).max(1);
    (0..panels)
        .step_by(per_block)
        .map(move |first| first..(first + per_block).min(panels))
}

/// How far ahead the x86 panel tiles (f32, VNNI, AVX2) fetch their weights into L1: 24 k
/// of a panel, 128 bytes each. A block of panels stays in L2, not in L1, and the first row
/// tile reads it from L3. 1 to 6 KB measured alike; f32 passes 8-10 % faster than with
/// none, int8 6 % (VNNI) and 5 % (AVX2). Fetching the AMX kernel's weight tiles ahead
/// measured alike with none (Xeon, 1 and 2 threads).
#[cfg(target_arch = "x86_64")]
pub(crate) const FETCH_AHEAD_BYTES: usize = 24 * 128;

/// Fetches `lines` 64-byte lines from [`FETCH_AHEAD_BYTES`] past `at` into L1. (Wrapping
/// arithmetic: the lines may lie past the weights' end, which a prefetch may name.)
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn fetch_ahead(at: *const u8, lines: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for line in 0..lines {
        let ahead = at.wrapping_add(FETCH_AHEAD_BYTES + line * 64) as *const i8;
        // SAFETY: a prefetch reads nothing and never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead) };
    }
}

/// A tile's share of a [`Finish`]: its sums go onto the output, or onto the bias (plus
/// the shortcut) from the tile's first column; then through the ReLU or not.
#[cfg(target_arch = "x86_64")]
pub(crate) struct TileFinish<'a> {
    pub bias: Option<&'a [f32]>,
    pub shortcut: Option<&'a [f32]>,
    pub relu: bool,
}

#[cfg(target_arch = "x86_64")]
impl<'a> TileFinish<'a> {
    /// The tile from `row`, `col` of an output with rows of `n`.
    pub fn at(finish: &Finish<'a>, n: usize, row: usize, col: usize) -> Self {
        let (bias, shortcut) = match finish.start {
            Start::Output => (None, None),
            Start::Bias { bias, shortcut } => {
                (Some(&bias[col..]), shortcut.map(|s| &s[row * n + col..]))
            }
        };
        Self {
            bias,
            shortcut,
            relu: finish.relu,
        }
    }

    /// The ReLU, if any, on one value.
    #[inline(always)]
    pub fn finish_value(&self, value: f32) -> f32 {
        if self.relu {
            crate::kernels::pool::larger(value, 0.0)
        } else {
            value
        }
    }

    /// Fetches two 64-byte lines of each of the tile's `rows` output rows (and shortcut
    /// rows), `ldc` apart, while the sums run: the stores would otherwise wait for them at
    /// the end. (Wrapping arithmetic: the second line may lie past the last row's end,
    /// which a prefetch may name but `add` may not.)
    #[inline(always)]
    pub fn prefetch(&self, c: *const f32, rows: usize, ldc: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let fetch = |first: *const f32| {
            for r in 0..rows {
                let line = first.wrapping_add(r * ldc) as *const i8;
                // SAFETY: a prefetch reads nothing and never faults, whatever the address.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(line);
                    _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(64));
                }
            }
        };
        fetch(c);
        if let Some(shortcut) = self.shortcut {
            fetch(shortcut.as_ptr());
        }
    }

    /// The mask of the lanes from column `first` that lie inside a tile of `cols` columns
    /// (`first < cols`), at most 16.
    #[inline(always)]
    pub fn lanes(first: usize, cols: usize) -> std::arch::x86_64::__mmask16 {
        if cols - first >= 16 {
            0xFFFF
        } else {
            (1 << (cols - first)) - 1
        }
    }

    /// Finishes 16 values of the tile's row `r` from column `first` into `c` (rows `ldc`
    /// apart), the lanes of `mask` only: `c = relu?(add(start))`, where `add` puts the
    /// sums onto the start (the int8 kernels scale them in the same `fma`).
    ///
    /// # Safety
    /// AVX-512F is present; the masked lanes lie inside `c`'s output, the bias and the
    /// shortcut, and no other thread reads or writes them in `c` meanwhile.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn store16(
        &self,
        add: impl FnOnce(std::arch::x86_64::__m512) -> std::arch::x86_64::__m512,
        c: *mut f32,
        r: usize,
        ldc: usize,
        first: usize,
        mask: std::arch::x86_64::__mmask16,
    ) {
        use std::arch::x86_64::*;
        let at = r * ldc + first;
        let out = c.add(at);
        let start = match (self.bias, self.shortcut) {
            (None, _) => _mm512_maskz_loadu_ps(mask, out),
            (Some(bias), None) => _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(first)),
            (Some(bias), Some(shortcut)) => _mm512_add_ps(
                _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(first)),
                _mm512_maskz_loadu_ps(mask, shortcut.as_ptr().add(at)),
            ),
        };
        let mut new = add(start);
        if self.relu {
            // `max(0, x)` keeps a NaN, as the portable ReLU does.
            new = _mm512_max_ps(_mm512_setzero_ps(), new);
        }
        _mm512_mask_storeu_ps(out, mask, new);
    }

    /// The start of the tile's row `r`, column `col` (rows `ldc` apart): the bias plus
    /// the shortcut, or `None` to add onto the output.
    #[inline(always)]
    pub fn start_value(&self, r: usize, ldc: usize, col: usize) -> Option<f32> {
        let bias = self.bias?[col];
        Some(match self.shortcut {
            Some(shortcut) => bias + shortcut[r * ldc + col],
            None => bias,
        })
    }
}

/// Threads one operation may use; 1 runs on the calling thread only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads(pub usize);

impl Threads {
    pub const ONE: Threads = Threads(1);

    pub fn get(self) -> usize {
        self.0.max(1)
    }
}

/// Adds the first `rows x cols` of a scratch tile (rows `tile_cols` apart) onto `c` from
/// element `at` (rows `ldc` apart): where a ragged edge tile, computed in scratch, lands.
#[cfg(any(target_arch = "arm", target_arch = "aarch64"))]
pub fn add_tile(
    tile: &[f32],
    tile_cols: usize,
    rows: usize,
    cols: usize,
    c: &mut [f32],
    at: usize,
    ldc: usize,
) {
    for (r, tile) in tile.chunks_exact(tile_cols).take(rows).enumerate() {
        let c = &mut c[at + r * ldc..][..cols];
        c.iter_mut().zip(tile).for_each(|(c, t)| *c += t);
    }
}

/// The finish of test case `case`: 0 accumulates onto the output, 1 and 2 start at the
/// bias (2 with a shortcut); odd cases end in the ReLU.
#[cfg(test)]
pub(crate) fn finish_of_case<'a>(case: usize, bias: &'a [f32], shortcut: &'a [f32]) -> Finish<'a> {
    let start = match case % 3 {
        0 => Start::Output,
        1 => Start::Bias {
            bias,
            shortcut: None,
        },
        _ => Start::Bias {
            bias,
            shortcut: Some(shortcut),
        },
    };
    Finish {
        start,
        relu: case % 2 == 1,
    }
}
