//! CPU kernels of the inference plan ([`crate::plan`]): matrix products, im2col, pooling.
//!
//! Every operation has a portable reference next to the fast path that is actually
//! called, and the tests compare the two on random and odd shapes. The f32 matrix product
//! goes through the `gemm` crate, which picks AVX-512, AVX2/FMA or NEON microkernels at
//! run time from the CPU's features; our own kernels live here only where no crate is
//! fast enough (int8), or where the crate has no SIMD (32-bit ARM: `armv7`).

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
