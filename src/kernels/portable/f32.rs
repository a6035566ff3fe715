//! The portable f32 products: the `gemm` crate for the `portable` level (its own
//! microkernels, chosen at run time), and a reference over the panel layout that tests
//! the panel drivers' reading of padded rows on every CPU.

use crate::kernels::f32_weights::{F32Kernel, F32Run};
use crate::kernels::gemm::{self, MatMul, View};
use crate::kernels::Threads;

/// `c += a * b` through the `gemm` crate, which packs both operands in every call.
pub static GEMM_CRATE: F32Kernel = F32Kernel {
    name: "gemm-crate",
    run: F32Run::RowMajor(accumulate),
};

fn accumulate(p: &MatMul, c: &mut [f32], threads: Threads) {
    let a = View {
        data: p.a,
        rows: p.m,
        cols: p.k,
        row_stride: p.lda,
        col_stride: 1,
    };
    gemm::product(a, View::row_major(p.b, p.k, p.n), c, true, threads);
}

/// The panel layout's reference kernel: value by value, through
/// [`Left::value`](crate::kernels::f32_weights::Left::value).
#[cfg(test)]
pub(crate) static PANELS_REFERENCE: F32Kernel = F32Kernel {
    name: "panels-reference",
    run: F32Run::Panels(panels_reference),
};

/// # Safety
/// As [`crate::kernels::f32_weights::PanelKernel`].
#[cfg(test)]
unsafe fn panels_reference(product: &crate::kernels::f32_weights::PanelProduct) {
    let crate::kernels::f32_weights::PanelProduct {
        w,
        m,
        left,
        c,
        finish,
        ref panels,
    } = *product;
    use crate::kernels::f32_weights::PANEL;
    use crate::kernels::Start;
    let (k, n) = (w.k, w.n);
    for col in panels.start * PANEL..(panels.end * PANEL).min(n) {
        for row in 0..m {
            let sum: f32 = (0..k).map(|i| left.value(row, i) * w.get(i, col)).sum();
            let out = c.add(row * n + col);
            let start = match finish.start {
                Start::Output => *out,
                Start::Bias { bias, shortcut } => {
                    bias[col] + shortcut.map_or(0.0, |s| s[row * n + col])
                }
            };
            let value = start + sum;
            *out = if finish.relu {
                crate::kernels::pool::larger(value, 0.0)
            } else {
                value
            };
        }
    }
}
