//! The x86_64 kernels and the levels of the kernel table they make up, each the one below
//! with some entries replaced:
//! - `avx2` (AVX2 + FMA: Haswell and later, Zen 1 and later): our f32 panel kernel with a
//!   3 x 32 tile (`f32_avx2.rs`), the int8 `vpmaddubsw` 3 x 32 tile (`qgemm_avx2.rs`) and the quantization and
//!   depthwise loops compiled for AVX2;
//! - `avx512` (AVX-512 F, BW and VL): our f32 panel kernel (14 x 32 tile, `f32.rs`), the
//!   quantization, pooling and depthwise loops compiled for AVX-512;
//! - `avx512vnni`: the int8 `vpdpbusd` tile;
//! - `amx` (Linux on Xeons from Sapphire Rapids): int8 tile products (`amx.rs`).

mod depthwise;
pub mod f32;
mod f32_avx2;
mod f32_avx512;
pub mod pool;
pub mod qgemm;
mod qgemm_avx2;
pub mod quantize;
pub mod tile;

#[cfg(target_os = "linux")]
pub mod amx;

use super::portable;
use super::table::{Kernels, Level};

pub const AVX2: Kernels = Kernels {
    level: "avx2",
    f32: &f32::AVX2,
    int8: &qgemm_avx2::AVX2,
    quantize: &quantize::AVX2,
    depthwise: &depthwise::AVX2,
    ..portable::KERNELS
};

pub const AVX512: Kernels = Kernels {
    level: "avx512",
    f32: &f32::AVX512,
    quantize: &quantize::AVX512,
    pool: &pool::AVX512,
    depthwise: &depthwise::AVX512,
    ..AVX2
};

pub const AVX512_VNNI: Kernels = Kernels {
    level: "avx512vnni",
    int8: &qgemm::AVX512_VNNI,
    ..AVX512
};

#[cfg(target_os = "linux")]
pub const AMX: Kernels = Kernels {
    level: "amx",
    int8: &amx::AMX,
    ..AVX512_VNNI
};

/// The levels above the portable one, lowest first, each with what the CPU must have.
pub const LEVELS: &[Level] = &[
    Level {
        kernels: AVX2,
        cpu: "AVX2 + FMA (Haswell, Zen 1 and later)",
        runs: || is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
    },
    Level {
        kernels: AVX512,
        cpu: "AVX-512 F, BW, VL (Skylake-SP, Ice Lake, Zen 4 and later)",
        runs: || {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
        },
    },
    Level {
        kernels: AVX512_VNNI,
        cpu: "AVX-512 VNNI (Cascade Lake, Ice Lake, Zen 4 and later)",
        runs: || is_x86_feature_detected!("avx512vnni"),
    },
    #[cfg(target_os = "linux")]
    Level {
        kernels: AMX,
        cpu: "AMX-INT8 on Linux (Sapphire Rapids and later Xeons)",
        runs: amx::usable,
    },
];
