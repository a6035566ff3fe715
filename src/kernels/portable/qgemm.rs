//! The int8 product's reference: portable loops, every CPU; the oracle of the tests.

use crate::kernels::qgemm::{Kernel, Product, QMatMul};

pub static REFERENCE: Kernel = Kernel {
    name: "reference",
    max_activation: 255,
    run: Product::Accumulating(reference),
};

fn reference(p: &QMatMul, c: &mut [f32]) {
    let (k, n) = (p.b.k, p.b.n);
    for row in 0..p.m {
        let a = &p.a[row * p.lda..row * p.lda + k];
        for col in 0..n {
            let acc: i32 = a
                .iter()
                .enumerate()
                .map(|(kk, &x)| x as i32 * p.b.get(kk, col) as i32)
                .sum();
            c[row * n + col] += acc as f32 * (p.scale[col] * p.row_scale[row]);
        }
    }
}
