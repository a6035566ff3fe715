//! 32-bit ARM (armv7, Raspberry Pi OS 32-bit) NEON microkernels, in assembly: stable Rust
//! has no NEON intrinsics or `neon` target feature on this target, and candle's `gemm`
//! crate is scalar here. They make up the table's `neon-armv7` level: the f32 4 x 8 tile
//! (run by `gemm::tiled`, shared with aarch64), the int8 2 x 8 tile (`qgemm.rs`), the
//! quantization loop and the depthwise loop (`depthwise.rs`). NEON is taken only when the
//! kernel reports it (HWCAP), never assumed from the build.

pub mod depthwise;
pub mod qgemm;

use std::sync::OnceLock;

use super::f32_weights::{F32Kernel, F32Run};
use super::gemm::tiled;
use super::portable;
use super::portable::quantize::{max_value_portable, maxima_portable, quantize_portable};
use super::quantize::QuantizeKernel;
use super::table::{Kernels, Level};

pub const NEON: Kernels = Kernels {
    level: "neon-armv7",
    f32: &F32_NEON,
    int8: &qgemm::NEON,
    quantize: &QUANTIZE_NEON,
    depthwise: &depthwise::NEON,
    ..portable::KERNELS
};

/// The level above the portable one, with what the CPU must have.
pub const LEVELS: &[Level] = &[Level {
    kernels: NEON,
    cpu: "32-bit ARM with NEON (Pi 2 and later on 32-bit Raspberry Pi OS)",
    runs: has_neon,
}];

/// `c += a * b` by the 4 x 8 assembly tile, row-major weights read in place.
pub static F32_NEON: F32Kernel = F32Kernel {
    name: "neon-armv7",
    run: F32Run::RowMajor(tiled::accumulate),
};

/// The assembly loop on multiples of eight values, the portable one on the rest.
pub static QUANTIZE_NEON: QuantizeKernel = QuantizeKernel {
    name: "neon-armv7",
    max_value: max_value_portable,
    maxima: maxima_portable,
    quantize: |values, inverse_scale, max, out| {
        // SAFETY: `plug` lists it only when the CPU has NEON.
        let done = unsafe { quantize_prefix(values, inverse_scale, max, out) };
        quantize_portable(&values[done..], inverse_scale, max, &mut out[done..])
    },
};

// `raw`: the braces are NEON register lists, not format arguments.
std::arch::global_asm!(include_str!("sgemm_4x8.S"), options(raw));
std::arch::global_asm!(include_str!("qgemm_2x8.S"), options(raw));
std::arch::global_asm!(include_str!("quantize_8.S"), options(raw));

/// Arguments of [`sgemm_4x8`]; strides in bytes.
#[repr(C)]
pub struct F32Tile {
    pub k: usize,
    pub a: [*const f32; 4],
    pub b: *const f32,
    pub ldb: usize,
    pub c: *mut f32,
    pub ldc: usize,
}

/// Arguments of [`qgemm_2x8`]; `ldc` in bytes.
#[repr(C)]
pub struct QTile {
    pub quads: usize,
    pub a: [*const u8; 2],
    pub b: *const i8,
    pub c: *mut f32,
    pub ldc: usize,
    pub scale: *const f32,
    pub row_scale: *const f32,
}

extern "C" {
    /// `c[4 x 8] += a[4 x k] * b[k x 8]`: reads `k` floats of each row, `k` rows of
    /// eight weights `ldb` bytes apart, and four rows of eight outputs `ldc` bytes apart.
    #[link_name = "edge_classify_sgemm_4x8_armv7"]
    fn sgemm_4x8_asm(tile: *const F32Tile);
    /// `c[2 x 8] += (a[2 x 4 quads] * b) * scale[j] * row_scale[r]`: reads `4 * quads`
    /// bytes of each row, `quads` quads of a packed panel's eight-column group (128 bytes
    /// apart), eight scales, two row scales and two rows of eight outputs.
    #[link_name = "edge_classify_qgemm_2x8_armv7"]
    fn qgemm_2x8_asm(tile: *const QTile);
    /// Quantizes `8 * steps` values (`steps > 0`) into `out`.
    #[link_name = "edge_classify_quantize_8_armv7"]
    fn quantize_8_asm(values: *const f32, out: *mut u8, steps: usize, inverse: f32, top: f32);
}

/// # Safety
/// [`has_neon`] is true and every pointer of `tile` reaches what the kernel reads and
/// writes (see the declaration).
pub unsafe fn sgemm_4x8(tile: &F32Tile) {
    sgemm_4x8_asm(tile)
}

/// # Safety
/// As [`sgemm_4x8`], for [`QTile`].
pub unsafe fn qgemm_2x8(tile: &QTile) {
    qgemm_2x8_asm(tile)
}

/// Quantizes the longest multiple-of-eight prefix of `values` into `out` as
/// `quantize_portable` does (the same bytes) and returns its length.
///
/// # Safety
/// [`has_neon`] is true.
pub unsafe fn quantize_prefix(values: &[f32], inverse: f32, top: u8, out: &mut [u8]) -> usize {
    assert_eq!(values.len(), out.len());
    let steps = values.len() / 8;
    if steps > 0 {
        quantize_8_asm(
            values.as_ptr(),
            out.as_mut_ptr(),
            steps,
            inverse,
            top as f32,
        );
    }
    steps * 8
}

/// Whether the CPU has NEON (Advanced SIMD): from the kernel's HWCAP, since
/// `is_arm_feature_detected!` is unstable.
pub fn has_neon() -> bool {
    static NEON: OnceLock<bool> = OnceLock::new();
    *NEON.get_or_init(|| {
        // linux/arch/arm/include/uapi/asm/hwcap.h
        const HWCAP_NEON: libc::c_ulong = 1 << 12;
        // SAFETY: getauxval reads the process's auxiliary vector; no preconditions.
        let neon = unsafe { libc::getauxval(libc::AT_HWCAP) } & HWCAP_NEON != 0;
        tracing::info!(neon, "armv7 CPU features");
        neon
    })
}
