//! Task metrics: accuracy, macro-F1 and Matthews correlation for classification; Pearson and
//! Spearman correlation for regression.

use serde::{Deserialize, Serialize};

/// What an evaluation measured. Classification fills the first three, regression the last two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean loss over the examples.
    pub loss: f64,
    /// Share of examples classified right (classification).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accuracy: Option<f64>,
    /// Macro-averaged F1 over the classes (classification).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub macro_f1: Option<f64>,
    /// Matthews correlation, Gorodkin's multi-class form (classification).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mcc: Option<f64>,
    /// Pearson correlation (regression).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pearson: Option<f64>,
    /// Spearman rank correlation (regression).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub spearman: Option<f64>,
}

impl Metrics {
    /// Metrics of class predictions against the actual classes.
    pub fn classification(
        loss: f64,
        predicted: &[usize],
        actual: &[usize],
        classes: usize,
    ) -> Self {
        Self {
            loss,
            accuracy: Some(accuracy(predicted, actual)),
            macro_f1: Some(macro_f1(predicted, actual, classes)),
            mcc: Some(matthews(predicted, actual, classes)),
            pearson: None,
            spearman: None,
        }
    }

    /// Metrics of predicted values against the actual ones.
    pub fn regression(loss: f64, predicted: &[f64], actual: &[f64]) -> Self {
        Self {
            loss,
            accuracy: None,
            macro_f1: None,
            mcc: None,
            pearson: Some(pearson(predicted, actual)),
            spearman: Some(spearman(predicted, actual)),
        }
    }

    /// A language model's held-out next-token loss; its perplexity is `exp(loss)`.
    pub fn language_model(loss: f64) -> Self {
        Self {
            loss,
            accuracy: None,
            macro_f1: None,
            mcc: None,
            pearson: None,
            spearman: None,
        }
    }

    /// `exp(loss)`, for a language model's next-token loss.
    pub fn perplexity(&self) -> f64 {
        self.loss.exp()
    }

    /// The metric early stopping and best-checkpoint keeping follow (higher is better):
    /// accuracy for classification, Pearson for regression.
    pub fn primary(&self) -> (&'static str, f64) {
        match (self.accuracy, self.pearson) {
            (Some(acc), _) => ("accuracy", acc),
            (None, Some(r)) => ("pearson", r),
            (None, None) => ("negative loss", -self.loss),
        }
    }
}

/// Share of predictions equal to the actual class.
pub fn accuracy(predicted: &[usize], actual: &[usize]) -> f64 {
    let right = predicted.iter().zip(actual).filter(|(p, a)| p == a).count();
    right as f64 / actual.len().max(1) as f64
}

/// `confusion[actual][predicted]`.
fn confusion(predicted: &[usize], actual: &[usize], classes: usize) -> Vec<Vec<f64>> {
    let mut m = vec![vec![0.0; classes]; classes];
    for (&p, &a) in predicted.iter().zip(actual) {
        m[a][p] += 1.0;
    }
    m
}

/// Unweighted mean of per-class F1 over the classes that occur (in truth or prediction).
pub fn macro_f1(predicted: &[usize], actual: &[usize], classes: usize) -> f64 {
    let m = confusion(predicted, actual, classes);
    let mut sum = 0.0;
    let mut counted = 0;
    for c in 0..classes {
        let tp = m[c][c];
        let support: f64 = m[c].iter().sum();
        let predicted_c: f64 = m.iter().map(|row| row[c]).sum();
        if support == 0.0 && predicted_c == 0.0 {
            continue;
        }
        let denominator = support + predicted_c;
        sum += if denominator > 0.0 {
            2.0 * tp / denominator
        } else {
            0.0
        };
        counted += 1;
    }
    if counted == 0 {
        0.0
    } else {
        sum / counted as f64
    }
}

/// Matthews correlation; for more than two classes Gorodkin's R_K, as scikit-learn computes it.
pub fn matthews(predicted: &[usize], actual: &[usize], classes: usize) -> f64 {
    let m = confusion(predicted, actual, classes);
    let n: f64 = predicted.len() as f64;
    let correct: f64 = (0..classes).map(|k| m[k][k]).sum();
    let t: Vec<f64> = (0..classes).map(|k| m[k].iter().sum()).collect();
    let p: Vec<f64> = (0..classes)
        .map(|k| m.iter().map(|row| row[k]).sum())
        .collect();
    let tp: f64 = t.iter().zip(&p).map(|(a, b)| a * b).sum();
    let numerator = correct * n - tp;
    let denominator = ((n * n - p.iter().map(|x| x * x).sum::<f64>())
        * (n * n - t.iter().map(|x| x * x).sum::<f64>()))
    .sqrt();
    if denominator == 0.0 {
        0.0
    } else {
        numerator / denominator
    }
}

/// Pearson correlation of `x` and `y`.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Pearson correlation of ranks, ties sharing their mean rank.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end + 1 < order.len() && values[order[end + 1]] == values[order[start]] {
            end += 1;
        }
        let mean_rank = (start + end) as f64 / 2.0 + 1.0;
        for &i in &order[start..=end] {
            ranks[i] = mean_rank;
        }
        start = end + 1;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn classification_metrics_match_hand_computed_values() {
        // confusion (rows actual): [[2, 1], [1, 2]] for classes 0, 1.
        let actual = [0, 0, 0, 1, 1, 1];
        let predicted = [0, 0, 1, 1, 1, 0];
        assert!(close(accuracy(&predicted, &actual), 4.0 / 6.0));
        // F1 of each class = 2·2 / (3 + 3) = 2/3.
        assert!(close(macro_f1(&predicted, &actual, 2), 2.0 / 3.0));
        // Binary MCC = (tp·tn - fp·fn) / sqrt(...) = (4 - 1) / 9 = 1/3.
        assert!(close(matthews(&predicted, &actual, 2), 1.0 / 3.0));
        assert!(close(matthews(&actual, &actual, 3), 1.0));
        // Constant prediction: no correlation, defined as 0.
        assert!(close(matthews(&[0; 6], &actual, 2), 0.0));
    }

    #[test]
    fn three_class_mcc_follows_gorodkin() {
        // 4 of 7 right; true counts t = [2, 2, 3], predicted counts p = [3, 2, 2]:
        // (4·7 - t·p) / sqrt((49 - p·p)(49 - t·t)) = (28 - 16) / sqrt(32 · 32) = 0.375.
        let actual = [0, 1, 2, 0, 1, 2, 2];
        let predicted = [0, 2, 1, 0, 1, 2, 0];
        assert!(close(matthews(&predicted, &actual, 3), 0.375));
    }

    #[test]
    fn correlations_handle_order_and_ties() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!(close(pearson(&x, &[2.0, 4.0, 6.0, 8.0]), 1.0));
        assert!(close(pearson(&x, &[8.0, 6.0, 4.0, 2.0]), -1.0));
        // Monotone but not linear: Spearman 1, Pearson below 1.
        let y = [1.0, 10.0, 100.0, 1000.0];
        assert!(close(spearman(&x, &y), 1.0));
        assert!(pearson(&x, &y) < 0.99);
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }
}
