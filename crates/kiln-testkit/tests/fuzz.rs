//! A short seeded run of every fuzz target: no parser panics on a few thousand mutants each
//! (`cargo xtask fuzz` runs 10^6 per target).

use kiln_testkit::fuzz::{mutate, run, targets};

#[test]
fn no_parser_panics_on_mutated_inputs() {
    let scratch = tempfile::tempdir().expect("dir");
    let crashes = scratch.path().join("crashes");
    for target in targets() {
        let outcome = run(&target, 2_000, 7, scratch.path(), &crashes);
        assert_eq!(outcome.panics, 0, "{outcome:?}");
        assert_eq!(outcome.inputs, 2_000);
    }
}

#[test]
fn mutants_are_seeded_and_differ_from_their_seed() {
    let seed = b"text,label\nsome fire,fire\n";
    let draw = |s| {
        let mut rng = kiln_data::SplitMix64::new(s);
        (0..50)
            .map(|_| mutate(seed, seed, &mut rng))
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(3), draw(3));
    assert!(draw(3).iter().filter(|m| m.as_slice() != seed).count() > 40);
}
