//! Seeded, stratified train/validation/test splits.
//!
//! The shuffle uses SplitMix64, written out here, so a seed gives the same split on every
//! machine and every version of kiln's dependencies.

use crate::error::{DataError, Result};

/// Indices into a dataset, one list per part, each in ascending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Indices of the training examples.
    pub train: Vec<usize>,
    /// Indices of the validation examples.
    pub validation: Vec<usize>,
    /// Indices of the test examples.
    pub test: Vec<usize>,
}

impl Split {
    /// Keeps a random `n` of the training examples, drawn from `seed` (small-data studies);
    /// validation and test stay whole.
    pub fn subsample_train(&mut self, n: usize, seed: u64) {
        SplitMix64::new(seed ^ 0x5EED_5EED).shuffle(&mut self.train);
        self.train.truncate(n);
        self.train.sort_unstable();
    }
}

/// Shares of the data for validation and test; train gets the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitFractions {
    /// Share of the examples for validation.
    pub validation: f64,
    /// Share of the examples for test.
    pub test: f64,
}

impl SplitFractions {
    /// The 80/10/10 split kiln's reports use.
    pub const EIGHTY_TEN_TEN: Self = Self {
        validation: 0.1,
        test: 0.1,
    };

    fn check(self) -> Result<()> {
        let ok = |f: f64| (0.0..1.0).contains(&f);
        if ok(self.validation) && ok(self.test) && self.validation + self.test < 1.0 {
            Ok(())
        } else {
            Err(DataError::InvalidInput(format!(
                "validation {} and test {} must be in [0, 1) and leave something to train on",
                self.validation, self.test
            )))
        }
    }
}

/// SplitMix64 (Steele, Lea and Flood 2014): tiny, fast, and fixed forever.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next number of the stream.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-32 for any n used here).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Splits `classes.len()` examples so each part keeps every class's share (up to rounding).
/// With `classes == None` (regression) the split is a plain seeded shuffle.
pub fn stratified_split(
    n: usize,
    classes: Option<&[usize]>,
    fractions: SplitFractions,
    seed: u64,
) -> Result<Split> {
    fractions.check()?;
    let mut rng = SplitMix64::new(seed);
    let groups: Vec<Vec<usize>> = match classes {
        Some(classes) => {
            if classes.len() != n {
                return Err(DataError::InvalidInput(format!(
                    "{} class labels for {n} examples",
                    classes.len()
                )));
            }
            let count = classes.iter().max().map_or(0, |m| m + 1);
            let mut groups = vec![Vec::new(); count];
            for (index, &class) in classes.iter().enumerate() {
                groups[class].push(index);
            }
            groups
        }
        None => vec![(0..n).collect()],
    };
    let mut split = Split {
        train: Vec::new(),
        validation: Vec::new(),
        test: Vec::new(),
    };
    for mut group in groups {
        rng.shuffle(&mut group);
        let size = group.len() as f64;
        let test = (size * fractions.test).round() as usize;
        let validation = (size * fractions.validation).round() as usize;
        split.test.extend_from_slice(&group[..test]);
        split
            .validation
            .extend_from_slice(&group[test..test + validation]);
        split.train.extend_from_slice(&group[test + validation..]);
    }
    for part in [&mut split.train, &mut split.validation, &mut split.test] {
        part.sort_unstable();
    }
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_the_published_sequence() {
        // First outputs for seed 0, as in the reference implementation.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn split_is_stratified_disjoint_and_seeded() {
        // 100 of class 0, 50 of class 1.
        let classes: Vec<usize> = (0..150).map(|i| usize::from(i >= 100)).collect();
        let split = stratified_split(150, Some(&classes), SplitFractions::EIGHTY_TEN_TEN, 7)
            .expect("splits");
        assert_eq!(
            (split.train.len(), split.validation.len(), split.test.len()),
            (120, 15, 15)
        );
        let count = |part: &[usize], c: usize| part.iter().filter(|&&i| classes[i] == c).count();
        assert_eq!((count(&split.test, 0), count(&split.test, 1)), (10, 5));
        assert_eq!(
            (count(&split.validation, 0), count(&split.validation, 1)),
            (10, 5)
        );
        let mut all: Vec<usize> = [&split.train[..], &split.validation, &split.test].concat();
        all.sort_unstable();
        assert_eq!(all, (0..150).collect::<Vec<_>>());

        let again = stratified_split(150, Some(&classes), SplitFractions::EIGHTY_TEN_TEN, 7)
            .expect("splits");
        assert_eq!(split, again);
        let other = stratified_split(150, Some(&classes), SplitFractions::EIGHTY_TEN_TEN, 8)
            .expect("splits");
        assert_ne!(split.test, other.test);
    }

    #[test]
    fn bad_fractions_are_refused() {
        let bad = SplitFractions {
            validation: 0.5,
            test: 0.5,
        };
        assert!(stratified_split(10, None, bad, 0).is_err());
    }

    #[test]
    fn a_training_subset_is_seeded_and_leaves_the_rest_alone() {
        let split = Split {
            train: (0..100).collect(),
            validation: vec![100, 101],
            test: vec![102],
        };
        let subset = |seed| {
            let mut s = split.clone();
            s.subsample_train(10, seed);
            s
        };
        let (a, b, c) = (subset(1), subset(1), subset(2));
        assert_eq!(a, b);
        assert_ne!(a.train, c.train);
        assert_eq!(a.train.len(), 10);
        assert!(a.train.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((a.validation, a.test), (split.validation, split.test));
    }
}
