//! Adapter compositions on the classifier: AdapterHub's `Stack`, `Parallel`, `BatchSplit` and
//! `Average` blocks over the bottleneck adapters the model holds (see
//! [`crate::adapter::Composition`]), written as text with the adapters' names:
//! `stack(lang, task)`, `parallel(a, b, c)`, `batch-split(a, b; 3, 5)`, `average(a, b; 1, 3)`
//! (weights normalised to sum 1, equal when left out), `weighted-sum(a, b; 0.5, 0.5)` (weights
//! as given), and one level of nesting inside a stack, `stack(lang, parallel(a, b))`.

use super::SequenceClassifier;
use crate::adapter::{ActiveAdapter, Composition};
use crate::error::{ModelError, Result};

fn invalid(message: String) -> ModelError {
    ModelError::InvalidInput(message)
}

impl SequenceClassifier {
    /// The composition `text` names, over this model's adapters.
    pub fn parse_composition(&self, text: &str) -> Result<Composition> {
        let mut parser = Parser {
            text,
            position: 0,
            model: self,
        };
        let composition = parser.composition(0)?;
        parser.skip_space();
        if parser.position < text.len() {
            return Err(parser.error("nothing may follow the composition"));
        }
        Ok(match composition {
            // A bare name is a stack of one, as AdapterHub reads it.
            Composition::Adapter(k) => Composition::Stack(vec![Composition::Adapter(k)]),
            other => other,
        })
    }

    /// Makes `composition` the active setup of every layer. kiln composes sequential bottleneck
    /// adapters (Houlsby, Pfeiffer, Compacter placements) on BERT and GPT-2; within a stack every
    /// Parallel block must make the same number of copies.
    pub fn set_composition(&mut self, composition: Composition) -> Result<()> {
        if self.m2.is_some() {
            return Err(invalid(
                "adapter compositions run on BERT and GPT-2; M2-BERT's mixer has no sub-layer \
                 ends to compose them at"
                    .into(),
            ));
        }
        for index in composition.adapters() {
            let adapter = self.adapters.get(index).ok_or_else(|| {
                invalid(format!(
                    "the composition names adapter {index}; the model holds {}",
                    self.adapters.len()
                ))
            })?;
            let c = &adapter.config;
            if c.parallel || c.prefix_len > 0 || c.reft.is_some() || c.gated {
                return Err(invalid(format!(
                    "adapter `{}` is not a sequential bottleneck adapter; compositions take \
                     Houlsby-, Pfeiffer- and Compacter-placed adapters",
                    adapter.name
                )));
            }
        }
        if let Composition::Stack(children) = &composition {
            let mut channels = children.iter().filter_map(|c| match c {
                Composition::Parallel(p) => Some(p.len()),
                _ => None,
            });
            if let Some(first) = channels.next()
                && channels.any(|n| n != first)
            {
                return Err(invalid(
                    "every Parallel block of a stack must have as many adapters as the first"
                        .into(),
                ));
            }
        }
        for slots in self.layer_adapters_mut().into_iter().flatten() {
            slots.active = ActiveAdapter::Composed(composition.clone());
        }
        Ok(())
    }

    /// The active composition, if one is set.
    pub fn composition(&self) -> Option<&Composition> {
        let slots = self
            .backbone()
            .layer_adapters()
            .into_iter()
            .flatten()
            .next()?;
        match &slots.active {
            ActiveAdapter::Composed(composition) => Some(composition),
            _ => None,
        }
    }

    /// Refuses a batch of `texts` rows that the active composition cannot take: a BatchSplit's
    /// sizes must add up to it.
    pub fn check_composition_batch(&self, texts: usize) -> Result<()> {
        let Some(composition) = self.composition() else {
            return Ok(());
        };
        let blocks: Vec<&Composition> = match composition {
            Composition::Stack(children) => children.iter().collect(),
            other => vec![other],
        };
        for block in blocks {
            if let Composition::BatchSplit(_, sizes) = block {
                // After a Parallel block in the same stack the rows are its copies.
                let rows = texts * composition.parallel_channels();
                let total: usize = sizes.iter().sum();
                if total != rows {
                    return Err(invalid(format!(
                        "the batch-split sizes add up to {total}; the batch has {rows} rows"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A recursive-descent reader of the composition syntax.
struct Parser<'a> {
    text: &'a str,
    position: usize,
    model: &'a SequenceClassifier,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> ModelError {
        invalid(format!(
            "composition `{}`: {what} (at character {})",
            self.text,
            self.position + 1
        ))
    }

    fn skip_space(&mut self) {
        while self.text[self.position..].starts_with(char::is_whitespace) {
            self.position += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        if self.text[self.position..].starts_with(c) {
            self.position += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("expected `{c}`")))
        }
    }

    /// A name or a number: everything up to a bracket, comma, semicolon or space.
    fn word(&mut self) -> Result<&str> {
        self.skip_space();
        let rest = &self.text[self.position..];
        let end = rest
            .find(|c: char| "(),;".contains(c) || c.is_whitespace())
            .unwrap_or(rest.len());
        if end == 0 {
            return Err(self.error("expected a name"));
        }
        self.position += end;
        Ok(&rest[..end])
    }

    /// One composition at nesting `level` (0: the top).
    fn composition(&mut self, level: usize) -> Result<Composition> {
        let word = self.word()?.to_string();
        if !self.eat('(') {
            return self.adapter(&word).map(Composition::Adapter);
        }
        let block = word.to_lowercase();
        if level > 1 || (level == 1 && block == "stack") {
            return Err(self.error(&format!(
                "`{block}` cannot be nested here: a stack may hold one level of blocks"
            )));
        }
        match block.as_str() {
            "stack" => {
                let mut children = vec![self.composition(level + 1)?];
                while self.eat(',') {
                    children.push(self.composition(level + 1)?);
                }
                self.expect(')')?;
                Ok(Composition::Stack(children))
            }
            "parallel" | "batch-split" | "average" | "weighted-sum" => {
                let mut names = vec![self.name_in(&block)?];
                while self.eat(',') {
                    names.push(self.name_in(&block)?);
                }
                let adapters = names
                    .iter()
                    .map(|n| self.adapter(n))
                    .collect::<Result<Vec<_>>>()?;
                let numbers = if self.eat(';') {
                    let mut numbers = vec![self.number()?];
                    while self.eat(',') {
                        numbers.push(self.number()?);
                    }
                    numbers
                } else {
                    Vec::new()
                };
                self.expect(')')?;
                self.block(&block, adapters, numbers)
            }
            other => Err(self.error(&format!(
                "unknown block `{other}`: stack, parallel, batch-split, average or weighted-sum"
            ))),
        }
    }

    fn block(&self, block: &str, adapters: Vec<usize>, numbers: Vec<f64>) -> Result<Composition> {
        let n = adapters.len();
        match block {
            "parallel" if numbers.is_empty() => Ok(Composition::Parallel(adapters)),
            "parallel" => Err(self.error("parallel takes no numbers")),
            "batch-split" => {
                let valid =
                    numbers.len() == n && numbers.iter().all(|&s| s >= 1.0 && s.fract() == 0.0);
                if !valid {
                    return Err(self.error(&format!(
                        "batch-split needs one whole number of rows (at least 1) per adapter: \
                         `batch-split(a, b; 2, 3)`; got {numbers:?} for {n}"
                    )));
                }
                let sizes = numbers.iter().map(|&s| s as usize).collect();
                Ok(Composition::BatchSplit(adapters, sizes))
            }
            _ => {
                let normalise = block == "average";
                let weights = if numbers.is_empty() && normalise {
                    vec![1.0; n]
                } else {
                    numbers
                };
                let total: f64 = weights.iter().sum();
                let usable = weights.len() == n && weights.iter().all(|w| w.is_finite());
                if !usable || (normalise && total == 0.0) {
                    return Err(self.error(&format!(
                        "{block} needs one finite weight per adapter{}; got {weights:?} for {n}",
                        if normalise {
                            " with a non-zero sum"
                        } else {
                            ""
                        }
                    )));
                }
                // `average` normalises, as AdapterHub's default `normalize_weights`.
                let weights = if normalise {
                    weights.iter().map(|w| w / total).collect()
                } else {
                    weights
                };
                Ok(Composition::Average(adapters, weights))
            }
        }
    }

    /// An adapter's name inside `block`, which holds names only.
    fn name_in(&mut self, block: &str) -> Result<String> {
        let name = self.word()?.to_string();
        self.skip_space();
        if self.text[self.position..].starts_with('(') {
            return Err(self.error(&format!(
                "`{name}(...)` cannot be nested in {block}: only a stack holds blocks"
            )));
        }
        Ok(name)
    }

    fn number(&mut self) -> Result<f64> {
        let word = self.word()?.to_string();
        word.parse()
            .map_err(|_| self.error(&format!("`{word}` is not a number")))
    }

    fn adapter(&self, name: &str) -> Result<usize> {
        self.model.adapter_index(name).ok_or_else(|| {
            let names: Vec<&str> = self
                .model
                .adapters
                .iter()
                .map(|a| a.name.as_str())
                .collect();
            self.error(&format!(
                "no adapter called `{name}` (the model holds: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ))
        })
    }
}
