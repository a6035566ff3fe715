//! f32 matrix product with an accumulating epilogue: `c = c + a * b`, where the caller
//! fills `c` with the bias (and the residual) first, so a convolution's bias and shortcut
//! cost no extra pass.

use super::Threads;

/// Row-major views: `a` is `m x k` with row stride `lda`, `b` is `k x n` (stride `n`),
/// `c` is `m x n` (stride `n`).
pub struct MatMul<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: &'a [f32],
    pub lda: usize,
    pub b: &'a [f32],
}

/// A matrix seen through strides, so a transpose is a view, not a copy.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn at(&self, row: usize, col: usize) -> f32 {
        self.data[row * self.row_stride + col * self.col_stride]
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "view reaches past its data");
        }
    }
}

/// `c = a * b` (or `c += a * b` when `accumulate`), `c` row-major `a.rows x b.cols`.
pub fn product(a: View, b: View, c: &mut [f32], accumulate: bool, threads: Threads) {
    a.check();
    b.check();
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert!(c.len() >= m * n, "c too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let parallelism = match threads.get() {
        1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    };
    // SAFETY: `check` proved every index the strides reach lies inside the slices,
    // and `c` is borrowed mutably so nothing else reads it meanwhile.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The portable reference of [`product`].
pub fn product_reference(a: View, b: View, c: &mut [f32], accumulate: bool) {
    for row in 0..a.rows {
        for col in 0..b.cols {
            let sum: f32 = (0..a.cols).map(|i| a.at(row, i) * b.at(i, col)).sum();
            let out = &mut c[row * b.cols + col];
            *out = if accumulate { *out + sum } else { sum };
        }
    }
}

impl MatMul<'_> {
    /// Panics unless `a`, `b` and `c` hold the rows the product reads and writes.
    pub(crate) fn check(&self, c: &[f32]) {
        assert!(self.lda >= self.k, "lda {} < k {}", self.lda, self.k);
        if self.m > 0 && self.k > 0 {
            assert!(
                self.a.len() >= (self.m - 1) * self.lda + self.k,
                "a too short"
            );
        }
        assert!(self.b.len() >= self.k * self.n, "b too short");
        assert!(c.len() >= self.m * self.n, "c too short");
    }

    /// The portable reference: a plain triple loop.
    pub fn accumulate_reference(&self, c: &mut [f32]) {
        self.check(c);
        for row in 0..self.m {
            for col in 0..self.n {
                let mut sum = 0.0f32;
                for i in 0..self.k {
                    sum += self.a[row * self.lda + i] * self.b[i * self.n + col];
                }
                c[row * self.n + col] += sum;
            }
        }
    }
}

/// The f32 product on ARM with NEON: register tiles of `ROWS x 8` (our kernels: assembly
/// on armv7, intrinsics on aarch64) over blocks of `a` and `b` sized for the Cortex-A7/A53
/// caches. The `gemm` crate is scalar on armv7 and packs both operands on aarch64; here
/// the activations are read in place and the row-major weights with a stride.
#[cfg(any(target_arch = "arm", target_arch = "aarch64"))]
pub(crate) mod tiled {
    use rayon::prelude::*;

    use super::MatMul;
    use crate::kernels::{add_tile, Threads};

    /// Rows of one register tile: 4 x 8 fills armv7's 16 q registers with accumulators
    /// and operands; 8 x 8 takes 26 of aarch64's 32 (16 accumulators, 8 rows' values,
    /// 2 of weights).
    #[cfg(target_arch = "arm")]
    pub(crate) const ROWS: usize = 4;
    #[cfg(target_arch = "aarch64")]
    pub(crate) const ROWS: usize = 8;
    const COLS: usize = 8;
    /// A block of `a` (64 rows x 256 k, 64 KB) stays in L2 while every column panel
    /// passes over it; one panel's share of `b` (256 x 8, 8 KB) stays in L1.
    const BLOCK_ROWS: usize = 64;
    const BLOCK_DEPTH: usize = 256;

    /// One tile's operands, strides in elements.
    #[derive(Clone, Copy)]
    pub(crate) struct Operands {
        pub k: usize,
        pub a: [*const f32; ROWS],
        pub b: *const f32,
        pub ldb: usize,
        pub c: *mut f32,
        pub ldc: usize,
    }

    /// Whether [`tile`] writes a tile of `rows` rows straight into `c`: armv7's one 4 x 8
    /// kernel always writes four (a shorter tile goes through the driver's scratch), while
    /// aarch64 has one kernel per row count, so the last row of a 7 x 7 map
    /// (49 = 6 x 8 + 1) costs one row's work, not eight.
    fn writes_in_place(rows: usize) -> bool {
        cfg!(target_arch = "aarch64") || rows == ROWS
    }

    /// `c[rows x 8] += a[rows x k] * b[k x 8]` for `rows <= ROWS` (armv7: always `ROWS`
    /// rows, see [`writes_in_place`]).
    ///
    /// # Safety
    /// The CPU has NEON (the table lists the kernel); each `a[r]` holds `k` floats (a short tile repeats its last
    /// row), `b` `k` rows of eight `ldb` apart, `c` the rows written, eight `ldc` apart.
    unsafe fn tile(rows: usize, t: Operands) {
        #[cfg(target_arch = "arm")]
        {
            let _ = rows;
            crate::kernels::arm::sgemm_4x8(&crate::kernels::arm::F32Tile {
                k: t.k,
                a: t.a,
                b: t.b,
                ldb: t.ldb * 4,
                c: t.c,
                ldc: t.ldc * 4,
            });
        }
        #[cfg(target_arch = "aarch64")]
        {
            use crate::kernels::aarch64::sgemm::tile_rows;
            match rows {
                1 => tile_rows::<1>(t),
                2 => tile_rows::<2>(t),
                3 => tile_rows::<3>(t),
                4 => tile_rows::<4>(t),
                5 => tile_rows::<5>(t),
                6 => tile_rows::<6>(t),
                7 => tile_rows::<7>(t),
                _ => tile_rows::<8>(t),
            }
        }
    }

    /// `c += a * b`; with several threads and enough rows, bands of rows in parallel (the
    /// plan's convolutions split their own bands and call with one thread).
    pub fn accumulate(p: &MatMul, c: &mut [f32], threads: Threads) {
        let n = p.n;
        if threads.get() == 1 || p.m < 2 * BLOCK_ROWS {
            return single(p, c);
        }
        let rows_per_band = p.m.div_ceil(threads.get()).next_multiple_of(ROWS);
        c[..p.m * n]
            .par_chunks_mut(rows_per_band * n)
            .enumerate()
            .for_each(|(band, c)| {
                let first_row = band * rows_per_band;
                let band = MatMul {
                    m: c.len() / n,
                    n,
                    k: p.k,
                    a: &p.a[first_row * p.lda..],
                    lda: p.lda,
                    b: p.b,
                };
                single(&band, c)
            });
    }

    fn single(p: &MatMul, c: &mut [f32]) {
        let (m, n, k, lda) = (p.m, p.n, p.k, p.lda);
        // The kernel reads eight columns of `b`: a ragged last panel is copied, zero-padded.
        let ragged = n % COLS;
        let padded: Vec<f32> = if ragged == 0 {
            Vec::new()
        } else {
            let mut panel = vec![0.0; k * COLS];
            for (kk, row) in panel.chunks_exact_mut(COLS).enumerate() {
                row[..ragged].copy_from_slice(&p.b[kk * n + n - ragged..][..ragged]);
            }
            panel
        };
        for depth in (0..k).step_by(BLOCK_DEPTH) {
            let depth_len = (k - depth).min(BLOCK_DEPTH);
            for first_row in (0..m).step_by(BLOCK_ROWS) {
                let block_end = (first_row + BLOCK_ROWS).min(m);
                for col in (0..n).step_by(COLS) {
                    let cols = (n - col).min(COLS);
                    let (b, ldb) = if cols == COLS {
                        (&p.b[depth * n + col..], n)
                    } else {
                        (&padded[depth * COLS..], COLS)
                    };
                    for row in (first_row..block_end).step_by(ROWS) {
                        let rows = (block_end - row).min(ROWS);
                        // A short tile repeats its last row; only real rows are kept.
                        let mut operands = Operands {
                            k: depth_len,
                            a: crate::kernels::unrolled(|r| {
                                p.a[(row + r.min(rows - 1)) * lda + depth..].as_ptr()
                            }),
                            b: b.as_ptr(),
                            ldb,
                            c: c[row * n + col..].as_mut_ptr(),
                            ldc: n,
                        };
                        if cols == COLS && writes_in_place(rows) {
                            // SAFETY: the table lists the kernel for this CPU (NEON); the rows hold
                            // `depth + depth_len <= k` floats (`MatMul::check`), `b` has
                            // `depth_len` rows of 8 from `col` (`col + 8 <= n`), and `c`
                            // `rows` rows of 8 from `col`.
                            unsafe { tile(rows, operands) };
                        } else {
                            let mut out = [0.0f32; ROWS * COLS];
                            (operands.c, operands.ldc) = (out.as_mut_ptr(), COLS);
                            // SAFETY: as above, with `out` as the rows of `c`.
                            unsafe { tile(rows, operands) };
                            add_tile(&out, COLS, rows, cols, c, row * n + col, n);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small deterministic generator, so failures reproduce without a seed file.
    pub(crate) struct Lcg(pub u64);

    impl Lcg {
        pub fn next_u32(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }

        /// Uniform in [-1, 1).
        pub fn next_f32(&mut self) -> f32 {
            self.next_u32() as f32 / (1u64 << 31) as f32 * 2.0 - 1.0
        }

        pub fn below(&mut self, bound: usize) -> usize {
            self.next_u32() as usize % bound
        }

        pub fn vec(&mut self, len: usize) -> Vec<f32> {
            (0..len).map(|_| self.next_f32()).collect()
        }
    }

    fn check_against_reference(m: usize, n: usize, k: usize, lda: usize, threads: usize) {
        let mut rng = Lcg((m * 1_000_003 + n * 1009 + k) as u64);
        let a = rng.vec(m.saturating_sub(1) * lda + k);
        let b = rng.vec(k * n);
        let init = rng.vec(m * n);
        let product = MatMul {
            m,
            n,
            k,
            a: &a,
            lda,
            b: &b,
        };
        let mut reference = init.clone();
        product.accumulate_reference(&mut reference);
        for (name, accumulate) in row_major_kernels() {
            let mut fast = init.clone();
            accumulate(&product, &mut fast, Threads(threads));
            for (i, (x, y)) in fast.iter().zip(&reference).enumerate() {
                let tolerance = 1e-5 * (k as f32 + 1.0);
                assert!(
                    (x - y).abs() <= tolerance,
                    "{name}: m={m} n={n} k={k} lda={lda}: element {i}: {x} vs {y}"
                );
            }
        }
    }

    /// The row-major f32 kernels this CPU runs (the panel kernels are tested in
    /// `f32_weights`).
    type Accumulate = fn(&MatMul, &mut [f32], Threads);

    fn row_major_kernels() -> Vec<(&'static str, Accumulate)> {
        let variants = crate::kernels::table::variants("f32", |k| k.f32, |k| k.name);
        let row_major = variants.iter().filter_map(|kernel| match kernel.run {
            crate::kernels::f32_weights::F32Run::RowMajor(run) => Some((kernel.name, run)),
            crate::kernels::f32_weights::F32Run::Panels(_) => None,
        });
        let kernels: Vec<_> = row_major.collect();
        assert!(!kernels.is_empty(), "the portable level's is row-major");
        kernels
    }

    #[test]
    fn matches_the_reference_on_random_and_ragged_shapes() {
        let mut rng = Lcg(7);
        for _ in 0..200 {
            let (m, n, k) = (1 + rng.below(40), 1 + rng.below(70), rng.below(60));
            let lda = k + rng.below(3);
            check_against_reference(m, n, k, lda, 1 + rng.below(2));
        }
    }

    #[test]
    fn matches_the_reference_on_resnet_shapes() {
        // 3x3 64->64 at 14x14 (im2col), 1x1 2048->512 at 7x7, the classifier GEMV.
        check_against_reference(196, 64, 576, 576, 1);
        check_against_reference(49, 512, 2048, 2048, 2);
        check_against_reference(1, 1000, 2048, 2048, 1);
        // Enough rows for bands in parallel (ARM's tiles split them themselves), ragged n.
        check_against_reference(301, 44, 300, 303, 2);
    }

    #[test]
    fn empty_dimensions_leave_the_output_alone() {
        let mut c = vec![3.0; 6];
        let product = MatMul {
            m: 2,
            n: 3,
            k: 0,
            a: &[],
            lda: 0,
            b: &[],
        };
        for (name, accumulate) in row_major_kernels() {
            accumulate(&product, &mut c, Threads::ONE);
            assert_eq!(c, vec![3.0; 6], "{name}");
        }
    }

    /// Transposed views (the gradients of a product) and overwrite vs accumulate.
    #[test]
    fn strided_products_match_the_reference() {
        let mut rng = Lcg(21);
        for (m, n, k) in [(1, 1, 1), (7, 5, 300), (64, 33, 17), (129, 3, 40)] {
            for (transpose_a, transpose_b, accumulate) in [
                (false, false, false),
                (true, false, true),
                (false, true, false),
                (true, true, true),
            ] {
                let a = rng.vec(m * k);
                let b = rng.vec(k * n);
                let a = if transpose_a {
                    View::row_major(&a, k, m).t()
                } else {
                    View::row_major(&a, m, k)
                };
                let b = if transpose_b {
                    View::row_major(&b, n, k).t()
                } else {
                    View::row_major(&b, k, n)
                };
                let init = rng.vec(m * n);
                let (mut fast, mut reference) = (init.clone(), init);
                product(a, b, &mut fast, accumulate, Threads(2));
                product_reference(a, b, &mut reference, accumulate);
                for (x, y) in fast.iter().zip(&reference) {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                        "{m}x{n}x{k}: {x} vs {y}"
                    );
                }
            }
        }
    }
}
