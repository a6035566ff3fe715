//! The int8 product on Intel's Advanced Matrix Extensions (Sapphire Rapids and later
//! Xeons): `tdpbusd` multiplies a 16 x 64 tile of u8 activations by a 64 x 16 tile of i8
//! weights into 16 x 16 i32 sums, 16,384 multiply-adds per instruction against the 64 of
//! an AVX-512 `vpdpbusd`.
//!
//! Eight tile registers: four hold a 32 x 32 block of sums, two the activations of its
//! 32 rows and two the weights of its 32 columns, 64 k at a time. The weights need no
//! layout of their own: a packed panel's k-quads are rows of 32 columns x 4 bytes, so
//! each half of a panel is a weight tile at a stride of 128 bytes. The activations load
//! straight from their rows. The sums go through a scratch block in L1 to the same
//! scaling, bias, shortcut and ReLU as the VNNI kernel's stores.
//!
//! Tiles read whole 64-byte k-steps and 16 rows: a product whose K is not a multiple of
//! 64 (none of ResNet-50's: their K are 64..4608 in steps of 64) or that has fewer than
//! 16 rows goes to the VNNI kernel. The last rows of a product end in a tile moved back
//! to end at its last row, which stores only the rows not stored yet.
//!
//! Linux lends the tiles' 8 KB of register state to a process only on request
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, Linux 5.16 and later): [`usable`] asks once and
//! the kernel is offered only if it was granted. Rust's AMX intrinsics are unstable, so
//! the instructions are inline assembly.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::qgemm as x86;
use super::tile::TileFinish;
use crate::kernels::qgemm::{Kernel, Product, QMatMul, PANEL, QUAD_BYTES};
use crate::kernels::Finish;

pub static AMX: Kernel = Kernel {
    name: "amx",
    max_activation: 255,
    // SAFETY: `plug` lists it only when `usable` holds.
    run: Product::Finishing(|p, c, finish| unsafe { run(p, c, finish) }),
};

/// K per tile step: one tile row of 64 activation bytes.
const STEP_K: usize = 64;
/// Rows (and columns) of one tile of sums.
const TILE: usize = 16;

/// Whether this CPU has AMX-INT8 and the AVX-512 VNNI kernel (the fallback for ragged
/// products), and Linux granted this process the tile state.
pub fn usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        let vnni = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni");
        // CPUID leaf 7 (present: AVX-512 is reported there), EDX bit 24 AMX-TILE and
        // bit 25 AMX-INT8.
        let edx = __cpuid_count(7, 0).edx;
        let amx = edx & (1 << 24) != 0 && edx & (1 << 25) != 0;
        vnni && amx && request_tile_state()
    })
}

/// Asks Linux for the tile data state (XFEATURE_XTILEDATA, 18) for the whole process.
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a system call with integer arguments; it changes only what this process may
    // use (an older kernel answers EINVAL).
    let answer = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if answer != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "Linux refused the AMX tile state"
        );
    }
    answer == 0
}

/// The tile palette this kernel uses, loaded by `ldtilecfg` (64 bytes, palette 1): all
/// eight tiles 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// The tiles configured on this thread for as long as it lives; released on drop, so
/// the thread's context switches stop saving 8 KB of tile state.
struct Tiles;

impl Tiles {
    /// # Safety
    /// AMX is [`usable`].
    unsafe fn configure() -> Tiles {
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        for tile in 0..8 {
            config.bytes_per_row[tile] = STEP_K as u16;
            config.rows[tile] = TILE as u8;
        }
        asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig, options(nostack, readonly));
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `configure`.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// A block of sums, 32 rows of 32 columns, as the tiles store it.
#[repr(C, align(64))]
struct Sums([[i32; PANEL]; 2 * TILE]);

/// # Safety
/// AMX is [`usable`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn run(p: &QMatMul, c: &mut [f32], finish: &Finish) {
    let (k, n) = (p.b.k, p.b.n);
    if !k.is_multiple_of(STEP_K) || p.m < TILE {
        return x86::run_vnni(p, c, finish);
    }
    let _tiles = Tiles::configure();
    let mut sums = Sums([[0; PANEL]; 2 * TILE]);
    for panels in p.b.panel_blocks() {
        let mut row = 0;
        while row < p.m {
            // 32 rows while they last, then 16; the last 16 rows of the product end the
            // last tile, of which only the rows from `row` are stored.
            let (first, rows) = match p.m - row {
                left if left >= 2 * TILE => (row, 2 * TILE),
                left if left >= TILE => (row, TILE),
                _ => (p.m - TILE, TILE),
            };
            let a = p.a.as_ptr().add(first * p.lda);
            for panel in panels.clone() {
                let b = p.b.panel(panel).as_ptr();
                if rows == 2 * TILE {
                    sums_32x32(a, p.lda, b, k / STEP_K, &mut sums);
                } else {
                    sums_16x32(a, p.lda, b, k / STEP_K, &mut sums);
                }
                let col = panel * PANEL;
                let cols = (n - col).min(PANEL);
                let tile_finish = TileFinish::at(finish, n, first, col);
                let out = &mut c[first * n + col..];
                for r in row - first..rows {
                    let sums_row = sums.0[r].as_ptr() as *const __m512i;
                    let row_sums = [
                        _mm512_load_si512(sums_row),
                        _mm512_load_si512(sums_row.add(1)),
                    ];
                    let row_scale = p.row_scale[first + r];
                    x86::store_row(
                        row_sums,
                        row_scale,
                        &p.scale[col..],
                        cols,
                        &tile_finish,
                        out,
                        r,
                        n,
                    );
                }
            }
            row = first + rows;
        }
    }
}

/// The sums of 32 activation rows (from `a`, `lda` apart) and one 32-column panel `b`
/// over `steps` k-steps of 64, into `sums`.
///
/// # Safety
/// The tiles are configured; `a` holds 32 rows of `steps * 64` bytes, `b` a panel of
/// `steps * 16` quads.
#[inline]
unsafe fn sums_32x32(a: *const u8, lda: usize, b: *const i8, steps: usize, sums: &mut Sums) {
    let a_lower = a.add(TILE * lda);
    let out = sums.0.as_mut_ptr() as *mut i32;
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "2:",
        "tileloadd tmm4, [{a} + {lda}*1]",
        "tileloadd tmm6, [{b} + {ldb}*1]",
        "tdpbusd tmm0, tmm4, tmm6",
        "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
        "tdpbusd tmm1, tmm4, tmm7",
        "tileloadd tmm5, [{a_lower} + {lda}*1]",
        "tdpbusd tmm2, tmm5, tmm6",
        "tdpbusd tmm3, tmm5, tmm7",
        "add {a}, 64",
        "add {a_lower}, 64",
        "add {b}, {step_b}",
        "dec {steps}",
        "jnz 2b",
        "tilestored [{out} + {ldo}*1], tmm0",
        "tilestored [{out} + {ldo}*1 + 64], tmm1",
        "tilestored [{out_lower} + {ldo}*1], tmm2",
        "tilestored [{out_lower} + {ldo}*1 + 64], tmm3",
        a = inout(reg) a => _,
        a_lower = inout(reg) a_lower => _,
        b = inout(reg) b => _,
        steps = inout(reg) steps => _,
        lda = in(reg) lda,
        ldb = in(reg) QUAD_BYTES,
        step_b = const STEP_K / 4 * QUAD_BYTES,
        out = in(reg) out,
        out_lower = in(reg) out.add(TILE * PANEL),
        ldo = in(reg) PANEL * 4,
        options(nostack),
    );
}

/// [`sums_32x32`] for 16 rows: the first 16 rows of `sums`.
///
/// # Safety
/// As [`sums_32x32`], with 16 rows.
#[inline]
unsafe fn sums_16x32(a: *const u8, lda: usize, b: *const i8, steps: usize, sums: &mut Sums) {
    let out = sums.0.as_mut_ptr() as *mut i32;
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "2:",
        "tileloadd tmm4, [{a} + {lda}*1]",
        "tileloadd tmm6, [{b} + {ldb}*1]",
        "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
        "tdpbusd tmm0, tmm4, tmm6",
        "tdpbusd tmm1, tmm4, tmm7",
        "add {a}, 64",
        "add {b}, {step_b}",
        "dec {steps}",
        "jnz 2b",
        "tilestored [{out} + {ldo}*1], tmm0",
        "tilestored [{out} + {ldo}*1 + 64], tmm1",
        a = inout(reg) a => _,
        b = inout(reg) b => _,
        steps = inout(reg) steps => _,
        lda = in(reg) lda,
        ldb = in(reg) QUAD_BYTES,
        step_b = const STEP_K / 4 * QUAD_BYTES,
        out = in(reg) out,
        ldo = in(reg) PANEL * 4,
        options(nostack),
    );
}
