//! Class labels: the `index<TAB>id<TAB>names` files beside the weights, in the order of
//! the model's outputs.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Most classes a model may have (ImageNet's 1000); training refuses more.
pub const MAX_CLASSES: usize = 1000;

/// One output class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// A stable identifier, e.g. the WordNet id `n02129604`.
    pub id: String,
    /// Comma-separated synonyms, the first being the class's name.
    pub names: String,
}

impl Label {
    /// The first of the names (`tiger` for `tiger, Panthera tigris`).
    pub fn name(&self) -> &str {
        self.names.split(", ").next().unwrap_or(&self.names)
    }
}

/// All labels of a model, indexed by output position.
#[derive(Debug, Clone)]
pub struct Labels(Vec<Label>);

impl Labels {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the label file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the label file {}", path.display()))
    }

    /// Parses `index<TAB>id<TAB>names` lines; indices must run 0, 1, 2, ...
    pub fn parse(text: &str) -> Result<Self> {
        let mut labels = Vec::new();
        for (line_number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
            if line.trim().is_empty() {
                continue;
            }
            let mut fields = line.splitn(3, '\t');
            let (Some(index), Some(id), Some(names)) =
                (fields.next(), fields.next(), fields.next())
            else {
                bail!("line {line_number}: expected index<TAB>id<TAB>names");
            };
            let index: usize = index
                .trim()
                .parse()
                .with_context(|| format!("line {line_number}: {index:?} is not an index"))?;
            if index != labels.len() {
                bail!(
                    "line {line_number}: index {index}, expected {}",
                    labels.len()
                );
            }
            labels.push(Label {
                id: id.trim().to_string(),
                names: names.trim().to_string(),
            });
        }
        if labels.is_empty() {
            bail!("no labels");
        }
        Ok(Self(labels))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&Label> {
        self.0.get(index)
    }

    /// Every class's name, in output order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(Label::name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_name_is_the_label() {
        let labels = Labels::parse("0\tn1\ttiger, Panthera tigris\n1\tn2\tox\n").unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels.get(0).unwrap().name(), "tiger");
        assert_eq!(labels.get(1).unwrap().name(), "ox");
    }

    #[test]
    fn out_of_order_or_short_lines_are_errors() {
        let err = Labels::parse("0\ta\tx\n2\tb\ty\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = Labels::parse("0 a x\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
