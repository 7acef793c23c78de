//! `kiln-fuzz [--inputs N] [--seed S] [--only NAME]`: every parser target of
//! [`kiln_testkit::fuzz`] for N mutated inputs (default 10^6), a table of what each saw, and a
//! failing exit when any input panicked (the first per target is saved under
//! `target/fuzz-crashes/`). `cargo xtask fuzz` builds and runs it in release mode.

use std::time::Instant;

use kiln_testkit::fuzz::{run, targets};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let inputs: usize = value("--inputs").map_or(1_000_000, |v| v.parse().expect("--inputs N"));
    let seed: u64 = value("--seed").map_or(1, |v| v.parse().expect("--seed S"));
    let only = value("--only");
    let scratch = std::env::temp_dir().join(format!("kiln-fuzz-{}", std::process::id()));
    let shm = std::path::Path::new("/dev/shm");
    let scratch = if shm.is_dir() {
        shm.join(scratch.file_name().expect("name"))
    } else {
        scratch
    };
    let crashes = kiln_testkit::fixtures()
        .parent()
        .expect("workspace")
        .join("target/fuzz-crashes");
    println!("| target | inputs | accepted | panics | seconds |\n|---|---|---|---|---|");
    let started = Instant::now();
    let mut panicked = false;
    for target in targets() {
        if only.as_deref().is_some_and(|o| o != target.name) {
            continue;
        }
        let outcome = run(&target, inputs, seed, &scratch, &crashes);
        println!(
            "| {} | {} | {} | {} | {} |",
            outcome.target, outcome.inputs, outcome.accepted, outcome.panics, outcome.seconds
        );
        if let Some(saved) = &outcome.first_panic {
            eprintln!(
                "{}: first panicking input saved to {}",
                outcome.target,
                saved.display()
            );
            panicked = true;
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    println!("total {} s", started.elapsed().as_secs());
    if panicked {
        std::process::exit(1);
    }
}
