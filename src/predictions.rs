//! Predictions and how they are written: the JSON objects of the CLI and the function,
//! and the original Keras service's `Predicted: [(...), ...]` line.

use serde::Serialize;

use crate::labels::Labels;

/// Most predictions one answer may list (`--top`, `?top=`): every class of the largest
/// model. A `top` above a model's classes answers them all.
pub const MAX_TOP: usize = crate::labels::MAX_CLASSES;
/// Predictions listed when the caller does not say.
pub const DEFAULT_TOP: usize = 5;

/// One class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub index: usize,
    pub id: String,
    pub label: String,
    pub score: f32,
}

/// The `top` most probable classes, best first (ties keep the lower index first).
pub fn top_k(probabilities: &[f32], labels: &Labels, top: usize) -> Vec<Prediction> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| {
        probabilities[b]
            .total_cmp(&probabilities[a])
            .then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(top)
        .map(|index| {
            let (id, label) = match labels.get(index) {
                Some(l) => (l.id.clone(), l.name().to_string()),
                None => (index.to_string(), index.to_string()),
            };
            Prediction {
                index,
                id,
                label,
                score: probabilities[index],
            }
        })
        .collect()
}

/// The original service's answer, as Keras' `decode_predictions` printed it:
/// `Predicted: [('n02129604', 'tiger', 0.92590034), ...]`.
pub fn keras_line(predictions: &[Prediction]) -> String {
    let items: Vec<String> = predictions
        .iter()
        .map(|p| {
            format!(
                "({}, {}, {})",
                python_str(&p.id),
                python_str(&p.label.replace(' ', "_")),
                numpy_float32(p.score)
            )
        })
        .collect();
    format!("Predicted: [{}]", items.join(", "))
}

/// Python's `repr()` of a string: single quotes unless the text holds one and no double.
fn python_str(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// numpy's `repr()` of a float32: the shortest digits that round-trip, positional from
/// 1e-4 up to 1e16, scientific (`1.2345e-05`) outside that range.
fn numpy_float32(value: f32) -> String {
    let magnitude = value.abs();
    if value == 0.0 || (1e-4..1e16).contains(&magnitude) {
        let text = value.to_string();
        if text.contains('.') {
            text
        } else {
            format!("{text}.0")
        }
    } else if value.is_finite() {
        let text = format!("{value:e}");
        let (mantissa, exponent) = text.split_once('e').expect("{:e} always has an exponent");
        let (sign, digits) = match exponent.strip_prefix('-') {
            Some(digits) => ('-', digits),
            None => ('+', exponent),
        };
        format!("{mantissa}e{sign}{digits:0>2}")
    } else if value.is_nan() {
        "nan".to_string()
    } else if value > 0.0 {
        "inf".to_string()
    } else {
        "-inf".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels {
        Labels::parse(
            "0\tn01\ttiger, Panthera tigris\n1\tn02\ttiger cat\n2\tn03\tjack-o'-lantern\n",
        )
        .unwrap()
    }

    #[test]
    fn keras_line_matches_the_original_service() {
        let predictions = top_k(&[0.92590034, 0.045378, 1.2e-5], &labels(), 3);
        assert_eq!(
            keras_line(&predictions),
            "Predicted: [('n01', 'tiger', 0.92590034), ('n02', 'tiger_cat', 0.045378), \
             ('n03', \"jack-o'-lantern\", 1.2e-05)]"
        );
    }

    #[test]
    fn numpy_style_floats() {
        assert_eq!(numpy_float32(1.0), "1.0");
        assert_eq!(numpy_float32(0.0), "0.0");
        assert_eq!(numpy_float32(0.0001), "0.0001");
        assert_eq!(numpy_float32(3.5e-7), "3.5e-07");
        assert_eq!(numpy_float32(0.017654872), "0.017654872");
    }

    #[test]
    fn top_k_orders_by_score_then_index() {
        let predictions = top_k(&[0.2, 0.5, 0.2], &labels(), 5);
        let order: Vec<usize> = predictions.iter().map(|p| p.index).collect();
        assert_eq!(order, [1, 0, 2]);
        assert_eq!(predictions[0].label, "tiger cat");
    }
}
