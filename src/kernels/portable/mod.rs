//! The kernels every CPU runs: the `portable` level of the kernel table, and the
//! references the SIMD kernels are tested against. Plain loops written so the compiler
//! vectorizes them for the baseline (SSE2 on x86_64, NEON on aarch64); the x86 kernels
//! compile some of them again with wider vectors enabled.

pub mod depthwise;
pub mod f32;
pub mod pool;
pub mod qgemm;
pub mod quantize;

use super::table::Kernels;

/// The `portable` level.
pub const KERNELS: Kernels = Kernels {
    level: "portable",
    f32: &f32::GEMM_CRATE,
    int8: &qgemm::REFERENCE,
    quantize: &quantize::QUANTIZE,
    pool: &pool::POOL,
    depthwise: &depthwise::DEPTHWISE,
};
