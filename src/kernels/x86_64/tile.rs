//! What the x86 tiles share: fetching weights ahead into L1, and a tile's share of a
//! product's [`Finish`] with its AVX-512 and AVX2 stores.

use crate::kernels::{Finish, Start};

/// How far ahead the x86 panel tiles (f32, VNNI, AVX2) fetch their weights into L1: 24 k
/// of a panel, 128 bytes each. A block of panels stays in L2, not in L1, and the first row
/// tile reads it from L3. 1 to 6 KB measured alike; f32 passes 8-10 % faster than with
/// none, int8 6 % (VNNI) and 5 % (AVX2). Fetching the AMX kernel's weight tiles ahead
/// measured alike with none (Xeon, 1 and 2 threads).
pub(crate) const FETCH_AHEAD_BYTES: usize = 24 * 128;

/// Fetches `lines` 64-byte lines from [`FETCH_AHEAD_BYTES`] past `at` into L1. (Wrapping
/// arithmetic: the lines may lie past the weights' end, which a prefetch may name.)
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
pub(crate) struct TileFinish<'a> {
    pub bias: Option<&'a [f32]>,
    pub shortcut: Option<&'a [f32]>,
    pub relu: bool,
}

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

    /// Finishes 8 values of the tile's row `r` from column `first` into `c` (rows `ldc`
    /// apart), the lanes before column `cols` only: `c = relu?(add(start))`, the AVX2
    /// counterpart of [`Self::store16`].
    ///
    /// # Safety
    /// AVX2 and FMA are present; the lanes kept lie inside `c`'s output, the bias and
    /// the shortcut, and no other thread reads or writes them in `c` meanwhile.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn store8(
        &self,
        add: impl FnOnce(std::arch::x86_64::__m256) -> std::arch::x86_64::__m256,
        c: *mut f32,
        r: usize,
        ldc: usize,
        first: usize,
        cols: usize,
    ) {
        use std::arch::x86_64::*;
        let at = r * ldc + first;
        let out = c.add(at);
        let lanes = cols - first;
        let relu = |new| match self.relu {
            // `max(0, x)` keeps a NaN, as the portable ReLU does.
            true => _mm256_max_ps(_mm256_setzero_ps(), new),
            false => new,
        };
        if lanes >= 8 {
            let start = match (self.bias, self.shortcut) {
                (None, _) => _mm256_loadu_ps(out),
                (Some(bias), None) => _mm256_loadu_ps(bias.as_ptr().add(first)),
                (Some(bias), Some(shortcut)) => _mm256_add_ps(
                    _mm256_loadu_ps(bias.as_ptr().add(first)),
                    _mm256_loadu_ps(shortcut.as_ptr().add(at)),
                ),
            };
            return _mm256_storeu_ps(out, relu(add(start)));
        }
        let mask = first_lanes(lanes);
        let start = match (self.bias, self.shortcut) {
            (None, _) => _mm256_maskload_ps(out, mask),
            (Some(bias), None) => _mm256_maskload_ps(bias.as_ptr().add(first), mask),
            (Some(bias), Some(shortcut)) => _mm256_add_ps(
                _mm256_maskload_ps(bias.as_ptr().add(first), mask),
                _mm256_maskload_ps(shortcut.as_ptr().add(at), mask),
            ),
        };
        _mm256_maskstore_ps(out, mask, relu(add(start)));
    }
}

/// The mask of the first `lanes` (< 8) of eight, for AVX2's masked loads and stores.
///
/// # Safety
/// AVX2 is present.
#[inline]
#[target_feature(enable = "avx2")]
pub unsafe fn first_lanes(lanes: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(lanes as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}
