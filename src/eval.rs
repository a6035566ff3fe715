//! Evaluation on labelled folders (`DIR/<class>/*`, classes named as the model's labels):
//! accuracy, per-class precision and recall, the confusion matrix and throughput; and the
//! agreement of two models (int8 and f32) on any folder of photos.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::classifier::{Classifier, ClassifyOptions};
use crate::{predictions, preprocess};

/// Precision and recall of one class.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassReport {
    /// Photos of this class in the data.
    pub n: usize,
    pub precision: f64,
    pub recall: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub precision: String,
    /// Photos classified.
    pub n: usize,
    pub accuracy: f64,
    pub per_class: BTreeMap<String, ClassReport>,
    /// The class names of the matrix's rows (truth) and columns (top-1 prediction), in
    /// order; a last column `other` counts predictions outside these classes.
    pub classes: Vec<String>,
    pub confusion: Vec<Vec<usize>>,
    pub images_per_second: f64,
    pub seconds: f64,
    /// Files that could not be classified (not counted in `n`), with the reason.
    pub unreadable: Vec<String>,
}

/// One labelled folder of the data: its class name and model output index.
struct ClassFolder {
    name: String,
    output: usize,
    files: Vec<std::path::PathBuf>,
}

fn class_folders(dir: &Path, classifier: &Classifier) -> Result<Vec<ClassFolder>> {
    let labels = classifier.labels();
    let mut folders = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the data folder {}", dir.display()))?;
    let mut paths: Vec<_> = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    paths.retain(|p| p.is_dir());
    paths.sort();
    for path in paths {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let output = (0..labels.len())
            .find(|&i| {
                let label = labels.get(i).expect("index in range");
                label.name() == name || label.id == name
            })
            .with_context(|| {
                format!(
                    "the folder {} names no class of the model {:?}",
                    path.display(),
                    classifier.name()
                )
            })?;
        let mut files: Vec<_> = std::fs::read_dir(&path)
            .with_context(|| format!("cannot list {}", path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        files.retain(|f| f.is_file());
        files.sort();
        folders.push(ClassFolder {
            name,
            output,
            files,
        });
    }
    if folders.iter().all(|f| f.files.is_empty()) {
        bail!(
            "{} holds no class folders with photos (expected {}/<class>/...)",
            dir.display(),
            dir.display()
        );
    }
    Ok(folders)
}

/// Classifies every photo under `dir` and scores the answers.
pub fn evaluate(classifier: &Classifier, dir: &Path) -> Result<EvalReport> {
    let folders = class_folders(dir, classifier)?;
    let classes: Vec<String> = folders.iter().map(|f| f.name.clone()).collect();
    let other = classes.len();
    let mut confusion = vec![vec![0usize; classes.len() + 1]; classes.len()];
    let mut unreadable = Vec::new();
    let options = ClassifyOptions {
        top: 1,
        ..ClassifyOptions::default()
    };
    let started = Instant::now();
    for (truth, folder) in folders.iter().enumerate() {
        for file in &folder.files {
            let answer = std::fs::read(file)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Ok(classifier.classify_bytes(&bytes, &options)?));
            let predictions = match answer {
                Ok(predictions) => predictions,
                Err(error) => {
                    unreadable.push(format!("{}: {error:#}", file.display()));
                    continue;
                }
            };
            let predicted = predictions
                .first()
                .and_then(|p| folders.iter().position(|f| f.output == p.index))
                .unwrap_or(other);
            confusion[truth][predicted] += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let n: usize = confusion.iter().flatten().sum();
    let correct: usize = (0..classes.len()).map(|i| confusion[i][i]).sum();
    let per_class = classes
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let actual: usize = confusion[i].iter().sum();
            let predicted: usize = confusion.iter().map(|row| row[i]).sum();
            let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            let report = ClassReport {
                n: actual,
                precision: ratio(confusion[i][i], predicted),
                recall: ratio(confusion[i][i], actual),
            };
            (name.clone(), report)
        })
        .collect();
    // Binary models have no "other": drop the empty column they would show.
    if confusion.iter().all(|row| row[other] == 0) && classifier.labels().len() == classes.len() {
        confusion.iter_mut().for_each(|row| {
            row.pop();
        });
    }
    Ok(EvalReport {
        model: classifier.name().to_string(),
        precision: classifier.precision().name().to_string(),
        n,
        accuracy: if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        },
        per_class,
        classes,
        confusion,
        images_per_second: n as f64 / seconds.max(1e-9),
        seconds,
        unreadable,
    })
}

impl EvalReport {
    /// A human-readable summary.
    pub fn text(&self) -> String {
        let mut out = format!(
            "model {} ({}): {} photos, accuracy {:.4}, {:.1} images/s\n",
            self.model, self.precision, self.n, self.accuracy, self.images_per_second
        );
        out += &format!(
            "{:<16} {:>6} {:>9} {:>9}\n",
            "class", "n", "precision", "recall"
        );
        for (name, class) in &self.per_class {
            out += &format!(
                "{name:<16} {:>6} {:>9.4} {:>9.4}\n",
                class.n, class.precision, class.recall
            );
        }
        out += "confusion (rows: truth, columns: predicted):\n";
        let mut columns = self.classes.clone();
        if self
            .confusion
            .first()
            .is_some_and(|row| row.len() > columns.len())
        {
            columns.push("other".into());
        }
        out += &format!("{:<16}", "");
        for column in &columns {
            out += &format!(" {column:>8}");
        }
        out += "\n";
        for (name, row) in self.classes.iter().zip(&self.confusion) {
            out += &format!("{name:<16}");
            for count in row {
                out += &format!(" {count:>8}");
            }
            out += "\n";
        }
        for file in &self.unreadable {
            out += &format!("unreadable: {file}\n");
        }
        out
    }
}

/// How a model's answers compare with a reference model's (int8 with f32) on photos.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// Photos both models classified.
    pub photos: usize,
    /// Photos whose top-1 class is the same.
    pub agreeing: usize,
    /// The largest change of the reference's top-1 probability, 0 to 1.
    pub largest_change: f32,
    /// Files that could not be classified (not counted in `photos`), with the reason.
    pub unreadable: Vec<String>,
}

impl Agreement {
    /// The share of photos whose top-1 class is the same.
    pub fn share(&self) -> f64 {
        self.agreeing as f64 / self.photos.max(1) as f64
    }
}

/// Classifies every photo under `dir` (and its subfolders) with both models, which take
/// the same input, and compares their top-1 classes.
pub fn agreement(reference: &Classifier, other: &Classifier, dir: &Path) -> Result<Agreement> {
    let spec = &reference.spec().input;
    ensure_same_input(reference, other)?;
    let mut files = Vec::new();
    list_files(dir, &mut files)?;
    let mut report = Agreement {
        photos: 0,
        agreeing: 0,
        largest_change: 0.0,
        unreadable: Vec::new(),
    };
    // A batch at a time: decoding is the slow part on one thread, and both models then
    // read the same tensors.
    for chunk in files.chunks(16) {
        let mut inputs = Vec::with_capacity(chunk.len());
        for file in chunk {
            let input = std::fs::read(file)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| {
                    Ok(preprocess::prepare(
                        &bytes,
                        spec,
                        None,
                        preprocess::DEFAULT_MAX_PIXELS,
                    )?)
                });
            match input {
                Ok(input) => inputs.push(input),
                Err(error) => report
                    .unreadable
                    .push(format!("{}: {error:#}", file.display())),
            }
        }
        if inputs.is_empty() {
            continue;
        }
        let expected = reference.probability_rows(&inputs)?;
        let answers = other.probability_rows(&inputs)?;
        for (expected, answer) in expected.iter().zip(&answers) {
            let top = top_class(expected, reference);
            report.photos += 1;
            report.agreeing += usize::from(top_class(answer, other) == top);
            let change = (expected[top] - answer[top]).abs();
            report.largest_change = report.largest_change.max(change);
        }
    }
    if report.photos == 0 {
        bail!(
            "no photo under {} could be classified ({} files)",
            dir.display(),
            files.len()
        );
    }
    Ok(report)
}

fn ensure_same_input(reference: &Classifier, other: &Classifier) -> Result<()> {
    let (a, b) = (&reference.spec().input, &other.spec().input);
    if a != b {
        bail!(
            "the models {:?} and {:?} take different inputs",
            reference.name(),
            other.name()
        );
    }
    Ok(())
}

/// The top-1 class of a probability row, ranked as the model's answers rank it.
fn top_class(row: &[f32], model: &Classifier) -> usize {
    predictions::top_k(row, model.labels(), 1)[0].index
}

/// Every file under `dir`, subfolders included (not those reached by a symbolic link,
/// which may loop), sorted.
fn list_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the folder {}", dir.display()))?;
    let mut paths: Vec<_> = entries
        .map(|e| e.and_then(|e| Ok((e.path(), e.file_type()?.is_dir()))))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    paths.sort();
    for (path, is_folder) in paths {
        if is_folder {
            list_files(&path, files)?;
        } else if path.is_file() {
            files.push(path);
        }
    }
    Ok(())
}
