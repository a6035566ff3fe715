//! int8 matrix products for quantized convolutions: u8 activations (taken after a ReLU,
//! so zero point 0) times i8 weights (symmetric, one scale per output channel), i32
//! accumulation, and the dequantizing epilogue `c += acc * scale[col] * row_scale[row]`
//! (activations are quantized row by row, one scale each) fused into the
//! store. [`Kernel::run`] starts the sums at the bias (plus a shortcut) and ends them in
//! the ReLU ([`Finish`]): the x86 kernels in the same store, the others in passes.
//!
//! Kernels, chosen once at run time from the CPU's features:
//! - `reference`: portable loops, every CPU; the oracle of the tests;
//! - `avx2`: `vpmaddubsw` + `vpmaddwd`; activations are limited to 0..127 so the pairwise
//!   i16 sums cannot saturate (2 x 127 x 127 < 32767);
//! - `avx512vnni`: `vpdpbusd`, 64 multiply-adds per instruction, full 0..255;
//! - `amx` (Linux on Xeons from Sapphire Rapids): tile products, 16,384 multiply-adds per
//!   `tdpbusd`, full 0..255 (`amx.rs`); products it cannot tile go to `avx512vnni`;
//! - `neon` (every aarch64 CPU: Pi 3, Pi 4): `smull` + `sadalp`, activations 0..127 so
//!   they multiply as i8;
//! - `neon-dotprod` (Armv8.2 dot product: Pi 5's Cortex-A76): `sdot`, 16 multiply-adds
//!   per instruction, activations 0..127 likewise; chosen only when the CPU reports it.
//!   Both NEON kernels load 16 activation bytes of a row at once and use them lane by
//!   lane (four k-quads per load; `sdot` by element), `sdot` on 8-row tiles.
//! - `neon-i8mm` (Armv8.6 int8 matrix multiply: Neoverse V1/N2, Graviton 3/4; no Pi):
//!   `smmla`, a 2 x 8 by 8 x 2 block product (32 multiply-adds) per instruction; the
//!   packed quads are paired with `zip`, so it shares the weight layout. Chosen only when
//!   the CPU reports it; activations 0..127 as well, so all NEON kernels give equal sums.
//! - `neon-armv7` (32-bit ARM with NEON: Pi 2 and up on 32-bit Raspberry Pi OS): `vmull.s8`
//!   + `vmlal.s8` + `vpadal.s16` in assembly (`kernels/armv7`), activations 0..127.
//!
//! `EDGE_CPU_INT8=reference|avx2|avx512vnni|amx|neon|neon-dotprod|neon-i8mm|neon-armv7`
//! forces one (tests, comparisons); a kernel the CPU lacks is refused with a warning.

use std::ops::Range;
use std::sync::OnceLock;

use super::aligned::AlignedVec;
use super::Finish;

/// Output columns per packed weight panel.
pub const PANEL: usize = 32;
/// Bytes of one packed k-quad of a panel: 32 columns x 4 consecutive k.
const QUAD_BYTES: usize = PANEL * 4;

/// Weights `K x N`, packed once at load: panels of 32 columns; in each, k in groups of
/// four, so one 64-byte load feeds 16 columns x 4 k to `vpdpbusd`. Padding is zero.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    k: usize,
    n: usize,
    quads: usize,
    // Read by the SIMD kernels.
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")),
        allow(dead_code)
    )]
    panels: usize,
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
            for (quad, values) in column.chunks(4).enumerate() {
                let at = base + quad * QUAD_BYTES;
                data[at..at + values.len()].copy_from_slice(values);
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
    fn get(&self, kk: usize, col: usize) -> i8 {
        let (panel, lane) = (col / PANEL, col % PANEL);
        self.data[(panel * self.quads + kk / 4) * QUAD_BYTES + lane * 4 + kk % 4]
    }

    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")),
        allow(dead_code)
    )]
    fn panel(&self, panel: usize) -> &[i8] {
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
    fn panel_blocks(&self) -> impl Iterator<Item = Range<usize>> {
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
    fn check(&self, c: &[f32]) {
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

/// One int8 kernel.
pub struct Kernel {
    pub name: &'static str,
    /// Largest activation value the kernel takes (quantize to 0..=this).
    pub max_activation: u8,
    run: Product,
}

/// How a kernel computes its product.
enum Product {
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

pub static REFERENCE: Kernel = Kernel {
    name: "reference",
    max_activation: 255,
    run: Product::Accumulating(reference),
};

fn reference(p: &QMatMul, c: &mut [f32]) {
    let (k, n) = (p.b.k, p.b.n);
    for row in 0..p.m {
        let a = &p.a[row * p.lda..row * p.lda + k];
        for col in 0..n {
            let acc: i32 = a
                .iter()
                .enumerate()
                .map(|(kk, &x)| x as i32 * p.b.get(kk, col) as i32)
                .sum();
            c[row * n + col] += acc as f32 * (p.scale[col] * p.row_scale[row]);
        }
    }
}

/// Every kernel this CPU can run, best last.
pub fn available() -> Vec<&'static Kernel> {
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")),
        allow(unused_mut)
    )]
    let mut kernels = vec![&REFERENCE];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            kernels.push(&x86::AVX2);
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
        {
            kernels.push(&x86::AVX512_VNNI);
        }
        #[cfg(target_os = "linux")]
        if amx::usable() {
            kernels.push(&amx::AMX);
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // Advanced SIMD is part of every aarch64 CPU; the dot product is optional.
        kernels.push(&neon::NEON);
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            kernels.push(&neon::NEON_DOTPROD);
        }
        if std::arch::is_aarch64_feature_detected!("i8mm") {
            kernels.push(&neon::NEON_I8MM);
        }
    }
    #[cfg(target_arch = "arm")]
    if super::armv7::has_neon() {
        kernels.push(&armv7::NEON);
    }
    kernels
}

/// The kernel in use: the best available, or the one `EDGE_CPU_INT8` names.
pub fn kernel() -> &'static Kernel {
    static CHOSEN: OnceLock<&'static Kernel> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let available = available();
        let best = *available.last().expect("the reference is always available");
        let chosen = match std::env::var("EDGE_CPU_INT8") {
            Ok(name) => match available.iter().find(|k| k.name == name) {
                Some(kernel) => *kernel,
                None => {
                    tracing::warn!(requested = %name, using = best.name, "EDGE_CPU_INT8 names a kernel this CPU cannot run");
                    best
                }
            },
            Err(_) => best,
        };
        tracing::info!(kernel = chosen.name, "int8 kernel");
        chosen
    })
}

/// One k-quad of an activation row as an i32 (little-endian bytes), zero-padded past `k`.
#[inline(always)]
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
fn quad_of(row: &[u8], quad: usize) -> i32 {
    let start = quad * 4;
    let mut bytes = [0u8; 4];
    let end = row.len().min(start + 4);
    bytes[..end - start].copy_from_slice(&row[start..end]);
    i32::from_le_bytes(bytes)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{quad_of, Finish, Kernel, Product, QMatMul, PANEL, QUAD_BYTES};
    use crate::kernels::{fetch_ahead, TileFinish};

    pub static AVX2: Kernel = Kernel {
        name: "avx2",
        max_activation: 127,
        run: Product::Finishing(|p, c, finish| unsafe { run_avx2(p, c, finish) }),
    };

    pub static AVX512_VNNI: Kernel = Kernel {
        name: "avx512vnni",
        max_activation: 255,
        run: Product::Finishing(|p, c, finish| unsafe { run_vnni(p, c, finish) }),
    };

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn run_vnni(p: &QMatMul, c: &mut [f32], finish: &Finish) {
        let (k, n) = (p.b.k, p.b.n);
        for panels in p.b.panel_blocks() {
            for_row_tiles!(p.m, 12, |row, TILE| for panel in panels.clone() {
                let col = panel * PANEL;
                vnni_tile::<TILE>(
                    p,
                    row,
                    k,
                    p.b.panel(panel),
                    &mut c[row * n + col..],
                    n,
                    &p.scale[col..],
                    (n - col).min(PANEL),
                    TileFinish::at(finish, n, row, col),
                )
            });
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn vnni_tile<const MR: usize>(
        p: &QMatMul,
        row: usize,
        k: usize,
        b: &[i8],
        c: &mut [f32],
        ldc: usize,
        scale: &[f32],
        cols: usize,
        finish: TileFinish,
    ) {
        let rows: [&[u8]; MR] = crate::kernels::unrolled(|r| &p.a[(row + r) * p.lda..][..k]);
        finish.prefetch(c.as_ptr(), MR, ldc);
        let mut acc = [[_mm512_setzero_si512(); 2]; MR];
        let full_quads = k / 4;
        let bp = b.as_ptr();
        // Whole quads straight from the rows, then the ragged last quad zero-padded.
        for q in 0..full_quads {
            fetch_ahead(bp.add(q * QUAD_BYTES) as *const u8, 2);
            let b0 = _mm512_loadu_si512(bp.add(q * QUAD_BYTES) as *const _);
            let b1 = _mm512_loadu_si512(bp.add(q * QUAD_BYTES + 64) as *const _);
            for r in 0..MR {
                let quad = (rows[r].as_ptr().add(q * 4) as *const i32).read_unaligned();
                let a = _mm512_set1_epi32(quad);
                acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a, b0);
                acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a, b1);
            }
        }
        if !k.is_multiple_of(4) {
            let q = full_quads;
            let b0 = _mm512_loadu_si512(bp.add(q * QUAD_BYTES) as *const _);
            let b1 = _mm512_loadu_si512(bp.add(q * QUAD_BYTES + 64) as *const _);
            for r in 0..MR {
                let a = _mm512_set1_epi32(quad_of(rows[r], q));
                acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a, b0);
                acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a, b1);
            }
        }
        for (r, sums) in acc.iter().enumerate() {
            store_row(*sums, p.row_scale[row + r], scale, cols, &finish, c, r, ldc);
        }
    }

    /// Scales the i32 sums of a tile's row `r` (two halves of 16 columns, `cols` of them
    /// real) by `scale[col] * row_scale` and finishes them into `c` (rows `ldc` apart).
    /// The scale and the sum meet in one `fma`: a `mul` and an `add` instead rounded
    /// twice and lost 0.2 points of ImageNet-sample agreement with f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn store_row(
        sums: [__m512i; 2],
        row_scale: f32,
        scale: &[f32],
        cols: usize,
        finish: &TileFinish,
        c: &mut [f32],
        r: usize,
        ldc: usize,
    ) {
        for (half, sums) in sums.iter().enumerate() {
            let first = half * 16;
            if first >= cols {
                break;
            }
            let mask = TileFinish::lanes(first, cols);
            let s = _mm512_mul_ps(
                _mm512_maskz_loadu_ps(mask, scale.as_ptr().add(first)),
                _mm512_set1_ps(row_scale),
            );
            let add = |start| _mm512_fmadd_ps(_mm512_cvtepi32_ps(*sums), s, start);
            finish.store16(add, c.as_mut_ptr(), r, ldc, first, mask);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(p: &QMatMul, c: &mut [f32], finish: &Finish) {
        let (k, n) = (p.b.k, p.b.n);
        for panels in p.b.panel_blocks() {
            for_row_tiles!(p.m, 4, |row, TILE| for panel in panels.clone() {
                for half in 0..2 {
                    let first = panel * PANEL + half * 16;
                    if first >= n {
                        break;
                    }
                    avx2_tile::<TILE>(
                        p,
                        row,
                        k,
                        &p.b.panel(panel)[half * 64..],
                        &mut c[row * n + first..],
                        n,
                        &p.scale[first..],
                        (n - first).min(16),
                        TileFinish::at(finish, n, row, first),
                    )
                }
            });
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx2_tile<const MR: usize>(
        p: &QMatMul,
        row: usize,
        k: usize,
        b: &[i8],
        c: &mut [f32],
        ldc: usize,
        scale: &[f32],
        cols: usize,
        finish: TileFinish,
    ) {
        let rows: [&[u8]; MR] = crate::kernels::unrolled(|r| &p.a[(row + r) * p.lda..][..k]);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        let full_quads = k / 4;
        let bp = b.as_ptr();
        let quad_step = |acc: &mut [[__m256i; 2]; MR], q: usize, quads: [i32; MR]| {
            // This tile reads one half of each quad: one line.
            fetch_ahead(bp.add(q * QUAD_BYTES) as *const u8, 1);
            let b0 = _mm256_loadu_si256(bp.add(q * QUAD_BYTES) as *const __m256i);
            let b1 = _mm256_loadu_si256(bp.add(q * QUAD_BYTES + 32) as *const __m256i);
            for r in 0..MR {
                let a = _mm256_set1_epi32(quads[r]);
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(a, b0), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(a, b1), ones);
                acc[r][0] = _mm256_add_epi32(acc[r][0], p0);
                acc[r][1] = _mm256_add_epi32(acc[r][1], p1);
            }
        };
        for q in 0..full_quads {
            let quads = crate::kernels::unrolled(|r| {
                (rows[r].as_ptr().add(q * 4) as *const i32).read_unaligned()
            });
            quad_step(&mut acc, q, quads);
        }
        if !k.is_multiple_of(4) {
            quad_step(
                &mut acc,
                full_quads,
                crate::kernels::unrolled(|r| quad_of(rows[r], full_quads)),
            );
        }
        for (r, acc) in acc.iter().enumerate() {
            let out = &mut c[r * ldc..];
            if cols == 16 {
                for (half, acc) in acc.iter().enumerate() {
                    let s = _mm256_mul_ps(
                        _mm256_loadu_ps(scale.as_ptr().add(half * 8)),
                        _mm256_set1_ps(p.row_scale[row + r]),
                    );
                    let o = out.as_mut_ptr().add(half * 8);
                    let start = match (finish.bias, finish.shortcut) {
                        (None, _) => _mm256_loadu_ps(o),
                        (Some(bias), None) => _mm256_loadu_ps(bias.as_ptr().add(half * 8)),
                        (Some(bias), Some(shortcut)) => _mm256_add_ps(
                            _mm256_loadu_ps(bias.as_ptr().add(half * 8)),
                            _mm256_loadu_ps(shortcut.as_ptr().add(r * ldc + half * 8)),
                        ),
                    };
                    let mut new = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*acc), s, start);
                    if finish.relu {
                        // `max(0, x)` keeps a NaN, as the portable ReLU does.
                        new = _mm256_max_ps(_mm256_setzero_ps(), new);
                    }
                    _mm256_storeu_ps(o, new);
                }
            } else {
                let mut lanes = [0i32; 16];
                _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc[0]);
                _mm256_storeu_si256(lanes.as_mut_ptr().add(8) as *mut __m256i, acc[1]);
                for col in 0..cols {
                    let s = scale[col] * p.row_scale[row + r];
                    let start = finish.start_value(r, ldc, col).unwrap_or(out[col]);
                    out[col] = finish.finish_value((lanes[col] as f32).mul_add(s, start));
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{quad_of, Kernel, Product, QMatMul, PANEL, QUAD_BYTES};

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
        let (k, n) = (p.b.k, p.b.n);
        for panels in p.b.panel_blocks() {
            macro_rules! tiles {
                ($rows:literal, $tile:ident $(, $dot:literal)?) => {
                    for_row_tiles!(p.m, $rows, |row, TILE| for panel in panels.clone() {
                        for group in 0..PANEL / GROUP {
                            let first = panel * PANEL + group * GROUP;
                            if first >= n {
                                break;
                            }
                            $tile::<TILE $(, $dot)?>(
                                p,
                                row,
                                k,
                                &p.b.panel(panel)[group * GROUP * 4..],
                                &mut c[row * n + first..],
                                n,
                                &p.scale[first..],
                                (n - first).min(GROUP),
                            )
                        }
                    })
                };
            }
            // `sdot` and `smmla` need two accumulators per row, the widening path four.
            match KIND {
                MATMUL => tiles!(8, matmul_tile),
                DOTPROD => tiles!(8, tile, true),
                _ => tiles!(4, tile, false),
            }
        }
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
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const MR: usize, const DOT: bool>(
        p: &QMatMul,
        row: usize,
        k: usize,
        b: &[i8],
        c: &mut [f32],
        ldc: usize,
        scale: &[f32],
        cols: usize,
    ) {
        let rows: [&[u8]; MR] = crate::kernels::unrolled(|r| &p.a[(row + r) * p.lda..][..k]);
        let mut acc = [[vdupq_n_s32(0); 4]; MR];
        let bp = b.as_ptr();
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
        for q in q..full_quads {
            let quads = crate::kernels::unrolled(|r| {
                (rows[r].as_ptr().add(q * 4) as *const i32).read_unaligned()
            });
            quad_step::<MR, DOT>(&mut acc, bp.add(q * QUAD_BYTES), quads);
        }
        if !k.is_multiple_of(4) {
            let quads = crate::kernels::unrolled(|r| quad_of(rows[r], full_quads));
            quad_step::<MR, DOT>(&mut acc, bp.add(full_quads * QUAD_BYTES), quads);
        }
        for (r, acc) in acc.iter().enumerate() {
            // Column sums 0..4 and 4..8.
            let sums = if DOT {
                [acc[0], acc[1]]
            } else {
                [vpaddq_s32(acc[0], acc[1]), vpaddq_s32(acc[2], acc[3])]
            };
            store_row(sums, p.row_scale[row + r], &mut c[r * ldc..], scale, cols);
        }
    }

    /// `out[col] += sums[col] * scale[col] * row_scale` for one row of a tile's `cols`
    /// columns, the eight sums in two vectors.
    #[inline(always)]
    unsafe fn store_row(
        sums: [int32x4_t; 2],
        row_scale: f32,
        out: &mut [f32],
        scale: &[f32],
        cols: usize,
    ) {
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
    #[allow(clippy::too_many_arguments)]
    unsafe fn matmul_tile<const MR: usize>(
        p: &QMatMul,
        row: usize,
        k: usize,
        b: &[i8],
        c: &mut [f32],
        ldc: usize,
        scale: &[f32],
        cols: usize,
    ) {
        let pairs = MR.div_ceil(2);
        let rows: [*const u8; 2 * MAX_PAIRS] =
            crate::kernels::unrolled(|r| p.a[(row + r.min(MR - 1)) * p.lda..][..k].as_ptr());
        let mut acc = [[vdupq_n_s32(0); 4]; MAX_PAIRS];
        let (bp, quads) = (b.as_ptr(), k.div_ceil(4));
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
                store_row(sums, p.row_scale[row + r], &mut c[r * ldc..], scale, cols);
            }
        }
    }
}

/// 32-bit ARM: 2 x 8 tiles of the assembly kernel (`kernels/armv7/qgemm_2x8.S`) over
/// blocks of rows, so a block's activations stay in cache while the panels pass.
#[cfg(target_arch = "arm")]
mod armv7 {
    use super::{Kernel, Product, QMatMul, PANEL};
    use crate::kernels::add_tile;
    use crate::kernels::armv7::{qgemm_2x8, QTile};

    pub static NEON: Kernel = Kernel {
        name: "neon-armv7",
        max_activation: 127,
        run: Product::Accumulating(run),
    };

    const ROWS: usize = 2;
    /// Columns per tile: a panel's 32 columns in four groups of eight.
    const GROUP: usize = 8;
    const BLOCK_ROWS: usize = 32;

    fn run(p: &QMatMul, c: &mut [f32]) {
        let (k, n) = (p.b.k, p.b.n);
        let quads = k.div_ceil(4);
        // The kernel reads whole quads: rows with a ragged last one are copied, zero-padded.
        let padded: Vec<u8>;
        let (a, lda) = if k.is_multiple_of(4) {
            (p.a, p.lda)
        } else {
            padded = (0..p.m)
                .flat_map(|row| {
                    let values = &p.a[row * p.lda..][..k];
                    values
                        .iter()
                        .copied()
                        .chain(std::iter::repeat_n(0, quads * 4 - k))
                })
                .collect();
            (&padded[..], quads * 4)
        };
        for first_row in (0..p.m).step_by(BLOCK_ROWS) {
            let block_end = (first_row + BLOCK_ROWS).min(p.m);
            for panel in 0..p.b.panels {
                let b = p.b.panel(panel);
                for group in 0..PANEL / GROUP {
                    let first = panel * PANEL + group * GROUP;
                    if first >= n {
                        break;
                    }
                    let cols = (n - first).min(GROUP);
                    let mut scale = [0.0f32; GROUP];
                    scale[..cols].copy_from_slice(&p.scale[first..][..cols]);
                    for row in (first_row..block_end).step_by(ROWS) {
                        // A short tile repeats its last row; only real rows are kept.
                        let last = (row + ROWS).min(block_end) - 1;
                        let row_scale = [p.row_scale[row], p.row_scale[last]];
                        let mut tile = QTile {
                            quads,
                            a: [a[row * lda..].as_ptr(), a[last * lda..].as_ptr()],
                            b: b[group * GROUP * 4..].as_ptr(),
                            c: std::ptr::null_mut(),
                            ldc: 0,
                            scale: scale.as_ptr(),
                            row_scale: row_scale.as_ptr(),
                        };
                        if last == row + 1 && cols == GROUP {
                            tile.c = c[row * n + first..].as_mut_ptr();
                            tile.ldc = n * 4;
                            // SAFETY: listed by `available` only with NEON; both rows hold
                            // `4 * quads` bytes (`QMatMul::check`, or the padded copy), the
                            // panel `quads` quads, and `c` two rows of 8 from `first`.
                            unsafe { qgemm_2x8(&tile) };
                        } else {
                            let mut out = [0.0f32; ROWS * GROUP];
                            tile.c = out.as_mut_ptr();
                            tile.ldc = GROUP * 4;
                            // SAFETY: as above, with `out` as the two rows of `c`.
                            unsafe { qgemm_2x8(&tile) };
                            let rows = last + 1 - row;
                            add_tile(&out, GROUP, rows, cols, c, row * n + first, n);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::finish_of_case;
    use crate::kernels::gemm::tests::Lcg;

    fn random_case(
        rng: &mut Lcg,
        m: usize,
        n: usize,
        k: usize,
        max_activation: u8,
    ) -> (Vec<u8>, usize, PackedWeights) {
        let lda = k + rng.below(5);
        let a = (0..m * lda)
            .map(|_| (rng.next_u32() % (max_activation as u32 + 1)) as u8)
            .collect();
        let w: Vec<i8> = (0..k * n)
            .map(|_| (rng.next_u32() % 255) as i32 as i8)
            .map(|x| x.max(-127))
            .collect();
        (a, lda, PackedWeights::pack(&w, k, n))
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
                let (a, lda, b) = random_case(&mut rng, m, n, k, kernel.max_activation);
                let scale = vec![1.0; n];
                let row_scale = vec![1.0; m];
                let product = QMatMul {
                    m,
                    a: &a,
                    lda,
                    b: &b,
                    scale: &scale,
                    row_scale: &row_scale,
                };
                let mut ours = vec![0.0; m * n];
                kernel.accumulate(&product, &mut ours);
                let mut expected = vec![0.0; m * n];
                REFERENCE.accumulate(&product, &mut expected);
                assert_eq!(
                    ours, expected,
                    "{} case {case}: m={m} n={n} k={k}",
                    kernel.name
                );
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
                let (a, lda, b) = random_case(&mut rng, m, n, k, kernel.max_activation);
                let (scale, row_scale) = (vec![1.0; n], vec![1.0; m]);
                let product = QMatMul {
                    m,
                    a: &a,
                    lda,
                    b: &b,
                    scale: &scale,
                    row_scale: &row_scale,
                };
                let init: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32).collect();
                let (mut ours, mut expected) = (init.clone(), init);
                kernel.accumulate(&product, &mut ours);
                REFERENCE.accumulate(&product, &mut expected);
                assert_eq!(
                    ours, expected,
                    "{} case {case}: m={m} n={n} k={k}",
                    kernel.name
                );
            }
        }
    }

    /// `kernel` against the reference on one random `m x n x k` product with scales,
    /// finished as [`finish_of_case`] says.
    fn check_finished_product(kernel: &Kernel, rng: &mut Lcg, (m, n, k): Dims, finish_case: usize) {
        let (a, lda, b) = random_case(rng, m, n, k, kernel.max_activation);
        let scale: Vec<f32> = (0..n).map(|_| rng.next_f32().abs() * 1e-3).collect();
        let row_scale: Vec<f32> = (0..m).map(|_| rng.next_f32().abs() * 1e-2).collect();
        let (bias, shortcut, init) = (rng.vec(n), rng.vec(m * n), rng.vec(m * n));
        let finish = finish_of_case(finish_case, &bias, &shortcut);
        let product = QMatMul {
            m,
            a: &a,
            lda,
            b: &b,
            scale: &scale,
            row_scale: &row_scale,
        };
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

    /// The CI runs these tests under qemu CPU models with and without each feature and
    /// names the kernels each must offer (`EDGE_EXPECT_INT8_KERNELS`) and lack
    /// (`EDGE_ABSENT_INT8_KERNELS`), so a detection that fails tests nothing silently.
    #[test]
    fn the_cpu_offers_the_kernels_it_should() {
        let names: Vec<&str> = available().iter().map(|k| k.name).collect();
        if cfg!(target_arch = "aarch64") {
            assert!(names.contains(&"neon"), "{names:?}");
        }
        let listed = |var: &str| -> Vec<String> {
            std::env::var(var)
                .unwrap_or_default()
                .split(',')
                .filter(|name| !name.is_empty())
                .map(str::to_string)
                .collect()
        };
        for name in listed("EDGE_EXPECT_INT8_KERNELS") {
            assert!(names.contains(&name.as_str()), "{name} missing: {names:?}");
        }
        for name in listed("EDGE_ABSENT_INT8_KERNELS") {
            assert!(!names.contains(&name.as_str()), "{name} offered: {names:?}");
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
