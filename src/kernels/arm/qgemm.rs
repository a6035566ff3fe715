//! The int8 product on 32-bit ARM with NEON (`neon-armv7`): `vmull.s8` + `vmlal.s8` +
//! `vpadal.s16` in assembly (`qgemm_2x8.S`), activations 0..127.
//! Tiles of 2 x 8 over blocks of rows, so a block's activations stay in cache while the
//! panels pass.

use super::{qgemm_2x8, QTile};
use crate::kernels::add_tile;
use crate::kernels::qgemm::{Kernel, Product, QMatMul, PANEL};

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
