//! Seeded generators of the FPT paper's synthetic tasks (Lu et al. 2021, following the reference
//! code kzl/universal-computation):
//!
//! - bit memory: five random strings of `n` bits in {-1, +1}, then one of them again with each
//!   bit zeroed (masked) with probability 1/2; recall the whole string;
//! - bit XOR: two random strings of `n` bits in {0, 1}; predict their element-wise XOR;
//! - ListOps (Nangia and Bowman 2018, as generated for the Long Range Arena): nested lists of
//!   digits under MAX, MIN, MED (median, rounded down) and SM (sum modulo 10); predict the value.
//!
//! The bit tasks' rows are cut into tokens of `patch` bits (the paper's patch sizes: 50 for bit
//! memory with n = 1000, 5 for bit XOR with n = 5), and the answer is read from the last
//! `n / patch` tokens.

use crate::error::{DataError, Result};
use crate::sequence::{
    InputKind, OutputKind, SequenceExample, SequenceInput, SequenceTarget, SequenceTask,
};
use crate::split::SplitMix64;

/// How many examples each part of a generated task gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedSizes {
    /// Training examples.
    pub train: usize,
    /// Validation examples.
    pub validation: usize,
    /// Test examples.
    pub test: usize,
}

/// Bit memory with `patterns` stored strings of `n` bits (paper: 5 x 1000, patch 50).
pub fn bit_memory(
    n: usize,
    patterns: usize,
    patch: usize,
    sizes: GeneratedSizes,
    seed: u64,
) -> Result<SequenceTask> {
    check_patch(n, patch)?;
    if patterns == 0 {
        return Err(DataError::InvalidInput(
            "bit memory needs at least one pattern".into(),
        ));
    }
    let example = |rng: &mut SplitMix64| {
        let rows: Vec<Vec<f32>> = (0..patterns)
            .map(|_| {
                (0..n)
                    .map(|_| if bit(rng) == 1 { 1.0 } else { -1.0 })
                    .collect()
            })
            .collect();
        let query = &rows[rng.below(patterns)];
        let masked: Vec<f32> = query.iter().map(|&b| b * f32::from(bit(rng))).collect();
        let target = query.iter().map(|&b| u8::from(b > 0.0)).collect();
        let mut values: Vec<f32> = rows.concat();
        values.extend(masked);
        SequenceExample {
            input: SequenceInput::Vectors(values),
            target: SequenceTarget::Bits(target),
        }
    };
    Ok(generated("bit-memory", patch, n, sizes, seed, example))
}

/// Bit XOR of two strings of `n` bits (paper: n = 5, patch 5).
pub fn bit_xor(n: usize, patch: usize, sizes: GeneratedSizes, seed: u64) -> Result<SequenceTask> {
    check_patch(n, patch)?;
    let example = |rng: &mut SplitMix64| {
        let a: Vec<u8> = (0..n).map(|_| bit(rng)).collect();
        let b: Vec<u8> = (0..n).map(|_| bit(rng)).collect();
        let target = a.iter().zip(&b).map(|(x, y)| x ^ y).collect();
        let values = a.iter().chain(&b).map(|&v| f32::from(v)).collect();
        SequenceExample {
            input: SequenceInput::Vectors(values),
            target: SequenceTarget::Bits(target),
        }
    };
    Ok(generated("bit-xor", patch, n, sizes, seed, example))
}

fn check_patch(n: usize, patch: usize) -> Result<()> {
    if n == 0 || patch == 0 || !n.is_multiple_of(patch) {
        return Err(DataError::InvalidInput(format!(
            "--patch-size {patch} must divide the string length {n}"
        )));
    }
    Ok(())
}

fn bit(rng: &mut SplitMix64) -> u8 {
    (rng.next_u64() >> 63) as u8
}

/// Train, validation and test from streams seeded apart, so growing one part leaves the others.
fn generated(
    name: &str,
    patch: usize,
    n: usize,
    sizes: GeneratedSizes,
    seed: u64,
    example: impl Fn(&mut SplitMix64) -> SequenceExample,
) -> SequenceTask {
    let part = |offset: u64, count: usize| {
        let mut rng = SplitMix64::new(seed.wrapping_mul(3).wrapping_add(offset));
        (0..count).map(|_| example(&mut rng)).collect()
    };
    SequenceTask {
        name: name.to_string(),
        input: InputKind::Vectors { dim: patch },
        output: OutputKind::Bits {
            bits: n,
            tokens: n / patch,
        },
        train: part(0, sizes.train),
        validation: part(1, sizes.validation),
        test: part(2, sizes.test),
    }
}

/// A ListOps operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOp {
    /// The largest argument.
    Max,
    /// The smallest argument.
    Min,
    /// The median, rounded down.
    Median,
    /// The sum modulo 10.
    SumMod,
}

impl ListOp {
    const ALL: [ListOp; 4] = [ListOp::Max, ListOp::Min, ListOp::Median, ListOp::SumMod];

    /// The operator's opening token (`[MAX`).
    pub fn token(self) -> &'static str {
        match self {
            ListOp::Max => "[MAX",
            ListOp::Min => "[MIN",
            ListOp::Median => "[MED",
            ListOp::SumMod => "[SM",
        }
    }

    /// The operator on digit arguments.
    pub fn apply(self, args: &[u8]) -> u8 {
        match self {
            ListOp::Max => args.iter().copied().max().unwrap_or(0),
            ListOp::Min => args.iter().copied().min().unwrap_or(0),
            ListOp::Median => {
                let mut sorted = args.to_vec();
                sorted.sort_unstable();
                let mid = sorted.len() / 2;
                if sorted.len() % 2 == 1 {
                    sorted[mid]
                } else {
                    // numpy's median of an even count, then int(): the mean, rounded down.
                    (sorted[mid - 1] + sorted[mid]) / 2
                }
            }
            ListOp::SumMod => (args.iter().map(|&a| u32::from(a)).sum::<u32>() % 10) as u8,
        }
    }
}

/// A ListOps expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListOps {
    /// A digit, 0 to 9.
    Digit(u8),
    /// An operator on its arguments.
    Apply(ListOp, Vec<ListOps>),
}

/// ListOps' vocabulary: padding, the ten digits, the four operators and the closing bracket.
pub const LISTOPS_VOCAB: [&str; 16] = [
    "<pad>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "[MAX", "[MIN", "[MED", "[SM", "]",
];

impl ListOps {
    /// The expression's value, a digit.
    pub fn value(&self) -> u8 {
        match self {
            ListOps::Digit(d) => *d,
            ListOps::Apply(op, args) => {
                let values: Vec<u8> = args.iter().map(ListOps::value).collect();
                op.apply(&values)
            }
        }
    }

    /// The tokens as the Long Range Arena writes them: `[MAX 2 9 [MIN 4 7 ] 0 ]`.
    pub fn tokens(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        self.push_tokens(&mut out);
        out
    }

    fn push_tokens(&self, out: &mut Vec<&'static str>) {
        match self {
            ListOps::Digit(d) => out.push(LISTOPS_VOCAB[1 + usize::from(*d)]),
            ListOps::Apply(op, args) => {
                out.push(op.token());
                for arg in args {
                    arg.push_tokens(out);
                }
                out.push("]");
            }
        }
    }

    /// Vocabulary ids of [`ListOps::tokens`].
    pub fn ids(&self) -> Vec<u32> {
        self.tokens()
            .iter()
            .map(|t| LISTOPS_VOCAB.iter().position(|v| v == t).unwrap_or(0) as u32)
            .collect()
    }
}

/// Bounds of generated ListOps expressions (LRA's generator: depth 10, up to 10 arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListOpsBounds {
    /// Deepest nesting of operators.
    pub max_depth: usize,
    /// Most arguments of one operator.
    pub max_args: usize,
    /// Inclusive token-length bounds; expressions outside are drawn again.
    pub min_len: usize,
    /// Longest expression in tokens.
    pub max_len: usize,
}

impl Default for ListOpsBounds {
    fn default() -> Self {
        Self {
            max_depth: 10,
            max_args: 10,
            min_len: 16,
            max_len: 512,
        }
    }
}

/// A node is an operator with probability 1/4 above the depth bound, as in LRA's generator.
const OPERATOR_SHARE: f64 = 0.25;

/// Draws one expression within `bounds` (a tree that outgrows `max_len` is abandoned early).
pub fn listops_expression(bounds: ListOpsBounds, rng: &mut SplitMix64) -> Result<ListOps> {
    if bounds.max_args < 2 || bounds.min_len > bounds.max_len || bounds.max_depth == 0 {
        return Err(DataError::InvalidInput(format!(
            "ListOps bounds {bounds:?}: need max_args >= 2, min_len <= max_len, max_depth >= 1"
        )));
    }
    for _ in 0..100_000 {
        let mut budget = bounds.max_len;
        if let Some(tree) = grow(1, bounds, rng, &mut budget) {
            let len = bounds.max_len - budget;
            if len >= bounds.min_len {
                return Ok(tree);
            }
        }
    }
    Err(DataError::InvalidInput(format!(
        "ListOps bounds {bounds:?}: no expression of that length in 100,000 draws"
    )))
}

/// Grows a subtree, spending its tokens from `budget`; `None` once the budget runs out.
fn grow(
    depth: usize,
    bounds: ListOpsBounds,
    rng: &mut SplitMix64,
    budget: &mut usize,
) -> Option<ListOps> {
    let draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let operator = depth < bounds.max_depth && draw < OPERATOR_SHARE;
    if !operator {
        *budget = budget.checked_sub(1)?;
        return Some(ListOps::Digit(rng.below(10) as u8));
    }
    *budget = budget.checked_sub(2)?;
    let count = 2 + rng.below(bounds.max_args - 1);
    let args = (0..count)
        .map(|_| grow(depth + 1, bounds, rng, budget))
        .collect::<Option<Vec<_>>>()?;
    let op = ListOp::ALL[rng.below(4)];
    Some(ListOps::Apply(op, args))
}

/// A ListOps task: token ids in, the expression's value (0..9) out.
pub fn listops(bounds: ListOpsBounds, sizes: GeneratedSizes, seed: u64) -> Result<SequenceTask> {
    let part = |offset: u64, count: usize| -> Result<Vec<SequenceExample>> {
        let mut rng = SplitMix64::new(seed.wrapping_mul(3).wrapping_add(offset));
        (0..count)
            .map(|_| {
                let tree = listops_expression(bounds, &mut rng)?;
                Ok(SequenceExample {
                    input: SequenceInput::Ids(tree.ids()),
                    target: SequenceTarget::Class(usize::from(tree.value())),
                })
            })
            .collect()
    };
    Ok(SequenceTask {
        name: "listops".into(),
        input: InputKind::Ids {
            vocab: LISTOPS_VOCAB.len(),
        },
        output: OutputKind::Classes(10),
        train: part(0, sizes.train)?,
        validation: part(1, sizes.validation)?,
        test: part(2, sizes.test)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: GeneratedSizes = GeneratedSizes {
        train: 20,
        validation: 5,
        test: 5,
    };

    fn vectors(example: &SequenceExample) -> &[f32] {
        match &example.input {
            SequenceInput::Vectors(v) => v,
            SequenceInput::Ids(_) => panic!("bit tasks are vectors"),
        }
    }

    fn bits(example: &SequenceExample) -> &[u8] {
        match &example.target {
            SequenceTarget::Bits(b) => b,
            SequenceTarget::Class(_) => panic!("bit tasks predict bits"),
        }
    }

    #[test]
    fn bit_xor_targets_are_the_xor_of_the_two_strings() {
        let task = bit_xor(5, 5, SIZES, 1).expect("task");
        assert_eq!(task.input, InputKind::Vectors { dim: 5 });
        assert_eq!(task.output, OutputKind::Bits { bits: 5, tokens: 1 });
        assert_eq!(task.output.outputs_per_token(), 10);
        for example in task.train.iter().chain(&task.test) {
            let x = vectors(example);
            assert_eq!(x.len(), 10);
            for (i, &b) in bits(example).iter().enumerate() {
                assert_eq!(b, u8::from(x[i] != x[i + 5]));
            }
        }
        assert_eq!(task.train, bit_xor(5, 5, SIZES, 1).expect("task").train);
        assert_ne!(task.train, bit_xor(5, 5, SIZES, 2).expect("task").train);
        assert!(bit_xor(5, 2, SIZES, 1).is_err());
    }

    #[test]
    fn bit_memory_recalls_one_stored_string_from_its_masked_copy() {
        let task = bit_memory(20, 5, 4, SIZES, 3).expect("task");
        assert_eq!(
            task.output,
            OutputKind::Bits {
                bits: 20,
                tokens: 5
            }
        );
        assert_eq!(task.max_tokens(), 6 * 20 / 4);
        for example in &task.train {
            let x = vectors(example);
            let query = &x[100..120];
            let target: Vec<f32> = bits(example)
                .iter()
                .map(|&b| if b == 1 { 1.0 } else { -1.0 })
                .collect();
            // The target is one of the five stored rows, and the query agrees wherever unmasked.
            assert!((0..5).any(|p| x[p * 20..(p + 1) * 20] == target[..]));
            for (q, t) in query.iter().zip(&target) {
                assert!(*q == 0.0 || q == t);
            }
            assert!(x[..100].iter().all(|&v| v == 1.0 || v == -1.0));
        }
        // Half the query bits are masked on average.
        let masked = task
            .train
            .iter()
            .flat_map(|e| vectors(e)[100..120].to_vec())
            .filter(|&v| v == 0.0)
            .count();
        assert!((120..280).contains(&masked), "{masked} of 400 masked");
    }

    #[test]
    fn listops_values_on_hand_checked_expressions() {
        use ListOps::{Apply, Digit};
        // [MAX 2 9 [MIN 4 7 ] 0 ] = 9
        let tree = Apply(
            ListOp::Max,
            vec![
                Digit(2),
                Digit(9),
                Apply(ListOp::Min, vec![Digit(4), Digit(7)]),
                Digit(0),
            ],
        );
        assert_eq!(tree.value(), 9);
        assert_eq!(tree.tokens().join(" "), "[MAX 2 9 [MIN 4 7 ] 0 ]");
        assert_eq!(tree.ids(), vec![11, 3, 10, 12, 5, 8, 15, 1, 15]);
        // [SM 8 7 [MED 1 4 6 9 ] ] = (8 + 7 + 5) mod 10 = 0: the median of 1 4 6 9 is 5.
        let tree = Apply(
            ListOp::SumMod,
            vec![
                Digit(8),
                Digit(7),
                Apply(ListOp::Median, vec![Digit(1), Digit(4), Digit(6), Digit(9)]),
            ],
        );
        assert_eq!(tree.value(), 0);
        assert_eq!(ListOp::Median.apply(&[3, 4]), 3);
        assert_eq!(ListOp::Median.apply(&[9, 1, 5]), 5);
    }

    #[test]
    fn listops_generator_keeps_its_bounds_and_its_seed() {
        let bounds = ListOpsBounds {
            max_depth: 4,
            max_args: 5,
            min_len: 10,
            max_len: 40,
        };
        let task = listops(bounds, SIZES, 9).expect("task");
        for example in task.train.iter().chain(&task.validation) {
            let SequenceInput::Ids(ids) = &example.input else {
                panic!("ListOps is ids")
            };
            assert!((10..=40).contains(&ids.len()), "{} tokens", ids.len());
            assert!(ids.iter().all(|&i| (1..16).contains(&i)));
            let opens = ids.iter().filter(|&&i| (11..15).contains(&i)).count();
            assert_eq!(opens, ids.iter().filter(|&&i| i == 15).count());
        }
        assert_eq!(task.train, listops(bounds, SIZES, 9).expect("task").train);
        assert_ne!(task.train, listops(bounds, SIZES, 10).expect("task").train);
    }
}
