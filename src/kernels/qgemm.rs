//! int8 matrix products for quantized convolutions: u8 activations (taken after a ReLU,
//! so zero point 0) times i8 weights (symmetric, one scale per output channel), i32
//! accumulation, and the dequantizing epilogue `c += acc * scale[col] * row_scale[row]`
//! (activations are quantized row by row, one scale each) fused into the
//! store. [`Kernel::run`] starts the sums at the bias (plus a shortcut) and ends them in
//! the ReLU ([`Finish`]): the x86 kernels in the same store, the others in passes.
//!
//! The kernels, one per instruction set, live in the architectures' folders (`x86_64/`,
//! `aarch64/`, `arm/`; the reference in `portable/`) and are chosen once per process by
//! the kernel table ([`super::table`]). A kernel's `max_activation` says what range of
//! activations it takes: those that multiply activations as i8 (`avx2`, the NEON ones)
//! take 0..127, so all kernels of one CPU family give equal sums.

use std::ops::Range;

use super::aligned::AlignedVec;
use super::Finish;

/// Output columns per packed weight panel.
pub const PANEL: usize = 32;
/// Bytes of one packed k-quad of a panel: 32 columns x 4 consecutive k.
pub(crate) const QUAD_BYTES: usize = PANEL * 4;

/// Weights `K x N`, packed once at load: panels of 32 columns; in each, k in groups of
/// four, so one 64-byte load feeds 16 columns x 4 k to `vpdpbusd`. Padding is zero.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) quads: usize,
    // Read by the SIMD kernels.
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")),
        allow(dead_code)
    )]
    pub(crate) panels: usize,
    data: AlignedVec<i8>,
}

impl PackedWeights {
    /// Packs row-major `K x N` i8 weights.
    pub fn pack(weights: &[i8], k: usize, n: usize) -> Self {
        assert_eq!(weights.len(), k * n, "weights are K x N");
        Self::pack_columns(k, n, |col, column| {
            for (kk, value) in column.iter_mut().enumerate() {
                *value = weights[kk * n + col];
            }
        })
    }

    /// Packs a `K x N` matrix given column by column: `fill(col, column)` writes the `K`
    /// values of column `col` (a convolution's kernel for one output channel).
    pub fn pack_columns(k: usize, n: usize, mut fill: impl FnMut(usize, &mut [i8])) -> Self {
        let (quads, panels) = (k.div_ceil(4), n.div_ceil(PANEL));
        let mut data = AlignedVec::zeroed(panels * quads * QUAD_BYTES);
        let mut column = vec![0i8; k];
        for col in 0..n {
            fill(col, &mut column);
            let (panel, lane) = (col / PANEL, col % PANEL);
            let base = panel * quads * QUAD_BYTES + lane * 4;
            // Whole quads as fixed-size moves (a slice copy of a run-time length called
            // `memcpy` for every four bytes: most of the int8 load on a Pi), then the rest.
            let whole = column.chunks_exact(4);
            let rest = whole.remainder();
            for (quad, values) in whole.enumerate() {
                let at = base + quad * QUAD_BYTES;
                data[at..at + 4].copy_from_slice(values);
            }
            if !rest.is_empty() {
                let at = base + (k / 4) * QUAD_BYTES;
                data[at..at + rest.len()].copy_from_slice(rest);
            }
        }
        Self {
            k,
            n,
            quads,
            panels,
            data,
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// The weight at row `kk`, column `col` (for the reference kernel and tests).
    pub(crate) fn get(&self, kk: usize, col: usize) -> i8 {
        let (panel, lane) = (col / PANEL, col % PANEL);
        self.data[(panel * self.quads + kk / 4) * QUAD_BYTES + lane * 4 + kk % 4]
    }

    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")),
        allow(dead_code)
    )]
    pub(crate) fn panel(&self, panel: usize) -> &[i8] {
        &self.data[panel * self.quads * QUAD_BYTES..(panel + 1) * self.quads * QUAD_BYTES]
    }

    /// Bytes held (for memory accounting).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The panels in blocks that stay in cache: see [`super::panel_blocks`].
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    pub(crate) fn panel_blocks(&self) -> impl Iterator<Item = Range<usize>> {
        super::panel_blocks(self.panels, self.quads * QUAD_BYTES)
    }
}

/// `c (m x n, f32) += (a (m x k, u8, row stride lda) * b) as f32 * scale[col] * row_scale[row]`.
pub struct QMatMul<'a> {
    pub m: usize,
    pub a: &'a [u8],
    pub lda: usize,
    pub b: &'a PackedWeights,
    pub scale: &'a [f32],
    pub row_scale: &'a [f32],
}

impl QMatMul<'_> {
    pub(crate) fn check(&self, c: &[f32]) {
        let (k, n) = (self.b.k, self.b.n);
        assert!(self.lda >= k, "lda {} < k {k}", self.lda);
        if self.m > 0 {
            assert!(self.a.len() >= (self.m - 1) * self.lda + k, "a too short");
        }
        assert_eq!(self.scale.len(), n, "one scale per column");
        assert!(self.row_scale.len() >= self.m, "one scale per row");
        assert!(c.len() >= self.m * n, "c too short");
    }
}

/// One row tile of a product: rows `row..row + rows` times the columns
/// `first..first + cols` of one panel, as [`for_each_tile`] hands them to a kernel.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) struct QTile<'t> {
    pub p: &'t QMatMul<'t>,
    pub row: usize,
    pub first: usize,
    pub cols: usize,
    /// The panel's packed weights from the group of the tile's first column.
    pub b: &'t [i8],
    /// The output from the tile's first row and column, rows [`Self::ldc`] apart.
    pub c: &'t mut [f32],
}

#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
impl<'t> QTile<'t> {
    pub fn k(&self) -> usize {
        self.p.b.k
    }

    /// Output values from one row to the next.
    pub fn ldc(&self) -> usize {
        self.p.b.n
    }

    /// The columns' weight scales, from the tile's first column.
    pub fn scale(&self) -> &'t [f32] {
        &self.p.scale[self.first..]
    }

    /// The activation scale of the tile's row `r`.
    pub fn row_scale(&self, r: usize) -> f32 {
        self.p.row_scale[self.row + r]
    }

    /// The activations of the tile's `MR` rows, `k` each.
    #[inline(always)]
    pub fn rows<const MR: usize>(&self) -> [&'t [u8]; MR] {
        let (p, k) = (self.p, self.k());
        super::unrolled(|r| &p.a[(self.row + r) * p.lda..][..k])
    }
}

/// Runs `$body` with `$rows` and `$tile` (a [`QTile`]) for every tile of a product `$p`
/// with an output `$c`: the panels in blocks that stay in cache; in each block, row tiles
/// of the `$sizes` listed, largest first (as many of each as fit; the last size must be
/// 1), each over the block's panels in groups of `$group` columns (a divisor of
/// [`PANEL`]). The body dispatches `$rows` to the kernel's register tiles. A macro, not a
/// function taking a closure: a closure has none of the target features of the kernel
/// calling it, so its tiles would not inline (on aarch64 their `sdot` and `smmla` would not
/// even assemble) and each tile would pay a call (NEON int8 took 19 % more instructions).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(unused_macros)
)]
macro_rules! for_each_tile {
    ($p:expr, $c:expr, $sizes:expr, $group:expr, |$rows:ident, $tile:ident| $body:expr) => {{
        let (p, c): (&$crate::kernels::qgemm::QMatMul, &mut [f32]) = ($p, $c);
        let (sizes, group): (&[usize], usize) = (&$sizes, $group);
        let panel_width = $crate::kernels::qgemm::PANEL;
        debug_assert!(sizes.last() == Some(&1) && panel_width.is_multiple_of(group));
        let n = p.b.n;
        for panels in p.b.panel_blocks() {
            let mut row = 0;
            for &$rows in sizes {
                while row + $rows <= p.m {
                    for panel in panels.clone() {
                        for group_first in (0..panel_width).step_by(group) {
                            let first = panel * panel_width + group_first;
                            if first >= n {
                                break;
                            }
                            #[allow(unused_mut)]
                            let mut $tile = $crate::kernels::qgemm::QTile {
                                p,
                                row,
                                first,
                                cols: (n - first).min(group),
                                b: &p.b.panel(panel)[group_first * 4..],
                                c: &mut c[row * n + first..],
                            };
                            $body;
                        }
                    }
                    row += $rows;
                }
            }
        }
    }};
}
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(unused_imports)
)]
pub(crate) use for_each_tile;

/// One int8 kernel.
#[derive(Debug)]
pub struct Kernel {
    pub name: &'static str,
    /// Largest activation value the kernel takes (quantize to 0..=this).
    pub max_activation: u8,
    pub(crate) run: Product,
}

/// How a kernel computes its product.
#[derive(Debug)]
pub(crate) enum Product {
    /// `c += product`; the start and the ReLU are passes around it.
    Accumulating(fn(&QMatMul, &mut [f32])),
    /// The start and the ReLU applied in the kernel's stores: the x86 kernels (filling
    /// each output with the bias first was 7 % of an int8 pass). The same store on NEON
    /// cost 240 M more instructions per image under qemu (cortex-a72, cause not found),
    /// so there the passes stay.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Finishing(fn(&QMatMul, &mut [f32], &Finish)),
}

impl Kernel {
    /// `c += product`.
    pub fn accumulate(&self, product: &QMatMul, c: &mut [f32]) {
        self.run(product, c, &Finish::ACCUMULATE)
    }

    /// `c = finish(start + product)`; `c` holds exactly the `m x n` results.
    pub fn run(&self, product: &QMatMul, c: &mut [f32], finish: &Finish) {
        product.check(c);
        let n = product.b.n;
        assert_eq!(c.len(), product.m * n, "c is m x n");
        finish.check(c, n);
        if product.m == 0 || n == 0 {
            return;
        }
        match self.run {
            Product::Finishing(run) if product.b.k > 0 => run(product, c, finish),
            Product::Accumulating(run) if product.b.k > 0 => {
                finish.fill_start(c, n);
                run(product, c);
                finish.apply_relu(c);
            }
            // No sums: the output is the start.
            _ => {
                finish.fill_start(c, n);
                finish.apply_relu(c);
            }
        }
    }
}

/// One k-quad of an activation row as an i32 (little-endian bytes), zero-padded past `k`.
#[inline(always)]
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn quad_of(row: &[u8], quad: usize) -> i32 {
    let start = quad * 4;
    let mut bytes = [0u8; 4];
    let end = row.len().min(start + 4);
    bytes[..end - start].copy_from_slice(&row[start..end]);
    i32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::finish_of_case;
    use crate::kernels::gemm::tests::Lcg;
    use crate::kernels::portable::qgemm::REFERENCE;

    /// Every int8 kernel this CPU runs, the reference first.
    fn available() -> Vec<&'static Kernel> {
        crate::kernels::table::variants("int8", |k| k.int8, |k| k.name)
    }

    /// A random product's activations (rows `lda` apart) and packed weights.
    struct Case {
        a: Vec<u8>,
        lda: usize,
        b: PackedWeights,
    }

    impl Case {
        fn product<'a>(&'a self, m: usize, scale: &'a [f32], row_scale: &'a [f32]) -> QMatMul<'a> {
            QMatMul {
                m,
                a: &self.a,
                lda: self.lda,
                b: &self.b,
                scale,
                row_scale,
            }
        }
    }

    fn random_case(rng: &mut Lcg, m: usize, n: usize, k: usize, max_activation: u8) -> Case {
        let lda = k + rng.below(5);
        let a = (0..m * lda)
            .map(|_| (rng.next_u32() % (max_activation as u32 + 1)) as u8)
            .collect();
        let w: Vec<i8> = (0..k * n)
            .map(|_| (rng.next_u32() % 255) as i32 as i8)
            .map(|x| x.max(-127))
            .collect();
        Case {
            a,
            lda,
            b: PackedWeights::pack(&w, k, n),
        }
    }

    /// Packing keeps every weight where `get` (the reference's reader) finds it, and the
    /// padding past K zero, for K around multiples of four.
    #[test]
    fn packing_keeps_every_weight_and_pads_with_zeros() {
        let mut rng = Lcg(5);
        for k in [1, 3, 4, 5, 8, 11] {
            let n = PANEL + 3;
            let weights: Vec<i8> = (0..k * n).map(|_| rng.below(255) as i8).collect();
            let packed = PackedWeights::pack(&weights, k, n);
            for (kk, col) in (0..k).flat_map(|kk| (0..n).map(move |col| (kk, col))) {
                assert_eq!(
                    packed.get(kk, col),
                    weights[kk * n + col],
                    "k {k}: {kk}, {col}"
                );
            }
            let padding = (k..packed.quads * 4).flat_map(|kk| (0..n).map(move |col| (kk, col)));
            assert!(padding
                .into_iter()
                .all(|(kk, col)| packed.get(kk, col) == 0));
        }
    }

    /// Every kernel against the reference: exact i32 sums (scale 1, sums below 2^24), on
    /// ragged shapes around the tile sizes, K not a multiple of four included.
    #[test]
    fn every_kernel_matches_the_reference_exactly() {
        for kernel in available() {
            let mut rng = Lcg(99);
            for case in 0..300 {
                let (m, n, k) = (
                    1 + rng.below(3 * 12),
                    1 + rng.below(3 * PANEL),
                    rng.below(41),
                );
                assert_exact_match(kernel, &mut rng, (m, n, k), &vec![0.0; m * n], case);
            }
        }
    }

    /// Every kernel against the reference, exactly, on the shapes tile products take
    /// whole (`amx`: K in steps of 64, at least 16 rows), rows ragged around 16 and 32 so
    /// the last tile overlaps the one before it.
    #[test]
    fn every_kernel_matches_the_reference_on_whole_tile_steps() {
        for kernel in available() {
            let mut rng = Lcg(7);
            for case in 0..60 {
                let (m, n, k) = (
                    16 + rng.below(60),
                    1 + rng.below(3 * PANEL),
                    64 * (1 + rng.below(4)),
                );
                let init: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32).collect();
                assert_exact_match(kernel, &mut rng, (m, n, k), &init, case);
            }
        }
    }

    /// `kernel` against the reference on one random `m x n x k` product with unit
    /// scales, accumulated onto `init`: integer sums, so the results are equal exactly.
    fn assert_exact_match(
        kernel: &Kernel,
        rng: &mut Lcg,
        (m, n, k): Dims,
        init: &[f32],
        case: usize,
    ) {
        let case_data = random_case(rng, m, n, k, kernel.max_activation);
        let (scale, row_scale) = (vec![1.0; n], vec![1.0; m]);
        let product = case_data.product(m, &scale, &row_scale);
        let (mut ours, mut expected) = (init.to_vec(), init.to_vec());
        kernel.accumulate(&product, &mut ours);
        REFERENCE.accumulate(&product, &mut expected);
        assert_eq!(
            ours, expected,
            "{} case {case}: m={m} n={n} k={k}",
            kernel.name
        );
    }

    /// `kernel` against the reference on one random `m x n x k` product with scales,
    /// finished as [`finish_of_case`] says.
    fn check_finished_product(kernel: &Kernel, rng: &mut Lcg, (m, n, k): Dims, finish_case: usize) {
        let case_data = random_case(rng, m, n, k, kernel.max_activation);
        let scale: Vec<f32> = (0..n).map(|_| rng.next_f32().abs() * 1e-3).collect();
        let row_scale: Vec<f32> = (0..m).map(|_| rng.next_f32().abs() * 1e-2).collect();
        let (bias, shortcut, init) = (rng.vec(n), rng.vec(m * n), rng.vec(m * n));
        let finish = finish_of_case(finish_case, &bias, &shortcut);
        let product = case_data.product(m, &scale, &row_scale);
        let (mut ours, mut expected) = (init.clone(), init);
        kernel.run(&product, &mut ours, &finish);
        REFERENCE.run(&product, &mut expected, &finish);
        for (x, y) in ours.iter().zip(&expected) {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "{} finish {finish_case} ({m}x{n}x{k}): {x} vs {y}",
                kernel.name
            );
        }
    }

    type Dims = (usize, usize, usize);

    #[test]
    fn every_kernel_scales_and_accumulates_on_resnet_shapes() {
        for kernel in available() {
            let mut rng = Lcg(5);
            for dims in [(49, 512, 4608), (196, 256, 1024), (13, 2048, 512)] {
                check_finished_product(kernel, &mut rng, dims, 0);
            }
        }
    }

    /// Bias, shortcut and ReLU (fused by the kernels that can) against the reference's
    /// separate passes, ragged shapes, every start.
    #[test]
    fn every_kernel_starts_and_finishes_like_the_reference() {
        for kernel in available() {
            let mut rng = Lcg(41);
            for case in 0..90 {
                let dims = (
                    1 + rng.below(2 * 12),
                    1 + rng.below(2 * PANEL + 3),
                    rng.below(70),
                );
                check_finished_product(kernel, &mut rng, dims, case % 6);
                let whole_steps = (16 + rng.below(40), 1 + rng.below(2 * PANEL + 3), 128);
                check_finished_product(kernel, &mut rng, whole_steps, case % 6);
            }
        }
    }

    #[test]
    fn panel_blocks_cover_every_panel_once_within_the_budget() {
        for (k, n) in [(1, 1), (64, 256), (512, 2048), (4608, 512), (100_000, 40)] {
            let b = PackedWeights::pack(&vec![0; k * n], k, n);
            let blocks: Vec<Range<usize>> = b.panel_blocks().collect();
            let covered: Vec<usize> = blocks.iter().flat_map(Range::clone).collect();
            assert_eq!(covered, (0..b.panels).collect::<Vec<_>>(), "{k} x {n}");
            for block in &blocks {
                let bytes = block.len() * b.quads * QUAD_BYTES;
                assert!(
                    block.len() == 1 || bytes <= crate::kernels::PANEL_BLOCK_BYTES,
                    "{k} x {n}"
                );
            }
        }
    }

    #[test]
    fn extreme_values_do_not_saturate() {
        for kernel in available() {
            // 16 rows: a whole tile for the tile kernels.
            let (m, k) = (16, 64);
            let a = vec![kernel.max_activation; m * k];
            for w in [127i8, -127] {
                let b = PackedWeights::pack(&vec![w; k], k, 1);
                let mut c = [0.0; 16];
                kernel.accumulate(
                    &QMatMul {
                        m,
                        a: &a,
                        lda: k,
                        b: &b,
                        scale: &[1.0],
                        row_scale: &[1.0; 16],
                    },
                    &mut c,
                );
                let expected = (kernel.max_activation as i32 * w as i32 * k as i32) as f32;
                assert_eq!(c, [expected; 16], "{}", kernel.name);
            }
        }
    }
}
