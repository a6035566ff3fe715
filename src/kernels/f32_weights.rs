//! A product's f32 right-hand matrix (a convolution's weights), laid out once at load for
//! the kernel that will run it ([`F32Kernel`], from the kernel table), and that product
//! with its [`Finish`]. Two kinds of kernel:
//! - panel kernels (x86 with AVX2+FMA or AVX-512, `x86_64/`): panels of 32 columns, each
//!   k's 32 weights side by side, run by register tiles that add the bias, the shortcut
//!   and the ReLU as they store, and that read a convolution's padded input rows in place
//!   ([`F32Weights::run_padded`]) or share a product by columns
//!   ([`F32Weights::run_columns`]). The `gemm` crate they replace packs the weights
//!   again in every call.
//! - row-major kernels (our NEON tiles on ARM, the `gemm` crate elsewhere): `c += a * b`
//!   between the start and ReLU passes.

use std::ops::Range;

use super::aligned::AlignedVec;
use super::gemm::MatMul;
use super::im2col::PaddedRows;
use super::{Finish, Threads};

/// Columns of one panel: two 16-lane or four 8-lane registers.
pub(crate) const PANEL: usize = 32;

/// Rows of the AVX-512 kernel's main tile (`x86_64/f32.rs`), which the plan's bands and
/// in-place thresholds count in: 28 accumulators, two weight registers and two
/// broadcasts fill the 32 registers. ResNet's maps (112, 56, 28, 14 and 7 pixels square)
/// are all whole multiples of 14 rows but the last one, of 49 pixels.
pub const TILE_ROWS: usize = 14;

/// One f32 product kernel.
#[derive(Debug)]
pub struct F32Kernel {
    pub name: &'static str,
    pub(crate) run: F32Run,
}

/// How a kernel reads its weights and finishes its sums.
#[derive(Debug)]
pub(crate) enum F32Run {
    /// Row-major weights; `c += a * b`, the start and the ReLU passes around it.
    RowMajor(fn(&MatMul, &mut [f32], Threads)),
    /// Weights in panels of [`PANEL`] columns; the finish in the stores. (x86 only, but
    /// for the reference the tests run everywhere.)
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Panels(PanelKernel),
}

/// A panel kernel: `c = finish(start + left * w)` over the columns of `panels`.
///
/// # Safety
/// The CPU runs the kernel (the table lists it) and the product's operands hold what it
/// reads and writes ([`PanelProduct`]).
pub(crate) type PanelKernel = unsafe fn(&PanelProduct);

/// The operands of a panel kernel.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct PanelProduct<'a> {
    /// The weights, in panels.
    pub w: &'a F32Weights,
    /// Rows of the product.
    pub m: usize,
    /// `m` rows of `w.k` values (bounds checked by the caller).
    pub left: Left<'a>,
    /// `m x w.n` values, of which this call alone reads and writes the columns of
    /// `panels`.
    pub c: *mut f32,
    pub finish: &'a Finish<'a>,
    pub panels: Range<usize>,
}

impl F32Kernel {
    /// Whether the kernel reads panels (and so runs padded rows and columns).
    pub fn reads_panels(&self) -> bool {
        matches!(self.run, F32Run::Panels(_))
    }
}

/// The left-hand rows of a panel product.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum Left<'a> {
    /// `m x k`, rows `lda` apart.
    Matrix { a: &'a [f32], lda: usize },
    /// Output pixels from `first_pixel` on, read in place kernel row by kernel row
    /// (whole tiles in image rows, see [`F32Weights::run_padded`]).
    Padded {
        rows: &'a PaddedRows<'a>,
        first_pixel: usize,
    },
}

impl Left<'_> {
    /// Value `i` of row `row` (pixel `first_pixel + row`) of the lowered left matrix.
    #[cfg(test)]
    pub(crate) fn value(&self, row: usize, i: usize) -> f32 {
        match *self {
            Left::Matrix { a, lda } => a[row * lda + i],
            Left::Padded { rows, first_pixel } => {
                let row_len = rows.kernel_row_len();
                let start = rows.kernel_row_start(first_pixel + row, i / row_len);
                rows.data[start + i % row_len]
            }
        }
    }
}

/// A `k x n` f32 matrix in the layout of the kernel that multiplies by it.
#[derive(Debug, Clone)]
pub struct F32Weights {
    pub(crate) k: usize,
    pub(crate) n: usize,
    kernel: &'static F32Kernel,
    pub(crate) data: AlignedVec<f32>,
}

impl F32Weights {
    /// A `k x n` matrix of zeros laid out for `kernel`; [`Self::set`] fills it.
    pub fn zeros(k: usize, n: usize, kernel: &'static F32Kernel) -> Self {
        let len = match kernel.reads_panels() {
            false => k * n,
            true => n.div_ceil(PANEL) * PANEL * k,
        };
        Self {
            k,
            n,
            kernel,
            data: AlignedVec::zeroed(len),
        }
    }

    pub fn from_row_major(values: &[f32], k: usize, n: usize, kernel: &'static F32Kernel) -> Self {
        assert_eq!(values.len(), k * n, "values are k x n");
        let mut weights = Self::zeros(k, n, kernel);
        for (i, &value) in values.iter().enumerate() {
            weights.set(i / n, i % n, value);
        }
        weights
    }

    /// Where the value at `row`, `col` lies in `data`.
    #[inline]
    fn index(&self, row: usize, col: usize) -> usize {
        debug_assert!(row < self.k && col < self.n);
        match self.kernel.reads_panels() {
            false => row * self.n + col,
            true => (col / PANEL * self.k + row) * PANEL + col % PANEL,
        }
    }

    #[inline]
    pub fn set(&mut self, row: usize, col: usize, value: f32) {
        let at = self.index(row, col);
        self.data[at] = value;
    }

    /// Writes column `col`, `values` (one per row) times `scale`: one output channel's
    /// kernel, in the lowered product's row order. A strided walk; `set` per value, with
    /// its index computed each time, was half of EfficientNet-Lite0's load on a Pi.
    pub fn set_column(&mut self, col: usize, values: &[f32], scale: f32) {
        assert!(
            values.len() == self.k && col < self.n,
            "a column of {} rows",
            self.k
        );
        if self.k == 0 {
            return;
        }
        let stride = match self.kernel.reads_panels() {
            false => self.n,
            true => PANEL,
        };
        let first = self.index(0, col);
        let column = self.data[first..].iter_mut().step_by(stride);
        for (at, &value) in column.zip(values) {
            *at = value * scale;
        }
    }

    /// Columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes the weights take.
    pub fn bytes(&self) -> usize {
        self.data.len() * size_of::<f32>()
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
        product.check(c);
        match self.kernel.run {
            F32Run::RowMajor(accumulate) => {
                finish.fill_start(c, n);
                if m > 0 && n > 0 && k > 0 {
                    accumulate(&product, c, Threads::ONE);
                }
                finish.apply_relu(c);
            }
            F32Run::Panels(run) => {
                let product = PanelProduct {
                    w: self,
                    m,
                    left: Left::Matrix { a, lda },
                    c: c.as_mut_ptr(),
                    finish,
                    panels: 0..n.div_ceil(PANEL),
                };
                // SAFETY: the table lists the kernel for this CPU; `check` bounds `a` and
                // `c`, which this call borrows whole.
                unsafe { run(&product) }
            }
        }
    }

    /// Whether [`Self::run_columns`] and [`Self::run_padded`] run here: the weights are in
    /// panels (their kernel reads panels).
    pub fn runs_columns(&self) -> bool {
        self.kernel.reads_panels()
    }

    /// The panel kernel, for the calls that need one.
    fn panel_kernel(&self) -> PanelKernel {
        match self.kernel.run {
            F32Run::Panels(run) => run,
            F32Run::RowMajor(_) => panic!("{} reads no panels", self.kernel.name),
        }
    }

    /// [`Self::run`] on the lowered rows of output pixels `first_pixel..first_pixel + m`
    /// of a convolution, read in place from its padded input `rows` rather than lowered
    /// first (3 x 3, stride 1: nine copies of every input value): ResNet-50's stem and its
    /// 3 x 3 layers of 56, 28 and 14 pixels square, the small CNN's convolutions. Row
    /// tiles end where image rows do (a row whose width is no multiple of the tile's rows
    /// ends in a shorter one), unless the rows continue into the next image row's
    /// ([`PaddedRows::valid_in_place`]).
    pub fn run_padded(
        &self,
        first_pixel: usize,
        m: usize,
        rows: &PaddedRows,
        c: &mut [f32],
        finish: &Finish,
    ) {
        let run = self.panel_kernel();
        assert_eq!(self.k, rows.kernel * rows.kernel_row_len(), "k is a patch");
        let first_y = first_pixel / rows.out_width.max(1);
        assert!(first_y * rows.stride >= rows.first_row, "rows start above");
        assert_eq!(c.len(), m * self.n, "c is m x n");
        finish.check(c, self.n);
        if m == 0 {
            return;
        }
        let last = rows.kernel_row_start(first_pixel + m - 1, rows.kernel - 1);
        assert!(
            last + rows.kernel_row_len() <= rows.data.len(),
            "rows end below"
        );
        let product = PanelProduct {
            w: self,
            m,
            left: Left::Padded { rows, first_pixel },
            c: c.as_mut_ptr(),
            finish,
            panels: 0..self.n.div_ceil(PANEL),
        };
        // SAFETY: the table lists the kernel for this CPU; the asserts above bound every
        // kernel row of every pixel (the last one lies furthest) and `c`, which this call
        // borrows whole.
        unsafe { run(&product) };
    }

    /// Splits the columns into `parts` ranges of whole panels (fewer when there are fewer
    /// panels), for [`Self::run_columns`] on as many threads.
    pub fn column_parts(&self, parts: usize) -> Vec<Range<usize>> {
        let panels = self.n.div_ceil(PANEL);
        let per_part = panels.div_ceil(parts.max(1)).max(1);
        (0..panels)
            .step_by(per_part)
            .map(|first| first * PANEL..((first + per_part) * PANEL).min(self.n))
            .collect()
    }

    /// [`Self::run`] on the columns `columns` only (one of [`Self::column_parts`]), so
    /// that threads can share a product of few rows by columns: each one then reads its
    /// share of the weights, where sharing by rows has every thread read them all.
    ///
    /// # Safety
    /// [`Self::runs_columns`]; `c` points at `m x n` values (rows of `n`) which stay
    /// valid meanwhile, of which no one else reads or writes the columns `columns`.
    pub unsafe fn run_columns(
        &self,
        m: usize,
        a: &[f32],
        lda: usize,
        c: *mut f32,
        finish: &Finish,
        columns: Range<usize>,
    ) {
        let run = self.panel_kernel();
        assert!(columns.start.is_multiple_of(PANEL) && columns.end <= self.n);
        assert!(m == 0 || a.len() >= (m - 1) * lda + self.k, "a is m x k");
        finish.check_len(m * self.n, self.n);
        let product = PanelProduct {
            w: self,
            m,
            left: Left::Matrix { a, lda },
            c,
            finish,
            panels: columns.start / PANEL..columns.end.div_ceil(PANEL),
        };
        // SAFETY: the table lists the kernel for this CPU; `a`, the bias and the
        // shortcut are bounded above; `c` and its columns are the caller's word.
        run(&product);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::finish_of_case;
    use crate::kernels::gemm::tests::Lcg;
    use crate::kernels::im2col::Window;
    use crate::kernels::portable::f32::PANELS_REFERENCE;
    use crate::kernels::table::variants;

    /// Every f32 kernel this CPU runs, and the panel layout's reference.
    fn kernels() -> Vec<&'static F32Kernel> {
        let mut kernels = variants("f32", |k| k.f32, |k| k.name);
        kernels.push(&PANELS_REFERENCE);
        kernels
    }

    /// The kernels that read panels (padded rows in place, columns): this CPU's, and the
    /// reference, so the drivers' reading of padded rows is tested on every CPU.
    fn panel_kernels() -> Vec<&'static F32Kernel> {
        kernels().into_iter().filter(|k| k.reads_panels()).collect()
    }

    /// Every kernel, run as the plan runs it, against the reference loops: ragged shapes
    /// around the tiles, every start, with and without the ReLU.
    #[test]
    fn every_kernel_runs_like_the_reference() {
        let kernels = kernels();
        let mut rng = Lcg(23);
        for case in 0..120 {
            let (m, n, k) = if case < 6 {
                // ResNet's 7 x 7 shapes: several blocks of panels, rows past the tiles;
                // then products of several k chunks through the ReLU.
                [
                    (49, 512, 4608),
                    (49, 2048, 512),
                    (49, 512, 2048),
                    (13, 64, 147),
                    (15, 33, 1030),
                    (29, 70, 2100),
                ][case]
            } else {
                (1 + rng.below(30), 1 + rng.below(80), rng.below(40))
            };
            let lda = k + rng.below(3);
            let a = rng.vec(m * lda);
            let values = rng.vec(k * n);
            let (bias, shortcut, init) = (rng.vec(n), rng.vec(m * n), rng.vec(m * n));
            let finish = finish_of_case(case, &bias, &shortcut);
            let reference = F32Weights::from_row_major(&values, k, n, &PANELS_REFERENCE);
            let mut expected = init.clone();
            reference.run_reference(m, &a, lda, &mut expected, &finish);
            for &kernel in &kernels {
                let name = kernel.name;
                let weights = F32Weights::from_row_major(&values, k, n, kernel);
                let mut ours = init.clone();
                weights.run(m, &a, lda, &mut ours, &finish);
                let mut by_columns = init.clone();
                if weights.runs_columns() {
                    for columns in weights.column_parts(1 + (case / 3) % 3) {
                        // SAFETY: `by_columns` is m x n; the parts run one at a time.
                        unsafe {
                            let c = by_columns.as_mut_ptr();
                            weights.run_columns(m, &a, lda, c, &finish, columns);
                        }
                    }
                } else {
                    by_columns.clone_from(&ours);
                }
                for (i, ((x, y), z)) in ours.iter().zip(&expected).zip(&by_columns).enumerate() {
                    let tolerance = 1e-5 * (1.0 + k as f32) * (1.0 + y.abs());
                    assert!(
                        (x - y).abs() <= tolerance,
                        "{name} case {case} ({m}x{n}x{k}) at {i}: {x} vs {y}"
                    );
                    assert_eq!(x, z, "{name} case {case} by columns at {i}");
                }
            }
        }
    }

    /// Convolutions read in place from their padded rows against the same rows lowered:
    /// 3 x 3, 5 x 5 and 7 x 7 windows, strides 1 and 2, channels not a multiple of 4,
    /// products of one and of several k chunks, bands that start and end inside image rows.
    #[test]
    fn padded_rows_run_like_their_lowered_rows() {
        for kernel in panel_kernels() {
            padded_rows_run_like_their_lowered_rows_on(kernel);
        }
    }

    fn padded_rows_run_like_their_lowered_rows_on(f32_kernel: &'static F32Kernel) {
        let mut rng = Lcg(31);
        let cases = [
            // (height, width, channels, kernel, stride, padding, n, first_pixel, pixels)
            (4, 14, 3, 3, 1, 1, 40, 0, 56),
            (5, 28, 16, 3, 1, 1, 64, 14, 98),
            (3, 14, 130, 3, 1, 1, 33, 0, 42),
            (6, 14, 512, 3, 1, 1, 32, 28, 42),
            (5, 28, 9, 5, 1, 2, 70, 42, 56),
            (9, 28, 3, 7, 2, 3, 64, 14, 56),
            (8, 56, 5, 3, 2, 1, 20, 0, 112),
            // Image rows of no whole tiles, unpadded windows, bands starting inside rows.
            (7, 37, 5, 3, 1, 0, 40, 3, 100),
            (6, 19, 32, 3, 1, 1, 33, 5, 60),
            (9, 20, 3, 3, 1, 0, 32, 0, 126),
            (10, 30, 4, 5, 2, 0, 20, 7, 30),
            (5, 16, 512, 3, 1, 0, 32, 0, 42),
        ];
        for (case, &(height, width, channels, kernel, stride, padding, n, first_pixel, pixels)) in
            cases.iter().enumerate()
        {
            let window = Window {
                height,
                width,
                channels,
                kernel,
                stride,
                padding,
            };
            let input = rng.vec(height * width * channels);
            let k = window.patch_len();
            let values = rng.vec(k * n);
            let weights = F32Weights::from_row_major(&values, k, n, f32_kernel);
            let (bias, shortcut) = (rng.vec(n), rng.vec(pixels * n));
            let finish = finish_of_case(case, &bias, &shortcut);
            let mut lowered = vec![f32::NAN; pixels * k];
            window.lower_rows(&input, first_pixel, &mut lowered);
            let mut expected = vec![0.0; pixels * n];
            weights.run(pixels, &lowered, k, &mut expected, &finish);
            let mut scratch = vec![f32::NAN; window.padded_len(pixels)];
            let rows = window.pad_rows(&input, first_pixel, pixels, &mut scratch);
            let mut ours = vec![0.0; pixels * n];
            weights.run_padded(first_pixel, pixels, &rows, &mut ours, &finish);
            for (i, (x, y)) in ours.iter().zip(&expected).enumerate() {
                // Chunks of whole kernel rows end elsewhere than those of lowered rows.
                let tolerance = 1e-5 * (1.0 + k as f32) * (1.0 + y.abs());
                assert!(
                    (x - y).abs() <= tolerance,
                    "{} case {case} at {i}: {x} vs {y}",
                    f32_kernel.name
                );
            }
        }
    }

    /// Valid windows read in place with their output rows as wide as the input's: tiles
    /// run across image rows, and every pixel but the extra ones ending each row is the
    /// lowered rows' product.
    #[test]
    fn valid_rows_in_place_run_across_image_rows() {
        for kernel in panel_kernels() {
            valid_rows_in_place_run_across_image_rows_on(kernel);
        }
    }

    fn valid_rows_in_place_run_across_image_rows_on(f32_kernel: &'static F32Kernel) {
        let mut rng = Lcg(32);
        // (height, width, channels, kernel, n)
        let cases = [
            (7, 37, 5, 3, 40),
            (9, 36, 32, 3, 64),
            (4, 150, 3, 3, 32),
            (6, 20, 17, 5, 33),
            (4, 16, 512, 3, 32),
            (3, 3, 2, 3, 16),
        ];
        for (case, &(height, width, channels, kernel, n)) in cases.iter().enumerate() {
            let window = Window {
                height,
                width,
                channels,
                kernel,
                stride: 1,
                padding: 0,
            };
            let input = rng.vec(height * width * channels);
            let k = window.patch_len();
            let values = rng.vec(k * n);
            let weights = F32Weights::from_row_major(&values, k, n, f32_kernel);
            let (out_height, out_width) = (window.out_height(), window.out_width());
            let bias = rng.vec(n);
            let finish = finish_of_case([1, 4][case % 2], &bias, &[]);
            let mut lowered = vec![f32::NAN; window.rows() * k];
            window.lower_rows(&input, 0, &mut lowered);
            let mut expected = vec![0.0; window.rows() * n];
            weights.run(window.rows(), &lowered, k, &mut expected, &finish);
            let rows = PaddedRows::valid_in_place(&input, width, kernel, channels);
            let pixels = rows.valid_pixels(out_height);
            let mut ours = vec![0.0; pixels * n];
            weights.run_padded(0, pixels, &rows, &mut ours, &finish);
            for (i, y) in expected.iter().enumerate() {
                let (pixel, column) = (i / n, i % n);
                let (row, x) = (pixel / out_width, pixel % out_width);
                let ours = ours[(row * width + x) * n + column];
                let tolerance = 1e-5 * (1.0 + k as f32) * (1.0 + y.abs());
                assert!(
                    (ours - y).abs() <= tolerance,
                    "{} case {case} at {i}: {ours} vs {y}",
                    f32_kernel.name
                );
            }
        }
    }

    #[test]
    fn a_product_of_no_rows_writes_nothing() {
        for kernel in kernels() {
            let weights = F32Weights::from_row_major(&[1.0; 6 * 40], 6, 40, kernel);
            weights.run(0, &[], 6, &mut [], &Finish::ACCUMULATE);
        }
    }

    #[test]
    fn column_parts_are_whole_panels_covering_every_column_once() {
        for (n, parts) in [(45, 2), (64, 2), (512, 3), (20, 4), (2048, 2)] {
            let weights = F32Weights::zeros(3, n, &PANELS_REFERENCE);
            let ranges = weights.column_parts(parts);
            assert!(ranges.len() <= parts);
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(n));
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert_eq!(pair[0].end % PANEL, 0);
            }
        }
    }

    #[test]
    fn panels_hold_every_value_where_get_finds_it() {
        let mut rng = Lcg(4);
        let (k, n) = (7, 45);
        let values = rng.vec(k * n);
        let panels = F32Weights::from_row_major(&values, k, n, &PANELS_REFERENCE);
        assert_eq!(panels.data.len(), 2 * PANEL * k, "the last panel is padded");
        for (i, &value) in values.iter().enumerate() {
            assert_eq!(panels.get(i / n, i % n), value);
        }
        let nonzero = |values: &[f32]| values.iter().filter(|v| **v != 0.0).count();
        assert_eq!(nonzero(&panels.data), nonzero(&values), "padding is zero");
    }

    /// Columns written whole land where `set` puts each value, in both layouts.
    #[test]
    fn set_column_writes_what_set_writes() {
        let mut rng = Lcg(8);
        let (k, n) = (5, 45);
        let values = rng.vec(k * n);
        for kernel in kernels() {
            let mut by_value = F32Weights::zeros(k, n, kernel);
            let mut by_column = F32Weights::zeros(k, n, kernel);
            for (col, column) in values.chunks_exact(k).enumerate() {
                for (row, &value) in column.iter().enumerate() {
                    by_value.set(row, col, value * 0.5);
                }
                by_column.set_column(col, column, 0.5);
            }
            assert_eq!(by_value.data[..], by_column.data[..], "{}", kernel.name);
        }
    }
}
