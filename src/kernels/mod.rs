//! CPU kernels of the inference plan ([`crate::plan`]): matrix products, im2col, pooling.
//!
//! Every operation has a portable reference next to the fast path that is actually
//! called, and the tests compare the two on random and odd shapes. On x86 the f32 matrix
//! product goes through the `gemm` crate, which picks AVX-512 or AVX2/FMA microkernels at
//! run time from the CPU's features; our own kernels live here only where no crate is
//! fast enough: int8 everywhere, and f32 on ARM (the crate is scalar on armv7 and packs
//! both operands in every call on aarch64; `armv7` holds the assembly).

#[cfg(target_arch = "arm")]
pub mod armv7;
pub mod gemm;
pub mod im2col;
pub mod pool;
pub mod qgemm;
pub mod quantize;

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
