//! Winograd's minimal filtering (Lavin & Gray, *Fast Algorithms for Convolutional Neural
//! Networks*, 2015) for 3 x 3 stride-1 convolutions with one pixel of padding, F(2 x 2,
//! 3 x 3) and F(4 x 4, 3 x 3): each `m x m` block of output pixels comes from the
//! `(m + 2) x (m + 2)` input window around it as `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. Over
//! channels the elementwise product is one matrix product per point of the transformed
//! tile, `(tiles x in) * (in x out)`: F(4 x 4) takes 36 multiply-adds per 16 outputs and
//! input-output channel pair, F(2 x 2) 16 per 4, the direct convolution 9 per output. The
//! kernels are transformed once at load ([`Tiling::transform_kernel`]; F(4 x 4)'s hold four
//! times the direct ones' values, F(2 x 2)'s 16 / 9); the input and output transforms run
//! per forward, channels in the inner loop in blocks of [`LANES`] (plain Rust the compiler
//! vectorizes on every CPU); the products are the kernel table's f32 ones.
//!
//! The points are 0, ±1, ±2 (and ∞): the transforms' constants are small, and the
//! results stay within 1e-5 relative of the direct convolution's for ResNet-50's layers.

use std::ops::{Add, Mul, Range, Sub};

/// The most input pixels per tile side (F(4 x 4)'s).
const MAX_WINDOW: usize = 6;

/// Which Winograd algorithm a layer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiling {
    /// F(2 x 2, 3 x 3): 4 x 4 windows, 16 points.
    F2,
    /// F(4 x 4, 3 x 3): 6 x 6 windows, 36 points.
    F4,
}

/// Channels transformed together: one AVX2 register, two NEON ones.
pub const LANES: usize = 8;

/// One value of each of [`LANES`] channels.
#[derive(Clone, Copy, Default)]
struct Lanes([f32; LANES]);

impl Add for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn add(self, other: Lanes) -> Lanes {
        Lanes(std::array::from_fn(|i| self.0[i] + other.0[i]))
    }
}

impl Sub for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn sub(self, other: Lanes) -> Lanes {
        Lanes(std::array::from_fn(|i| self.0[i] - other.0[i]))
    }
}

impl Mul<f32> for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn mul(self, factor: f32) -> Lanes {
        Lanes(std::array::from_fn(|i| self.0[i] * factor))
    }
}

/// One algorithm's transforms of a line: `Bᵀ d`, `Aᵀ m` and `G g`, on the first
/// [`Self::WINDOW`] values of their arrays.
trait Lines {
    const TILE: usize;
    const WINDOW: usize = Self::TILE + 2;

    fn input<T: Value>(d: [T; MAX_WINDOW]) -> [T; MAX_WINDOW];
    fn output<T: Value>(m: [T; MAX_WINDOW]) -> [T; 4];
    fn kernel(g: [f32; 3]) -> [f32; MAX_WINDOW];
}

/// What the transforms compute with: lanes of channels, or one value.
trait Value:
    Copy + Default + Add<Output = Self> + Sub<Output = Self> + Mul<f32, Output = Self>
{
}
impl<T: Copy + Default + Add<Output = T> + Sub<Output = T> + Mul<f32, Output = T>> Value for T {}

struct F2Lines;
struct F4Lines;

impl Lines for F2Lines {
    const TILE: usize = 2;

    #[inline(always)]
    fn input<T: Value>(d: [T; MAX_WINDOW]) -> [T; MAX_WINDOW] {
        let [d0, d1, d2, d3, ..] = d;
        let zero = T::default();
        [d0 - d2, d1 + d2, d2 - d1, d1 - d3, zero, zero]
    }

    #[inline(always)]
    fn output<T: Value>(m: [T; MAX_WINDOW]) -> [T; 4] {
        let [m0, m1, m2, m3, ..] = m;
        let zero = T::default();
        [m0 + m1 + m2, m1 - m2 - m3, zero, zero]
    }

    #[inline(always)]
    fn kernel(g: [f32; 3]) -> [f32; MAX_WINDOW] {
        let [g0, g1, g2] = g;
        [g0, (g0 + g1 + g2) / 2.0, (g0 - g1 + g2) / 2.0, g2, 0.0, 0.0]
    }
}

impl Lines for F4Lines {
    const TILE: usize = 4;

    #[inline(always)]
    fn input<T: Value>(d: [T; MAX_WINDOW]) -> [T; MAX_WINDOW] {
        let [d0, d1, d2, d3, d4, d5] = d;
        [
            d0 * 4.0 - d2 * 5.0 + d4,
            (d3 + d4) - (d1 + d2) * 4.0,
            (d4 - d3) + (d1 - d2) * 4.0,
            (d4 - d2) + (d3 - d1) * 2.0,
            (d4 - d2) - (d3 - d1) * 2.0,
            d1 * 4.0 - d3 * 5.0 + d5,
        ]
    }

    #[inline(always)]
    fn output<T: Value>(m: [T; MAX_WINDOW]) -> [T; 4] {
        let [m0, m1, m2, m3, m4, m5] = m;
        let (sum12, diff12) = (m1 + m2, m1 - m2);
        let (sum34, diff34) = (m3 + m4, m3 - m4);
        [
            m0 + sum12 + sum34,
            diff12 + diff34 * 2.0,
            sum12 + sum34 * 4.0,
            diff12 + diff34 * 8.0 + m5,
        ]
    }

    #[inline(always)]
    fn kernel(g: [f32; 3]) -> [f32; MAX_WINDOW] {
        let [g0, g1, g2] = g;
        [
            g0 / 4.0,
            -(g0 + g1 + g2) / 6.0,
            -(g0 - g1 + g2) / 6.0,
            g0 / 24.0 + g1 / 12.0 + g2 / 6.0,
            g0 / 24.0 - g1 / 12.0 + g2 / 6.0,
            g2,
        ]
    }
}

/// `G g Gᵀ` of one 3 x 3 kernel (row-major): its points, row-major.
// The second pass reads the first one's lines across: `columns[j][i]`.
#[allow(clippy::needless_range_loop)]
fn transform_kernel<L: Lines>(g: &[f32; 9]) -> Vec<f32> {
    let columns: [[f32; MAX_WINDOW]; 3] =
        std::array::from_fn(|x| L::kernel([g[x], g[3 + x], g[6 + x]]));
    let mut u = Vec::with_capacity(L::WINDOW * L::WINDOW);
    for y in 0..L::WINDOW {
        let row = L::kernel([columns[0][y], columns[1][y], columns[2][y]]);
        u.extend_from_slice(&row[..L::WINDOW]);
    }
    u
}

impl Tiling {
    /// Output pixels per tile side.
    pub fn tile(self) -> usize {
        match self {
            Tiling::F2 => F2Lines::TILE,
            Tiling::F4 => F4Lines::TILE,
        }
    }

    /// Points of a transformed tile: one matrix product each.
    pub fn points(self) -> usize {
        (self.tile() + 2).pow(2)
    }

    /// Tiles per column and per row of an `height x width` output.
    pub fn tiles(self, height: usize, width: usize) -> (usize, usize) {
        (height.div_ceil(self.tile()), width.div_ceil(self.tile()))
    }

    /// `G g Gᵀ` of one 3 x 3 kernel (row-major): its [`Self::points`] values, row-major.
    pub fn transform_kernel(self, g: &[f32; 9]) -> Vec<f32> {
        match self {
            Tiling::F2 => transform_kernel::<F2Lines>(g),
            Tiling::F4 => transform_kernel::<F4Lines>(g),
        }
    }

    pub fn transform_input(self, map: Map, tile_rows: Range<usize>, v: &mut [f32]) {
        match self {
            Tiling::F2 => transform_input::<F2Lines>(map, tile_rows, v),
            Tiling::F4 => transform_input::<F4Lines>(map, tile_rows, v),
        }
    }

    pub fn transform_output(
        self,
        m: &[f32],
        tile_rows: Range<usize>,
        shape: (usize, usize, usize),
        finish: &OutputFinish,
        out: &mut [f32],
    ) {
        match self {
            Tiling::F2 => transform_output::<F2Lines>(m, tile_rows, shape, finish, out),
            Tiling::F4 => transform_output::<F4Lines>(m, tile_rows, shape, finish, out),
        }
    }
}

/// A feature map in NHWC order, as the transforms read it.
#[derive(Clone, Copy)]
pub struct Map<'a> {
    pub data: &'a [f32],
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

/// Tiles per tile row of a map `width` pixels wide, and tiles in `tile_rows`; checks
/// that a buffer of `len` values holds their points, `channels` each.
fn band_tiles<L: Lines>(
    width: usize,
    tile_rows: &Range<usize>,
    channels: usize,
    len: usize,
) -> (usize, usize) {
    let tiles_x = width.div_ceil(L::TILE);
    let count = tile_rows.len() * tiles_x;
    let points = L::WINDOW * L::WINDOW;
    assert_eq!(
        len,
        points * count * channels,
        "one value per point, tile and channel"
    );
    (tiles_x, count)
}

// The second pass reads the first one's lines across: `columns[j][i]`.
#[allow(clippy::needless_range_loop)]
fn transform_input<L: Lines>(map: Map, tile_rows: Range<usize>, v: &mut [f32]) {
    let (channels, tile, window) = (map.channels, L::TILE, L::WINDOW);
    let (tiles_x, count) = band_tiles::<L>(map.width, &tile_rows, channels, v.len());
    let zeros = [0.0f32; LANES];
    let mut t = 0;
    for ty in tile_rows {
        for tx in 0..tiles_x {
            // The window's pixels, `None` in the padding.
            let pixel = |i: usize, j: usize| {
                let (y, x) = (
                    (ty * tile + i).checked_sub(1)?,
                    (tx * tile + j).checked_sub(1)?,
                );
                (y < map.height && x < map.width).then(|| (y * map.width + x) * channels)
            };
            let at: [[Option<usize>; MAX_WINDOW]; MAX_WINDOW] = std::array::from_fn(|i| {
                std::array::from_fn(|j| (i < window && j < window).then(|| pixel(i, j)).flatten())
            });
            for c in (0..channels).step_by(LANES) {
                let lanes = (channels - c).min(LANES);
                let load = |at: Option<usize>| {
                    let mut values = Lanes(zeros);
                    if let Some(at) = at {
                        values.0[..lanes].copy_from_slice(&map.data[at + c..][..lanes]);
                    }
                    values
                };
                // Bᵀ d down the window's columns (F(2 x 2) has four of the six), then Bᵀ
                // along the rows of that (· B).
                let columns: [[Lanes; MAX_WINDOW]; MAX_WINDOW] =
                    std::array::from_fn(|j| match j < window {
                        true => L::input(std::array::from_fn(|i| load(at[i][j]))),
                        false => Default::default(),
                    });
                for i in 0..window {
                    let row = L::input(std::array::from_fn(|j| columns[j][i]));
                    for (j, value) in row[..window].iter().enumerate() {
                        let point = i * window + j;
                        let out = &mut v[(point * count + t) * channels + c..][..lanes];
                        out.copy_from_slice(&value.0[..lanes]);
                    }
                }
            }
            t += 1;
        }
    }
}

/// What the output transform adds and applies: `relu?(Aᵀ m A + bias + shortcut)`.
pub struct OutputFinish<'a> {
    pub bias: &'a [f32],
    /// A map of the output's shape (NHWC) added before the ReLU.
    pub shortcut: Option<&'a [f32]>,
    pub relu: bool,
}

// The second pass reads the first one's lines across: `columns[j][i]`.
#[allow(clippy::needless_range_loop)]
fn transform_output<L: Lines>(
    m: &[f32],
    tile_rows: Range<usize>,
    (height, width, channels): (usize, usize, usize),
    finish: &OutputFinish,
    out: &mut [f32],
) {
    let (tile, window) = (L::TILE, L::WINDOW);
    let (tiles_x, count) = band_tiles::<L>(width, &tile_rows, channels, m.len());
    assert_eq!(finish.bias.len(), channels, "one bias per channel");
    let first_y = tile_rows.start * tile;
    let mut t = 0;
    for ty in tile_rows {
        for tx in 0..tiles_x {
            for c in (0..channels).step_by(LANES) {
                let lanes = (channels - c).min(LANES);
                let load = |point: usize| {
                    let mut values = Lanes::default();
                    values.0[..lanes]
                        .copy_from_slice(&m[(point * count + t) * channels + c..][..lanes]);
                    values
                };
                // Aᵀ m down the window's columns, then Aᵀ along the rows of that (· A).
                let columns: [[Lanes; 4]; MAX_WINDOW] = std::array::from_fn(|j| match j < window {
                    true => L::output(std::array::from_fn(|i| match i < window {
                        true => load(i * window + j),
                        false => Lanes::default(),
                    })),
                    false => Default::default(),
                });
                let bias = &finish.bias[c..][..lanes];
                for i in 0..tile {
                    let y = ty * tile + i;
                    if y >= height {
                        break;
                    }
                    let row = L::output(std::array::from_fn(|j| columns[j][i]));
                    for (j, value) in row[..tile].iter().enumerate() {
                        let x = tx * tile + j;
                        if x >= width {
                            break;
                        }
                        let at = ((y - first_y) * width + x) * channels + c;
                        let shortcut = finish.shortcut.map(|s| &s[at..][..lanes]);
                        for (lane, out) in out[at..][..lanes].iter_mut().enumerate() {
                            let mut sum = value.0[lane] + bias[lane];
                            if let Some(shortcut) = shortcut {
                                sum += shortcut[lane];
                            }
                            *out = if finish.relu {
                                super::pool::larger(sum, 0.0)
                            } else {
                                sum
                            };
                        }
                    }
                }
            }
            t += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::tests::Lcg;

    /// The direct 3 x 3 convolution, padding 1, NHWC, weights `[out][in][3][3]`.
    fn direct(map: Map, weights: &[f32], out_channels: usize) -> Vec<f32> {
        let (h, w, c) = (map.height, map.width, map.channels);
        let mut out = vec![0.0; h * w * out_channels];
        for y in 0..h {
            for x in 0..w {
                for o in 0..out_channels {
                    let mut sum = 0.0f64;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (Some(iy), Some(ix)) =
                                ((y + ky).checked_sub(1), (x + kx).checked_sub(1))
                            else {
                                continue;
                            };
                            if iy >= h || ix >= w {
                                continue;
                            }
                            for i in 0..c {
                                let value = map.data[(iy * w + ix) * c + i] as f64;
                                sum += value * weights[((o * c + i) * 3 + ky) * 3 + kx] as f64;
                            }
                        }
                    }
                    out[(y * w + x) * out_channels + o] = sum as f32;
                }
            }
        }
        out
    }

    /// The transforms with a plain elementwise product over channels, against the direct
    /// convolution: maps not a multiple of the tile, channels not a multiple of the lanes,
    /// tile rows in ranges (as bands take them), bias, shortcut and ReLU.
    #[test]
    fn transforms_compute_the_direct_convolution() {
        let mut rng = Lcg(3);
        for (h, w, c, o) in [
            (1, 1, 1, 1),
            (4, 4, 8, 8),
            (7, 7, 3, 5),
            (14, 9, 17, 9),
            (5, 13, 8, 2),
        ] {
            let data: Vec<f32> = (0..h * w * c).map(|_| rng.next_f32()).collect();
            let weights: Vec<f32> = (0..o * c * 9).map(|_| rng.next_f32()).collect();
            let bias: Vec<f32> = (0..o).map(|_| rng.next_f32()).collect();
            let shortcut: Vec<f32> = (0..h * w * o).map(|_| rng.next_f32()).collect();
            let map = Map {
                data: &data,
                height: h,
                width: w,
                channels: c,
            };
            let expected = direct(map, &weights, o);
            for tiling in [Tiling::F2, Tiling::F4] {
                let points = tiling.points();
                let u: Vec<Vec<f32>> = (0..o * c)
                    .map(|pair| {
                        tiling.transform_kernel(weights[pair * 9..][..9].try_into().unwrap())
                    })
                    .collect();
                let (tiles_y, tiles_x) = tiling.tiles(h, w);
                for relu in [false, true] {
                    let finish = OutputFinish {
                        bias: &bias,
                        shortcut: Some(&shortcut),
                        relu,
                    };
                    let mut out = vec![f32::NAN; h * w * o];
                    // Two ranges of tile rows, as two bands would take them.
                    let split = tiles_y / 2;
                    for rows in [0..split, split..tiles_y] {
                        let count = rows.len() * tiles_x;
                        let mut v = vec![0.0; points * count * c];
                        tiling.transform_input(map, rows.clone(), &mut v);
                        let mut m = vec![0.0; points * count * o];
                        for p in 0..points {
                            for t in 0..count {
                                for oc in 0..o {
                                    m[(p * count + t) * o + oc] = (0..c)
                                        .map(|i| v[(p * count + t) * c + i] * u[oc * c + i][p])
                                        .sum();
                                }
                            }
                        }
                        let first = rows.start * tiling.tile() * w * o;
                        let end = (rows.end * tiling.tile()).min(h) * w * o;
                        let finish = OutputFinish {
                            shortcut: Some(&shortcut[first..end]),
                            ..finish
                        };
                        tiling.transform_output(&m, rows, (h, w, o), &finish, &mut out[first..end]);
                    }
                    check(
                        &out,
                        &expected,
                        (tiling, relu, h, w, c, o),
                        &bias,
                        &shortcut,
                    );
                }
            }
        }
    }

    /// `out` against the direct convolution plus bias and shortcut, through the ReLU.
    fn check(
        out: &[f32],
        expected: &[f32],
        case: (Tiling, bool, usize, usize, usize, usize),
        bias: &[f32],
        shortcut: &[f32],
    ) {
        let (tiling, relu, h, w, c, o) = case;
        for (i, (&ours, &direct)) in out.iter().zip(expected).enumerate() {
            let mut expected = direct + bias[i % o] + shortcut[i];
            if relu {
                expected = expected.max(0.0);
            }
            assert!(
                (ours - expected).abs() <= 1e-4 * (1.0 + expected.abs()),
                "{tiling:?} relu {relu} {h}x{w}x{c}->{o} at {i}: {ours} vs {expected}"
            );
        }
    }
}
