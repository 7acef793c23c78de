//! LoRA arithmetic, as peft's `LoraModel.add_weighted_adapter` computes it: several peft LoRA
//! adapters of one base combined, with weights, into a new servable LoRA adapter directory.
//!
//! - `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune` combine the `A`s and the
//!   `B`s separately (equal ranks): adapter `i`'s weight `w_i` and scale `s_i` enter as
//!   `sign(w_i)·sqrt(|w_i·s_i|)` on `A` and `sqrt(|w_i·s_i|)` on `B`, so that the combined
//!   `B·A` of one adapter is its own `w_i·s_i·B_i·A_i`. `linear` sums (task arithmetic, Ilharco
//!   et al. 2023); `magnitude_prune` keeps each tensor's `density` largest entries first; `ties`
//!   (Yadav et al. 2023) prunes so, elects each entry's sign (`total`: the sign of the sum;
//!   `frequency`: the commoner sign) and averages the entries that agree; `dare_*` (Yu et al.
//!   2024) drop entries at random with probability `1 − density` and rescale by `1/density`
//!   (kiln's own seeded draws, not torch's).
//! - `cat` stacks the ranks: `A = [w_i·s_i·A_i]`, `B = [B_i]`, rank `Σ r_i`, exact.
//! - `svd` sums the full updates `Σ w_i·s_i·B_i·A_i` and keeps the top `svd_rank` (default the
//!   largest `r_i`) singular triplets, `B = U·S`, `A = Vᵀ`.
//!
//! The result has `lora_alpha = r` (scale 1: the scales are inside `A`), the union of the
//! targets, and the deltas only: a classifier saved with an input adapter is not combined.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use kiln_models::WeightFile;

use crate::error::{Result, TrainError};
use crate::peft::{PEFT_WEIGHTS_FILE, PeftLoraConfig, read_lora_config};

/// How the adapters combine (peft's `combination_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combination {
    /// Weighted sum of the `A`s and of the `B`s.
    Linear,
    /// Ranks stacked.
    Cat,
    /// Weighted sum of the updates, truncated SVD.
    Svd,
    /// TIES merging of the `A`s and of the `B`s.
    Ties,
    /// DARE: random drop and rescale, then the weighted sum.
    DareLinear,
    /// DARE, then TIES' sign election.
    DareTies,
    /// Magnitude pruning, then the weighted sum.
    MagnitudePrune,
}

impl std::str::FromStr for Combination {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        Ok(match text {
            "linear" => Self::Linear,
            "cat" => Self::Cat,
            "svd" => Self::Svd,
            "ties" => Self::Ties,
            "dare_linear" => Self::DareLinear,
            "dare_ties" => Self::DareTies,
            "magnitude_prune" => Self::MagnitudePrune,
            other => {
                return Err(format!(
                    "`{other}` is not one of linear, cat, svd, ties, dare_linear, dare_ties, \
                     magnitude_prune"
                ));
            }
        })
    }
}

/// TIES' sign election (peft's `majority_sign_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MajoritySign {
    /// The sign of the entries' sum.
    #[default]
    Total,
    /// The sign most entries have.
    Frequency,
}

/// What to combine and how.
#[derive(Debug, Clone)]
pub struct CombineSettings {
    /// peft LoRA adapter directories with their weights.
    pub adapters: Vec<(PathBuf, f64)>,
    /// How.
    pub combination: Combination,
    /// The share of entries kept by the pruning combinations, in (0, 1].
    pub density: f64,
    /// `svd`'s rank (default: the largest input rank).
    pub svd_rank: Option<usize>,
    /// TIES' sign election.
    pub majority_sign: MajoritySign,
    /// Seed of DARE's drops.
    pub seed: u64,
}

/// What `combine_lora_adapters` wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Combined {
    /// The combined rank.
    pub rank: usize,
    /// Modules with a combined delta.
    pub modules: usize,
}

/// One adapter's delta of one module: `A` `[r, in]`, `B` `[out, r]` (peft's layout), its scale.
struct Delta {
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    d_in: usize,
    d_out: usize,
    scale: f64,
}

/// Each module's delta in one peft LoRA directory, by module name.
fn read_deltas(dir: &Path) -> Result<(PeftLoraConfig, BTreeMap<String, Delta>)> {
    let config = read_lora_config(dir)?;
    if config.use_dora {
        return Err(TrainError::Invalid(format!(
            "{}: a DoRA adapter's update is not a sum of low-rank parts; peft does not combine \
             them either",
            dir.display()
        )));
    }
    let scale = if config.use_rslora {
        config.lora_alpha / (config.r as f64).sqrt()
    } else {
        config.lora_alpha / config.r as f64
    };
    let path = dir.join(PEFT_WEIGHTS_FILE);
    let file = WeightFile::open(&path)?;
    let bad = |message: String| TrainError::checkpoint(&path, message);
    let mut deltas = BTreeMap::new();
    for name in file.names() {
        let Some(module) = name.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let a = file.get(name).expect("listed");
        let b_name = format!("{module}.lora_B.weight");
        let b = file
            .get(&b_name)
            .ok_or_else(|| bad(format!("`{b_name}` is missing")))?;
        let (&[rank, d_in], &[d_out, rank_b]) = (a.shape.as_slice(), b.shape.as_slice()) else {
            return Err(bad(format!("`{module}`'s matrices are not matrices")));
        };
        if rank != rank_b {
            return Err(bad(format!(
                "`{module}`: lora_A has rank {rank}, lora_B {rank_b}"
            )));
        }
        deltas.insert(
            module.to_string(),
            Delta {
                a: a.values.clone(),
                b: b.values.clone(),
                rank,
                d_in,
                d_out,
                scale,
            },
        );
    }
    if deltas.is_empty() {
        return Err(bad("it holds no LoRA matrices".into()));
    }
    Ok((config, deltas))
}

/// SplitMix64 (as VeRA's projections use): DARE's drops, the same for the same seed.
fn keep_mask(len: usize, density: f64, seed: &mut u64) -> Vec<bool> {
    (0..len)
        .map(|_| {
            *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 11) as f64 / (1u64 << 53) as f64) < density
        })
        .collect()
}

/// peft's `magnitude_based_pruning`: the `int(density·n)` largest magnitudes kept.
fn magnitude_prune(values: &[f32], density: f64) -> Vec<f32> {
    if density >= 1.0 {
        return values.to_vec();
    }
    let keep = (density * values.len() as f64) as usize;
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[j].abs().total_cmp(&values[i].abs()));
    let mut out = vec![0.0; values.len()];
    for &i in &order[..keep] {
        out[i] = values[i];
    }
    out
}

/// torch's `sign`: 0 for 0 (which never equals an elected sign).
fn torch_sign(value: f32) -> f64 {
    if value > 0.0 {
        1.0
    } else if value < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// One combination over tensors of the same shape with their weights (peft's `merge_utils`).
fn merge(
    tensors: &[Vec<f32>],
    weights: &[f64],
    settings: &CombineSettings,
    seed: &mut u64,
) -> Vec<f32> {
    let density = settings.density;
    let pruned: Vec<Vec<f32>> = tensors
        .iter()
        .map(|t| match settings.combination {
            Combination::Ties | Combination::MagnitudePrune => magnitude_prune(t, density),
            Combination::DareLinear | Combination::DareTies if density < 1.0 => {
                let mask = keep_mask(t.len(), density, seed);
                t.iter()
                    .zip(mask)
                    .map(|(&v, keep)| if keep { v / density as f32 } else { 0.0 })
                    .collect()
            }
            _ => t.clone(),
        })
        .collect();
    let len = tensors[0].len();
    let elect = matches!(
        settings.combination,
        Combination::Ties | Combination::DareTies
    );
    (0..len)
        .map(|i| {
            let weighted = || {
                pruned
                    .iter()
                    .zip(weights)
                    .map(move |(t, w)| t[i] as f64 * w)
            };
            if !elect {
                return weighted().sum::<f64>() as f32;
            }
            // The majority sign from the unweighted entries, as peft elects it.
            let votes: f64 = match settings.majority_sign {
                MajoritySign::Total => pruned.iter().map(|t| t[i] as f64).sum(),
                MajoritySign::Frequency => pruned.iter().map(|t| torch_sign(t[i])).sum(),
            };
            let majority = if votes >= 0.0 { 1.0 } else { -1.0 };
            let (mut sum, mut count) = (0.0, 0usize);
            for (t, w) in pruned.iter().zip(weights) {
                if torch_sign(t[i]) == majority {
                    sum += t[i] as f64 * w;
                    count += 1;
                }
            }
            (sum / count.max(1) as f64) as f32
        })
        .collect()
}

/// Combines the adapters in `settings` into a new peft LoRA directory `out`.
pub fn combine_lora_adapters(settings: &CombineSettings, out: &Path) -> Result<Combined> {
    if settings.adapters.is_empty() {
        return Err(TrainError::Invalid(
            "--adapter: name at least one adapter".into(),
        ));
    }
    if !(settings.density > 0.0 && settings.density <= 1.0) {
        return Err(TrainError::Invalid(format!(
            "--density {} is not in (0, 1]",
            settings.density
        )));
    }
    let mut inputs = Vec::new();
    for (dir, weight) in &settings.adapters {
        let (config, deltas) = read_deltas(dir)?;
        inputs.push((dir, *weight, config, deltas));
    }
    let ranks: Vec<usize> = inputs.iter().map(|(_, _, c, _)| c.r).collect();
    let same_rank = ranks.iter().all(|&r| r == ranks[0]);
    let rank = match settings.combination {
        Combination::Cat => ranks.iter().sum(),
        Combination::Svd => settings
            .svd_rank
            .unwrap_or_else(|| ranks.iter().copied().max().unwrap_or(0)),
        _ if same_rank => ranks[0],
        _ => {
            return Err(TrainError::Invalid(format!(
                "--combination: the adapters' ranks differ ({ranks:?}); combining A and B \
                 separately needs one rank (use cat or svd)"
            )));
        }
    };
    let mut modules: Vec<String> = inputs
        .iter()
        .flat_map(|(_, _, _, d)| d.keys().cloned())
        .collect();
    modules.sort();
    modules.dedup();
    let mut seed = settings.seed;
    let mut tensors = Vec::new();
    for module in &modules {
        let present: Vec<(&Delta, f64)> = inputs
            .iter()
            .filter_map(|(_, w, _, d)| d.get(module).map(|delta| (delta, *w)))
            .collect();
        let (d_in, d_out) = (present[0].0.d_in, present[0].0.d_out);
        if let Some((dir, ..)) = inputs.iter().find(|(_, _, _, d)| {
            d.get(module)
                .is_some_and(|delta| (delta.d_in, delta.d_out) != (d_in, d_out))
        }) {
            return Err(TrainError::Invalid(format!(
                "{}: `{module}` has another shape than in the first adapter: not one base",
                dir.display()
            )));
        }
        let (a, b) = match settings.combination {
            Combination::Cat => {
                // Each adapter's rows of A scaled by w·s; rows of absent adapters stay zero.
                let (mut a, mut b) = (vec![0.0f32; rank * d_in], vec![0.0f32; d_out * rank]);
                let mut row = 0;
                for (delta, w) in &present {
                    let factor = (w * delta.scale) as f32;
                    for r in 0..delta.rank {
                        for c in 0..d_in {
                            a[(row + r) * d_in + c] = delta.a[r * d_in + c] * factor;
                        }
                        for o in 0..d_out {
                            b[o * rank + row + r] = delta.b[o * delta.rank + r];
                        }
                    }
                    row += delta.rank;
                }
                (a, b)
            }
            Combination::Svd => svd_factors(&present, rank, d_in, d_out)?,
            _ => {
                let weight_a: Vec<f64> = present
                    .iter()
                    .map(|(d, w)| (w * d.scale).abs().sqrt() * (w * d.scale).signum())
                    .collect();
                let weight_b: Vec<f64> = present
                    .iter()
                    .map(|(d, w)| (w * d.scale).abs().sqrt())
                    .collect();
                let a: Vec<Vec<f32>> = present.iter().map(|(d, _)| d.a.clone()).collect();
                let b: Vec<Vec<f32>> = present.iter().map(|(d, _)| d.b.clone()).collect();
                (
                    merge(&a, &weight_a, settings, &mut seed),
                    merge(&b, &weight_b, settings, &mut seed),
                )
            }
        };
        tensors.push((format!("{module}.lora_A.weight"), vec![rank, d_in], a));
        tensors.push((format!("{module}.lora_B.weight"), vec![d_out, rank], b));
    }
    crate::peft::write_combined(out, &inputs[0].2, rank, &tensors)?;
    Ok(Combined {
        rank,
        modules: modules.len(),
    })
}

/// `svd`: `Σ w·s·B·A` `[out, in]`, then `B = U_r·S_r`, `A = V_rᵀ` (burn-linalg's SVD).
fn svd_factors(
    present: &[(&Delta, f64)],
    rank: usize,
    d_in: usize,
    d_out: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if rank > d_in.min(d_out) {
        return Err(TrainError::Invalid(format!(
            "--svd-rank {rank} is above the {d_out} x {d_in} update's rank bound"
        )));
    }
    let device = Device::flex();
    let mut update = Tensor::<2>::zeros([d_out, d_in], &device);
    for (delta, w) in present {
        let a = Tensor::<2>::from_data(
            TensorData::new(delta.a.clone(), [delta.rank, d_in]),
            &device,
        );
        let b = Tensor::<2>::from_data(
            TensorData::new(delta.b.clone(), [d_out, delta.rank]),
            &device,
        );
        update = update + b.matmul(a) * (w * delta.scale);
    }
    let (u, singular, vt) = burn::linalg::svd::<2, 1>(update, 100);
    let b = u.narrow(1, 0, rank) * singular.narrow(0, 0, rank).unsqueeze_dim(0);
    let a = vt.narrow(0, 0, rank);
    let floats = |t: Tensor<2>| {
        t.into_data()
            .try_to_vec::<f32>()
            .map_err(|e| TrainError::Invalid(format!("cannot read a tensor: {e:?}")))
    };
    Ok((floats(a)?, floats(b)?))
}
