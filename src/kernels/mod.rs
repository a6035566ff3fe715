//! CPU kernels of the inference plan ([`crate::plan`]): matrix products, im2col, pooling,
//! depthwise convolution,
//! and how a layer's bands share the pool's threads (`for_each_band`).
//!
//! The layout is tract-linalg's: the operations' drivers here (`f32_weights`, `gemm`,
//! `qgemm`, `quantize`, `pool`, `im2col`), one folder per instruction set with the
//! kernels for it (`x86_64/`, `aarch64/`, `arm/`; `portable/` for every CPU, and the
//! references the tests compare every kernel with), and one table ([`table`]) that says
//! which kernel runs each operation on this CPU, chosen once per process. Our own kernels
//! live here only where no crate is fast enough: int8 everywhere, f32 on x86 (weights
//! packed once, the bias, shortcut and ReLU in the stores) and f32 on ARM (the `gemm`
//! crate is scalar on armv7 and packs both operands in every call on aarch64).

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod aligned;
#[cfg(target_arch = "arm")]
pub mod arm;
pub mod depthwise;
pub mod f32_weights;
pub mod gemm;
pub mod im2col;
pub mod pool;
pub mod portable;
pub mod qgemm;
pub mod quantize;
pub mod table;
pub mod winograd;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub use table::{table, Kernels};

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

impl<'a> Finish<'a> {
    /// `c += a * b`.
    pub const ACCUMULATE: Finish<'static> = Finish {
        start: Start::Output,
        relu: false,
    };

    /// Sums added to `bias` (one per column), then the ReLU if `relu`.
    pub fn from_bias(bias: &'a [f32], relu: bool) -> Self {
        Finish {
            start: Start::Bias {
                bias,
                shortcut: None,
            },
            relu,
        }
    }

    /// Checks the start's shapes against `c`, rows of `n`.
    pub fn check(&self, c: &[f32], n: usize) {
        self.check_len(c.len(), n);
    }

    /// [`Self::check`] for an output of `len` values held by pointer.
    pub fn check_len(&self, len: usize, n: usize) {
        if let Start::Bias { bias, shortcut } = self.start {
            assert_eq!(bias.len(), n, "one bias per column");
            assert!(shortcut.is_none_or(|s| s.len() == len), "shortcut shape");
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

/// Packed weight bytes one block of panels may hold: a quarter of a 1 MB L2 (Zen 4/5,
/// Intel server cores, Cortex-A72's shared L2), half of the 512 KB of a Cortex-A76's;
/// 64 KB to 1 MB measured within noise of each other on Zen 5.
const PANEL_BLOCK_BYTES: usize = 256 * 1024;

/// Panels (column strips of packed weights, `panel_bytes` each) in blocks of at most
/// [`PANEL_BLOCK_BYTES`], at least one panel each. A driver runs every row tile over one
/// block before the next: the block's weights stay in L2 while the rows pass, and each
/// row tile runs all the block's panels in turn, so its activations stay in L1 and its
/// output rows are written whole, in order. With panels outermost instead, a layer of
/// small K and wide output (ResNet's 1 x 1 expansions: K 64, N 256, 3136 rows) wrote its
/// 3 MB output in 32-column strips, one pass each: those int8 layers took 30 % longer,
/// the int8 pass 5-15 % (x86 Zen 5, per-layer timers, alternating runs).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn panel_blocks(
    panels: usize,
    panel_bytes: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    let per_block = (PANEL_BLOCK_BYTES / panel_bytes.max(1)).max(1);
    (0..panels)
        .step_by(per_block)
        .map(move |first| first..(first + per_block).min(panels))
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

/// Runs `band` on every item, in parallel on the pool's threads: halves by
/// [`rayon::join`], whose caller, its own half done while another thread runs the other,
/// spins until that one ends rather than sleep. Left to rayon, a thread that waited at
/// one layer's join fell asleep, and the other one then too before the next layer came:
/// every layer began with a wake-up, 10-18 µs each (2 vCPUs, bands of 50-200 µs), 55
/// times a ResNet-50 pass; spinning, ~1 µs.
pub(crate) fn for_each_band<T: Send>(items: Vec<T>, band: &(impl Fn(T) + Sync)) {
    let mut left = items;
    match left.len() {
        0 => {}
        1 => left.drain(..).for_each(band),
        len => {
            let right = left.split_off(len / 2);
            join_spinning(|| for_each_band(left, band), || for_each_band(right, band));
        }
    }
}

/// The longest the caller of a join spins for the other half: far above what two bands
/// of one layer differ by, far below a whole pass (so a half whose thread was
/// preempted costs a bounded spin, then rayon's wait).
const SPIN_FOR_OTHER_HALF: std::time::Duration = std::time::Duration::from_micros(500);

/// [`rayon::join`] whose caller spins, its half done, while another thread runs `b`.
fn join_spinning(a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
    use std::sync::atomic::{AtomicU8, Ordering};
    const QUEUED: u8 = 0;
    const RUNNING: u8 = 1;
    const DONE: u8 = 2;
    let b_state = AtomicU8::new(QUEUED);
    rayon::join(
        || {
            a();
            // Not started: rayon runs `b` here next. Done: nothing to wait for.
            let start = std::time::Instant::now();
            while b_state.load(Ordering::Acquire) == RUNNING
                && start.elapsed() < SPIN_FOR_OTHER_HALF
            {
                std::hint::spin_loop();
            }
        },
        || {
            b_state.store(RUNNING, Ordering::Release);
            b();
            b_state.store(DONE, Ordering::Release);
        },
    );
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

/// The finish of test case `case`: 0 accumulates onto the output, 1 and 2 start at the
/// bias (2 with a shortcut); odd cases end in the ReLU.
#[cfg(test)]
pub(crate) fn finish_of_case<'a>(case: usize, bias: &'a [f32], shortcut: &'a [f32]) -> Finish<'a> {
    let start = match case % 3 {
        0 => Start::Output,
        1 => Start::Bias {
            bias,
            shortcut: None,
        },
        _ => Start::Bias {
            bias,
            shortcut: Some(shortcut),
        },
    };
    Finish {
        start,
        relu: case % 2 == 1,
    }
}

#[cfg(test)]
mod tests {
    use super::for_each_band;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Every item runs once, however many there are, called from outside the pool and
    /// from inside it (where the plan calls it), with bands of uneven length.
    #[test]
    fn every_band_runs_once() {
        for items in 0..9 {
            let runs: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
            let band = |i: usize| {
                std::thread::sleep(std::time::Duration::from_micros(50 * (i as u64 % 3)));
                runs[i].fetch_add(1, Ordering::Relaxed);
            };
            for_each_band((0..items).collect(), &band);
            rayon::scope(|_| for_each_band((0..items).collect(), &band));
            assert!(
                runs.iter().all(|r| r.load(Ordering::Relaxed) == 2),
                "{items} items"
            );
        }
    }
}
