//! Task metrics: accuracy, macro-F1 and Matthews correlation for classification; Pearson and
//! Spearman correlation for regression; micro- and macro-F1 and subset accuracy for multi-label
//! classification, at a decision threshold that can be tuned on validation data.

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
    /// F1 over every (example, label) decision together (multi-label).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub micro_f1: Option<f64>,
    /// Share of examples whose predicted labels are exactly their labels (multi-label).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subset_accuracy: Option<f64>,
    /// The probability above which a label is predicted (multi-label).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub threshold: Option<f64>,
    /// `exp(loss)` of a language model's mean next-token loss.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub perplexity: Option<f64>,
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
            ..Self::loss_only(loss)
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
            ..Self::loss_only(loss)
        }
    }

    /// A language model's held-out next-token loss; its perplexity is `exp(loss)`.
    pub fn language_model(loss: f64) -> Self {
        Self {
            perplexity: Some(loss.exp()),
            ..Self::loss_only(loss)
        }
    }

    fn loss_only(loss: f64) -> Self {
        Self {
            loss,
            accuracy: None,
            macro_f1: None,
            mcc: None,
            pearson: None,
            spearman: None,
            micro_f1: None,
            subset_accuracy: None,
            threshold: None,
            perplexity: None,
        }
    }

    /// Multi-label metrics of label probabilities `probabilities[example][label]` against the
    /// actual label sets `actual[example][label]`, a label predicted where its probability is
    /// above `threshold`.
    pub fn multi_label(
        loss: f64,
        probabilities: &[Vec<f32>],
        actual: &[Vec<bool>],
        threshold: f64,
    ) -> Self {
        let predicted: Vec<Vec<bool>> = probabilities
            .iter()
            .map(|row| row.iter().map(|&p| f64::from(p) > threshold).collect())
            .collect();
        let labels = actual.first().map_or(0, Vec::len);
        // Per label: true positives, false positives, false negatives.
        let mut counts = vec![(0.0, 0.0, 0.0); labels];
        let mut exact = 0usize;
        for (p, a) in predicted.iter().zip(actual) {
            exact += usize::from(p == a);
            for (label, (&p, &a)) in p.iter().zip(a).enumerate() {
                let c = &mut counts[label];
                match (p, a) {
                    (true, true) => c.0 += 1.0,
                    (true, false) => c.1 += 1.0,
                    (false, true) => c.2 += 1.0,
                    (false, false) => {}
                }
            }
        }
        let f1 = |(tp, fp, fn_): (f64, f64, f64)| {
            let denominator = 2.0 * tp + fp + fn_;
            if denominator > 0.0 {
                2.0 * tp / denominator
            } else {
                0.0
            }
        };
        let total = counts
            .iter()
            .fold((0.0, 0.0, 0.0), |t, c| (t.0 + c.0, t.1 + c.1, t.2 + c.2));
        // As the single-label macro-F1: over the labels that occur in truth or prediction.
        let occurring: Vec<f64> = counts
            .iter()
            .filter(|c| c.0 + c.1 + c.2 > 0.0)
            .map(|&c| f1(c))
            .collect();
        Self {
            macro_f1: Some(occurring.iter().sum::<f64>() / occurring.len().max(1) as f64),
            micro_f1: Some(f1(total)),
            subset_accuracy: Some(exact as f64 / actual.len().max(1) as f64),
            threshold: Some(threshold),
            ..Self::loss_only(loss)
        }
    }

    /// `exp(loss)`, for a language model's next-token loss.
    pub fn perplexity(&self) -> f64 {
        self.loss.exp()
    }

    /// The metric early stopping and best-checkpoint keeping follow (higher is better):
    /// accuracy for classification, Pearson for regression, micro-F1 for multi-label.
    pub fn primary(&self) -> (&'static str, f64) {
        match (self.accuracy, self.pearson, self.micro_f1) {
            (Some(acc), _, _) => ("accuracy", acc),
            (None, Some(r), _) => ("pearson", r),
            (None, None, Some(f1)) => ("micro_f1", f1),
            (None, None, None) => ("negative loss", -self.loss),
        }
    }
}

/// The threshold in 0.05, 0.10, ..., 0.95 with the best micro-F1 of `probabilities` against
/// `actual` (the lowest of equals): a multi-label run's decision threshold, tuned on its
/// validation data.
pub fn tune_threshold(probabilities: &[Vec<f32>], actual: &[Vec<bool>]) -> f64 {
    let mut best = (0.5, f64::MIN);
    for step in 1..20 {
        let threshold = f64::from(step) * 0.05;
        let f1 = Metrics::multi_label(0.0, probabilities, actual, threshold)
            .micro_f1
            .unwrap_or(0.0);
        if f1 > best.1 + 1e-12 {
            best = (threshold, f1);
        }
    }
    best.0
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

    /// Three examples, three labels, worked by hand (scikit-learn's `f1_score(average=...)`
    /// gives the same on these arrays, every label occurring).
    #[test]
    fn multi_label_metrics_count_every_decision() {
        let probabilities = vec![
            vec![0.9, 0.2, 0.6], // predicted {0, 2}
            vec![0.1, 0.8, 0.4], // predicted {1}
            vec![0.7, 0.7, 0.1], // predicted {0, 1}
        ];
        let actual = vec![
            vec![true, false, true],  // exact
            vec![false, true, true],  // misses 2
            vec![true, false, false], // adds 1
        ];
        let m = Metrics::multi_label(0.3, &probabilities, &actual, 0.5);
        // tp: 0→2, 1→1, 2→1 (4); fp: label 1 once; fn: label 2 once.
        assert!(close(m.micro_f1.expect("micro-F1"), 8.0 / 10.0));
        // Per label: F1 1, 2/3, 2/3.
        assert!(close(
            m.macro_f1.expect("macro-F1"),
            (1.0 + 2.0 / 3.0 + 2.0 / 3.0) / 3.0
        ));
        assert!(close(
            m.subset_accuracy.expect("subset accuracy"),
            1.0 / 3.0
        ));
        assert_eq!(m.primary().0, "micro_f1");
        // A lower threshold catches the missed label 2 of the second example (0.4).
        assert!(close(tune_threshold(&probabilities, &actual), 0.25));
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
