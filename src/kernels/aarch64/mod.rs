//! The aarch64 kernels and the levels of the kernel table they make up, each the one
//! below with some entries replaced:
//! - `neon` (every aarch64 CPU: Pi 3, Pi 4): our f32 register tiles (`sgemm.rs`), the
//!   int8 `smull` + `sadalp` tile and the depthwise loop (`depthwise.rs`); quantization
//!   and pooling are the portable loops, which the compiler vectorizes for NEON;
//! - `neon-dotprod` (Armv8.2 dot product: Pi 5's Cortex-A76): the int8 `sdot` tile;
//! - `neon-i8mm` (Armv8.6 int8 matrix multiply: Neoverse V1/N2, Graviton 3/4; no Pi):
//!   the int8 `smmla` tile.

pub mod depthwise;
pub mod qgemm;
pub mod sgemm;

use super::f32_weights::{F32Kernel, F32Run};
use super::gemm::tiled;
use super::portable;
use super::table::{Kernels, Level};

/// `c += a * b` by our `8 x 8` tiles, row-major weights read in place.
pub static F32_NEON: F32Kernel = F32Kernel {
    name: "neon",
    run: F32Run::RowMajor(tiled::accumulate),
};

pub const NEON: Kernels = Kernels {
    level: "neon",
    f32: &F32_NEON,
    int8: &qgemm::NEON,
    depthwise: &depthwise::NEON,
    ..portable::KERNELS
};

pub const NEON_DOTPROD: Kernels = Kernels {
    level: "neon-dotprod",
    int8: &qgemm::NEON_DOTPROD,
    ..NEON
};

pub const NEON_I8MM: Kernels = Kernels {
    level: "neon-i8mm",
    int8: &qgemm::NEON_I8MM,
    ..NEON_DOTPROD
};

/// The levels above the portable one, lowest first, each with what the CPU must have.
pub const LEVELS: &[Level] = &[
    Level {
        kernels: NEON,
        cpu: "every aarch64 CPU (Pi 3, Pi 4)",
        // Advanced SIMD is part of every aarch64 CPU.
        runs: || true,
    },
    Level {
        kernels: NEON_DOTPROD,
        cpu: "Armv8.2 dot product (Pi 5's Cortex-A76)",
        runs: || std::arch::is_aarch64_feature_detected!("dotprod"),
    },
    Level {
        kernels: NEON_I8MM,
        cpu: "Armv8.6 int8 matrix multiply (Neoverse V1/N2, Graviton 3/4)",
        runs: || std::arch::is_aarch64_feature_detected!("i8mm"),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The levels differ only in their int8 tile: `make test-arm64` runs the f32, Winograd
    /// and depthwise tests on one CPU model only, which this keeps true.
    #[test]
    fn every_level_runs_the_same_f32_and_depthwise_kernels() {
        for level in LEVELS {
            assert!(
                std::ptr::eq(level.kernels.f32, NEON.f32),
                "{}",
                level.kernels.level
            );
            assert!(
                std::ptr::eq(level.kernels.depthwise, NEON.depthwise),
                "{}",
                level.kernels.level
            );
            for (operation, name) in level.kernels.entries() {
                if operation != "int8" {
                    let neon = NEON.entries().into_iter().find(|(o, _)| *o == operation);
                    assert_eq!(neon, Some((operation, name)), "{}", level.kernels.level);
                }
            }
        }
    }
}
