//! LoRA arithmetic against peft's `add_weighted_adapter`, on the fixture
//! `scripts/make_peft_fixtures.py lora-arithmetic` wrote: two adapters of one BERT base combined
//! with weights 0.7 and -0.4 by each combination, tensor by tensor (the SVD's by the update
//! `B·A`, which its sign conventions leave alone).

use std::collections::BTreeMap;
use std::path::Path;

use kiln_models::weights::WeightFile;
use kiln_testkit::fixtures;
use kiln_train::lora_arithmetic::{
    Combination, CombineSettings, MajoritySign, combine_lora_adapters,
};
use kiln_train::peft::{PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE};

use crate::common::read_json;

fn settings(combination: Combination) -> CombineSettings {
    let dir = fixtures().join("peft/peft-arith");
    CombineSettings {
        adapters: vec![(dir.join("a"), 0.7), (dir.join("b"), -0.4)],
        combination,
        density: 0.5,
        svd_rank: Some(4),
        majority_sign: MajoritySign::Total,
        seed: 0,
    }
}

/// Every tensor of a safetensors file, by name.
fn read(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let file = WeightFile::open(path).expect("safetensors");
    file.names()
        .map(|name| {
            let raw = file.get(name).expect("listed");
            (name.to_string(), (raw.shape.clone(), raw.values.clone()))
        })
        .collect()
}

/// `B·A` `[out, in]` from peft's `[out, r]` and `[r, in]`.
fn product(b: &(Vec<usize>, Vec<f32>), a: &(Vec<usize>, Vec<f32>)) -> Vec<f32> {
    let (out, rank, d_in) = (b.0[0], b.0[1], a.0[1]);
    let mut result = vec![0.0f32; out * d_in];
    for o in 0..out {
        for i in 0..d_in {
            result[o * d_in + i] = (0..rank)
                .map(|k| b.1[o * rank + k] * a.1[k * d_in + i])
                .sum();
        }
    }
    result
}

fn close(ours: &[f32], theirs: &[f32], tolerance: f32, what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: sizes");
    for (i, (x, y)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (x - y).abs() < tolerance,
            "{what}[{i}]: kiln {x} vs peft {y}"
        );
    }
}

#[test]
fn combinations_give_what_pefts_add_weighted_adapter_gives() {
    let peft = read(&fixtures().join("peft/peft-arith/combined.safetensors"));
    for (name, combination) in [
        ("linear", Combination::Linear),
        ("cat", Combination::Cat),
        ("svd", Combination::Svd),
        ("ties", Combination::Ties),
        ("magnitude_prune", Combination::MagnitudePrune),
    ] {
        let dir = tempfile::tempdir().expect("dir");
        let combined = combine_lora_adapters(&settings(combination), dir.path()).expect(name);
        // query, key and value in both layers: the union of the two adapters' targets.
        assert_eq!(combined.modules, 6, "{name}");
        let ours = read(&dir.path().join(PEFT_WEIGHTS_FILE));
        let config = read_json(&dir.path().join(PEFT_CONFIG_FILE));
        assert_eq!(config["r"], combined.rank, "{name}");
        assert_eq!(config["lora_alpha"].as_f64(), Some(combined.rank as f64));
        for (tensor, value) in &ours {
            let theirs = &peft[&format!("{name}.{tensor}")];
            assert_eq!(value.0, theirs.0, "{name} {tensor}: shape");
            if combination != Combination::Svd {
                close(&value.1, &theirs.1, 1e-5, &format!("{name} {tensor}"));
            } else if let Some(module) = tensor.strip_suffix(".lora_A.weight") {
                let b = format!("{module}.lora_B.weight");
                close(
                    &product(&ours[&b], value),
                    &product(&peft[&format!("svd.{b}")], theirs),
                    1e-4,
                    &format!("svd {module}: B·A"),
                );
            }
        }
    }
}

#[test]
fn dare_drops_a_share_of_entries_and_rescales_the_rest() {
    let mut dare = settings(Combination::DareLinear);
    let a = fixtures().join("peft/peft-arith/a");
    dare.adapters = vec![(a.clone(), 1.0)];
    dare.density = 0.25;
    let once = tempfile::tempdir().expect("dir");
    let again = tempfile::tempdir().expect("dir");
    combine_lora_adapters(&dare, once.path()).expect("dare");
    combine_lora_adapters(&dare, again.path()).expect("dare");
    let ours = read(&once.path().join(PEFT_WEIGHTS_FILE));
    assert_eq!(
        ours,
        read(&again.path().join(PEFT_WEIGHTS_FILE)),
        "same seed, same drops"
    );
    let input = read(&a.join(PEFT_WEIGHTS_FILE));
    // Adapter a has alpha 8 at r 4: A and B each enter with sqrt(2).
    let (mut kept, mut total) = (0usize, 0usize);
    for (name, (_, values)) in &ours {
        for (v, original) in values.iter().zip(&input[name].1) {
            total += 1;
            if *v != 0.0 {
                kept += 1;
                let expected = original * 2f32.sqrt() / 0.25;
                assert!((v - expected).abs() < 1e-5, "{name}: {v} vs {expected}");
            }
        }
    }
    let share = kept as f64 / total as f64;
    assert!((share - 0.25).abs() < 0.03, "kept {share} of the entries");
}

#[test]
fn only_plain_lora_adapters_combine() {
    let dir = tempfile::tempdir().expect("dir");
    let mut linear = settings(Combination::Linear);
    for (adapter, says) in [("peft-bert-lokr", "peft_type"), ("peft-bert-dora", "DoRA")] {
        linear.adapters[1].0 = fixtures().join("peft").join(adapter);
        let error = combine_lora_adapters(&linear, dir.path())
            .expect_err("refused")
            .to_string();
        assert!(error.contains(says), "{adapter}: {error}");
    }
}
