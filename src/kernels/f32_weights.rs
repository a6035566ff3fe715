//! A product's f32 right-hand matrix (a convolution's weights), laid out once at load for
//! the kernel that will run it, and that product with its [`Finish`]:
//! - x86 with AVX-512F: panels of 32 columns, each k's 32 weights side by side, run by
//!   our 12 x 32 register tile (24 accumulators, one broadcast a row and two loads a k),
//!   which adds the bias, the shortcut and the ReLU as it stores, like the int8 kernels.
//!   The `gemm` crate it replaces there packs the weights again in every call and, on
//!   ResNet's 7 x 7 layers (49 rows of up to 4608), reached 52-61 GMAC/s against 89-96 on
//!   the 3 x 3 layers of 28 x 28 and 14 x 14 maps (Zen 5, one thread); the f32 layers
//!   now take ~10 % less time in all.
//! - elsewhere: row-major, through [`MatMul::accumulate`] (the `gemm` crate on x86 without
//!   AVX-512, our NEON tiles on ARM) between the start and ReLU passes.

use super::aligned::AlignedVec;
use super::gemm::MatMul;
use super::{Finish, Threads};

/// Columns of one panel: two 16-lane registers.
const PANEL: usize = 32;

/// How [`F32Weights`] holds its `k x n` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Row-major.
    RowMajor,
    /// Panels of 32 columns (the last one zero-padded), each `k x 32` row-major.
    Panels,
}

impl Layout {
    /// The layout this CPU's fastest kernel reads.
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        if x86::available() {
            return Layout::Panels;
        }
        Layout::RowMajor
    }
}

/// A `k x n` f32 matrix in the layout of the kernel that multiplies by it.
#[derive(Debug, Clone)]
pub struct F32Weights {
    k: usize,
    n: usize,
    layout: Layout,
    data: AlignedVec<f32>,
}

impl F32Weights {
    /// A `k x n` matrix of zeros; [`Self::set`] fills it.
    pub fn zeros(k: usize, n: usize, layout: Layout) -> Self {
        let len = match layout {
            Layout::RowMajor => k * n,
            Layout::Panels => n.div_ceil(PANEL) * PANEL * k,
        };
        Self {
            k,
            n,
            layout,
            data: AlignedVec::zeroed(len),
        }
    }

    pub fn from_row_major(values: &[f32], k: usize, n: usize, layout: Layout) -> Self {
        assert_eq!(values.len(), k * n, "values are k x n");
        let mut weights = Self::zeros(k, n, layout);
        for (i, &value) in values.iter().enumerate() {
            weights.set(i / n, i % n, value);
        }
        weights
    }

    /// Where the value at `row`, `col` lies in `data`.
    #[inline]
    fn index(&self, row: usize, col: usize) -> usize {
        debug_assert!(row < self.k && col < self.n);
        match self.layout {
            Layout::RowMajor => row * self.n + col,
            Layout::Panels => (col / PANEL * self.k + row) * PANEL + col % PANEL,
        }
    }

    #[inline]
    pub fn set(&mut self, row: usize, col: usize, value: f32) {
        let at = self.index(row, col);
        self.data[at] = value;
    }

    pub fn get(&self, row: usize, col: usize) -> f32 {
        self.data[self.index(row, col)]
    }

    /// `c = finish(start + a * self)`: `a` is `m x k` with row stride `lda`, `c` exactly
    /// `m x n`. One thread (the plan runs bands of rows in parallel).
    pub fn run(&self, m: usize, a: &[f32], lda: usize, c: &mut [f32], finish: &Finish) {
        let (k, n) = (self.k, self.n);
        assert_eq!(c.len(), m * n, "c is m x n");
        finish.check(c, n);
        // The same operands as a row-major product (panels hold at least `k x n` values).
        let product = MatMul {
            m,
            n,
            k,
            a,
            lda,
            b: &self.data,
        };
        match self.layout {
            Layout::RowMajor => {
                finish.fill_start(c, n);
                product.accumulate(c, Threads::ONE);
                finish.apply_relu(c);
            }
            Layout::Panels => {
                product.check(c);
                #[cfg(target_arch = "x86_64")]
                if x86::available() {
                    // SAFETY: AVX-512F is present; `check` bounds `a` and `c`.
                    return unsafe { x86::run(self, m, a, lda, c, finish) };
                }
                self.run_reference(m, a, lda, c, finish);
            }
        }
    }

    /// The portable reference of [`Self::run`], whatever the layout.
    pub fn run_reference(&self, m: usize, a: &[f32], lda: usize, c: &mut [f32], finish: &Finish) {
        let (k, n) = (self.k, self.n);
        finish.fill_start(c, n);
        for row in 0..m {
            for col in 0..n {
                let sum: f32 = (0..k).map(|i| a[row * lda + i] * self.get(i, col)).sum();
                c[row * n + col] += sum;
            }
        }
        finish.apply_relu(c);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{F32Weights, PANEL};
    use crate::kernels::{fetch_ahead, panel_blocks, unrolled, Finish, TileFinish};

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    /// # Safety
    /// AVX-512F is present; `a` holds `m` rows of `k` values `lda` apart, `c` is `m x n`,
    /// and `w` is in panels.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn run(
        w: &F32Weights,
        m: usize,
        a: &[f32],
        lda: usize,
        c: &mut [f32],
        finish: &Finish,
    ) {
        let (k, n) = (w.k, w.n);
        let panel_len = k * PANEL;
        for panels in panel_blocks(n.div_ceil(PANEL), panel_len * 4) {
            for_row_tiles!(m, 12, |row, TILE| for panel in panels.clone() {
                let col = panel * PANEL;
                tile::<TILE>(
                    &a[row * lda..],
                    lda,
                    k,
                    &w.data[panel * panel_len..][..panel_len],
                    &mut c[row * n + col..],
                    n,
                    (n - col).min(PANEL),
                    TileFinish::at(finish, n, row, col),
                )
            });
        }
    }

    /// `MR` rows of `a` (`lda` apart) times one panel `b` (`k x 32`), finished into `c`
    /// (rows `ldc` apart, `cols` of them kept).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const MR: usize>(
        a: &[f32],
        lda: usize,
        k: usize,
        b: &[f32],
        c: &mut [f32],
        ldc: usize,
        cols: usize,
        finish: TileFinish,
    ) {
        let rows: [&[f32]; MR] = unrolled(|r| &a[r * lda..][..k]);
        finish.prefetch(c, MR, ldc);
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let bp = b.as_ptr();
        for kk in 0..k {
            fetch_ahead(bp.add(kk * PANEL) as *const u8, 2);
            let b0 = _mm512_loadu_ps(bp.add(kk * PANEL));
            let b1 = _mm512_loadu_ps(bp.add(kk * PANEL + 16));
            for r in 0..MR {
                let x = _mm512_set1_ps(*rows[r].get_unchecked(kk));
                acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
            }
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::finish_of_case;
    use crate::kernels::gemm::tests::Lcg;

    /// Every layout, run as the plan runs it, against the reference loops: ragged shapes
    /// around the 12 x 32 tile, every start, with and without the ReLU.
    #[test]
    fn every_layout_runs_like_the_reference() {
        let mut rng = Lcg(23);
        for case in 0..120 {
            let (m, n, k) = if case < 4 {
                // ResNet's 7 x 7 shapes: several blocks of panels, rows past the tiles.
                [
                    (49, 512, 4608),
                    (49, 2048, 512),
                    (49, 512, 2048),
                    (13, 64, 147),
                ][case]
            } else {
                (1 + rng.below(30), 1 + rng.below(80), rng.below(40))
            };
            let lda = k + rng.below(3);
            let a = rng.vec(m * lda);
            let values = rng.vec(k * n);
            let (bias, shortcut, init) = (rng.vec(n), rng.vec(m * n), rng.vec(m * n));
            let finish = finish_of_case(case, &bias, &shortcut);
            let row_major = F32Weights::from_row_major(&values, k, n, Layout::RowMajor);
            let mut expected = init.clone();
            row_major.run_reference(m, &a, lda, &mut expected, &finish);
            for layout in [Layout::RowMajor, Layout::Panels] {
                let weights = F32Weights::from_row_major(&values, k, n, layout);
                let mut ours = init.clone();
                weights.run(m, &a, lda, &mut ours, &finish);
                for (i, (x, y)) in ours.iter().zip(&expected).enumerate() {
                    let tolerance = 1e-5 * (1.0 + k as f32) * (1.0 + y.abs());
                    assert!(
                        (x - y).abs() <= tolerance,
                        "{layout:?} case {case} ({m}x{n}x{k}) at {i}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn panels_hold_every_value_where_get_finds_it() {
        let mut rng = Lcg(4);
        let (k, n) = (7, 45);
        let values = rng.vec(k * n);
        let panels = F32Weights::from_row_major(&values, k, n, Layout::Panels);
        assert_eq!(panels.data.len(), 2 * PANEL * k, "the last panel is padded");
        for (i, &value) in values.iter().enumerate() {
            assert_eq!(panels.get(i / n, i % n), value);
        }
        let nonzero = |values: &[f32]| values.iter().filter(|v| **v != 0.0).count();
        assert_eq!(nonzero(&panels.data), nonzero(&values), "padding is zero");
    }
}
