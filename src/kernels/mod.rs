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

/// How a product's sums land in its output `c`.
#[derive(Debug, Clone, Copy)]
pub struct Finish<'a> {
    pub start: Start<'a>,
    /// ReLU on the result.
    pub relu: bool,
}

/// What a product's sums are added to.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// What `c` holds.
    Output,
    /// The bias of each column, plus a `shortcut` of `c`'s shape (a residual block's end).
    Bias {
        bias: &'a [f32],
        shortcut: Option<&'a [f32]>,
    },
}

impl Finish<'_> {
    /// `c += a * b`.
    pub const ACCUMULATE: Finish<'static> = Finish {
        start: Start::Output,
        relu: false,
    };

    /// Checks the start's shapes against `c`, rows of `n`.
    pub fn check(&self, c: &[f32], n: usize) {
        if let Start::Bias { bias, shortcut } = self.start {
            assert_eq!(bias.len(), n, "one bias per column");
            assert!(
                shortcut.is_none_or(|s| s.len() == c.len()),
                "shortcut shape"
            );
        }
    }

    /// Sets `c` (rows of `n`) to the start, for kernels that add their sums onto `c`.
    pub fn fill_start(&self, c: &mut [f32], n: usize) {
        if let Start::Bias { bias, shortcut } = self.start {
            for row in c.chunks_exact_mut(n) {
                row.copy_from_slice(bias);
            }
            if let Some(shortcut) = shortcut {
                c.iter_mut().zip(shortcut).for_each(|(c, s)| *c += s);
            }
        }
    }

    /// The ReLU as a pass of its own, for kernels that do not fuse it.
    pub fn apply_relu(&self, c: &mut [f32]) {
        if self.relu {
            pool::relu(c);
        }
    }
}

/// `[f(0), .., f(N - 1)]`, always inlined, for the SIMD kernels' per-row arrays (rows,
/// loads, quads): `std::array::from_fn` is only a hint to inline, and once the AVX2 int8
/// tile grew its closure became a call per k-quad (perf: 2 % -> 7 % of an int8 pass).
#[inline(always)]
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")),
    allow(dead_code)
)]
pub(crate) fn unrolled<T: Copy, const N: usize>(mut f: impl FnMut(usize) -> T) -> [T; N] {
    let mut out = std::mem::MaybeUninit::<[T; N]>::uninit();
    let first = out.as_mut_ptr() as *mut T;
    for i in 0..N {
        // SAFETY: `i < N` lies inside the array; `T: Copy` has no drop to skip should
        // `f` panic midway.
        unsafe { first.add(i).write(f(i)) };
    }
    // SAFETY: the loop wrote all `N` elements.
    unsafe { out.assume_init() }
}

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
