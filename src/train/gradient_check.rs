//! Checks autograd against central finite differences: the test that our hand-written
//! backward passes (and candle's) compute the gradient of the loss they claim to.

use candle_core::{Result, Tensor, Var};

/// Asserts that the gradient of `loss` with respect to every coordinate of every var
/// matches `(loss(v + h) - loss(v - h)) / 2h` within `tolerance` (relative to the
/// gradient's size, at least absolute). The loss must be a scalar, piecewise smooth, and
/// evaluated in f32, so `h` is large enough for f32 rounding to stay small. Vars with more
/// than `max_per_var` coordinates are checked at that many evenly spread ones.
///
/// A coordinate whose step crosses a kink (a ReLU or a max-pool changing its choice; the
/// vars start random, so some runs meet one) has no derivative to compare: there the
/// one-sided slopes `(loss(v + h) - loss(v)) / h` and `(loss(v) - loss(v - h)) / h`
/// disagree, and it is skipped. At most a tenth of the coordinates may be skipped.
pub fn assert_gradients(
    loss: impl Fn() -> Result<Tensor>,
    vars: &[&Var],
    tolerance: f32,
    max_per_var: usize,
) {
    const STEP: f32 = 1e-3;
    let value = |loss: &dyn Fn() -> Result<Tensor>| -> f32 {
        loss()
            .and_then(|l| l.to_scalar::<f32>())
            .expect("the loss evaluates")
    };
    let grads = loss()
        .and_then(|l| l.backward())
        .expect("the loss differentiates");
    let base = value(&loss);
    let (mut checked, mut kinks) = (0usize, 0usize);
    for (index, var) in vars.iter().enumerate() {
        let analytic: Vec<f32> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("var {index} got no gradient"))
            .flatten_all()
            .and_then(|g| g.to_vec1())
            .expect("a gradient of f32");
        let original: Vec<f32> = var
            .flatten_all()
            .and_then(|v| v.to_vec1())
            .expect("f32 var");
        let set = |values: &[f32]| {
            let tensor = Tensor::from_slice(values, var.shape(), var.device()).expect("same size");
            var.set(&tensor).expect("same shape");
        };
        let stride = analytic.len().div_ceil(max_per_var.max(1));
        for (at, &analytic) in analytic.iter().enumerate().step_by(stride) {
            let mut shifted = original.clone();
            shifted[at] = original[at] + STEP;
            set(&shifted);
            let plus = value(&loss);
            shifted[at] = original[at] - STEP;
            set(&shifted);
            let minus = value(&loss);
            set(&original);
            checked += 1;
            let (right, left) = ((plus - base) / STEP, (base - minus) / STEP);
            if (right - left).abs() > tolerance * right.abs().max(left.abs()).max(1.0) {
                kinks += 1;
                continue;
            }
            let numeric = (plus - minus) / (2.0 * STEP);
            let allowed = tolerance * analytic.abs().max(numeric.abs()).max(1.0);
            assert!(
                (analytic - numeric).abs() <= allowed,
                "var {index} {:?}, coordinate {at}: autograd {analytic} vs finite differences {numeric}",
                var.dims()
            );
        }
    }
    assert!(
        kinks * 10 <= checked,
        "{kinks} of {checked} coordinates sit at a kink: the check compared too little"
    );
}
