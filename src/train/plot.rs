//! The learning curves of a run as a PNG: loss and accuracy per epoch, train and
//! validation, drawn with plotters and the bundled DejaVu Sans (no system fonts needed;
//! a Latin subset, see assets/fonts/README.md).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::record::EpochRecord;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");

fn ensure_font() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // Only fails for a malformed font, and the bundled one is known good.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws two panels (loss, accuracy) side by side into `path`.
pub fn learning_curves(history: &[EpochRecord], title: &str, path: &Path) -> Result<()> {
    ensure_font();
    let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(600);
    let epochs = history.len().max(2) as f64;
    type Pick = fn(&EpochRecord) -> (f64, f64);
    let panels: [(_, &str, Pick); 2] = [
        (left, "loss", |r| (r.train_loss, r.val_loss)),
        (right, "accuracy", |r| (r.train_accuracy, r.val_accuracy)),
    ];
    for (area, name, values) in panels {
        let points: Vec<(f64, f64)> = history.iter().map(values).collect();
        let (low, high) = points
            .iter()
            .flat_map(|&(a, b)| [a, b])
            .filter(|v| v.is_finite())
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (low, high) = if low <= high { (low, high) } else { (0.0, 1.0) };
        let margin = ((high - low) * 0.1).max(1e-3);
        let mut chart = ChartBuilder::on(&area)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(1.0..epochs, (low - margin)..(high + margin))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (label, colour, pick) in [
            (
                "train",
                BLUE,
                (|p: &(f64, f64)| p.0) as fn(&(f64, f64)) -> f64,
            ),
            ("validation", RED, |p| p.1),
        ] {
            let series = history
                .iter()
                .zip(&points)
                .map(|(record, point)| (record.epoch as f64, pick(point)));
            chart
                .draw_series(LineSeries::new(series, colour.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour));
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present()
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let history: Vec<EpochRecord> = (1..=4)
            .map(|epoch| EpochRecord {
                epoch,
                learning_rate: 1e-3,
                train_loss: 1.0 / epoch as f64,
                train_accuracy: 0.5 + 0.1 * epoch as f64,
                val_loss: 1.2 / epoch as f64,
                val_accuracy: 0.45 + 0.1 * epoch as f64,
                val_mean_recall: None,
                seconds: 1.0,
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        learning_curves(&history, "test", &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let image = image::load_from_memory(&bytes).unwrap();
        assert_eq!((image.width(), image.height()), (1200, 480));
    }
}
