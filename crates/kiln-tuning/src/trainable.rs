//! The one trainability mechanism: a list of path patterns matched against every parameter path
//! of the model. What matches trains (`require_grad = true`); everything else is frozen and
//! carries no gradient. The report of trainable and total parameters comes from the same walk.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use serde::Serialize;

use kiln_models::paths::{ParamMapper, ParamVisitor, map_params, visit_params};

/// `*` matches any run of characters, dots included: `bert.*.bias`, `head.*`, `*`.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), path.as_bytes());
    let (mut pi, mut si) = (0, 0);
    // Position after the last `*` and the path position it was tried at, for backtracking.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi + 1, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((after_star, tried)) = star {
            pi = after_star;
            si = tried + 1;
            star = Some((after_star, tried + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// One parameter tensor of the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamEntry {
    /// The parameter's path (`bert.layers.0.attention.query.weight`).
    pub path: String,
    /// Its number of elements.
    pub numel: usize,
    /// Whether it trains.
    pub trainable: bool,
}

/// Every parameter with its trainability, in module order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ParamReport {
    /// Every parameter, in the model's order.
    pub entries: Vec<ParamEntry>,
}

impl ParamReport {
    /// Elements that train.
    pub fn trainable(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.trainable)
            .map(|e| e.numel)
            .sum()
    }

    /// All elements.
    pub fn total(&self) -> usize {
        self.entries.iter().map(|e| e.numel).sum()
    }

    /// Trainable share in percent.
    pub fn trainable_percent(&self) -> f64 {
        100.0 * self.trainable() as f64 / self.total().max(1) as f64
    }

    /// Paths of the parameters that train.
    pub fn trainable_paths(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| e.trainable)
            .map(|e| e.path.as_str())
            .collect()
    }
}

/// Sets `require_grad` on every parameter of `model`: true where a pattern matches its path.
pub fn set_trainable<M: Module>(model: M, patterns: &[String]) -> (M, ParamReport) {
    let mut marker = Marker {
        patterns,
        report: ParamReport::default(),
    };
    let model = map_params(model, &mut marker);
    (model, marker.report)
}

struct Marker<'a> {
    patterns: &'a [String],
    report: ParamReport,
}

impl ParamMapper for Marker<'_> {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let trainable = self.patterns.iter().any(|p| glob_match(p, path));
        self.report.entries.push(ParamEntry {
            path: path.to_string(),
            numel: param.lazy_shape().num_elements(),
            trainable,
        });
        param.set_require_grad(trainable)
    }
}

/// Reads back which parameters track gradients (on an autodiff device): the ground truth the
/// trainable-set tests compare against.
pub fn tracked_report<M: Module>(model: &M) -> ParamReport {
    let mut reader = Reader {
        report: ParamReport::default(),
    };
    visit_params(model, &mut reader);
    reader.report
}

struct Reader {
    report: ParamReport,
}

impl ParamVisitor for Reader {
    fn visit<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
        let value = param.val();
        self.report.entries.push(ParamEntry {
            path: path.to_string(),
            numel: value.shape().num_elements(),
            trainable: value.is_require_grad(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_paths() {
        assert!(glob_match("*", "bert.layers.0.attention.query.weight"));
        assert!(glob_match("head.*", "head.output.weight"));
        assert!(!glob_match("head.*", "bert.head.weight"));
        assert!(glob_match("bert.*.bias", "bert.layers.0.output.bias"));
        assert!(!glob_match("bert.*.bias", "bert.layers.0.output.weight"));
        assert!(glob_match(
            "*.lora.*",
            "bert.layers.2.attention.value.lora.a"
        ));
        assert!(glob_match(
            "bert.layers.5.*",
            "bert.layers.5.output_norm.beta"
        ));
        assert!(!glob_match(
            "bert.layers.5.*",
            "bert.layers.50.output.weight"
        ));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
    }
}
