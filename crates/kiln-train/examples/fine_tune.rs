//! Fine-tune a model with LoRA and label new texts: kiln's library in twenty lines, as peft's
//! README shows it in Python.
//!
//! ```sh
//! cargo run --release -p kiln-train --example fine_tune -- \
//!     .kiln/models/all-MiniLM-L6-v2 .kiln/data/bbcnews runs/example-lora
//! ```

use kiln_data::TaskSpec;
use kiln_train::run::{RunSettings, train};
use kiln_tuning::MethodConfig;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, task, out] = args.as_slice() else {
        eprintln!("usage: fine_tune MODEL_DIR TASK OUT_DIR");
        std::process::exit(2);
    };
    if let Err(error) = fine_tune(model, task, out) {
        eprintln!("error: {error}");
        let mut cause = std::error::Error::source(&error);
        while let Some(inner) = cause {
            eprintln!("  caused by: {inner}");
            cause = inner.source();
        }
        std::process::exit(1);
    }
}

fn fine_tune(model: &str, task: &str, out: &str) -> kiln_train::Result<()> {
    let method = MethodConfig::parse("lora", &[("rank", "8"), ("alpha", "16")])?;
    let mut task = TaskSpec::new(task);
    task.skip_bad_rows = true;
    let mut settings = RunSettings::new(model, task, method);
    settings.train.epochs = 1;
    settings.max_len = 64;
    let run = train(&settings, out.as_ref(), false)?;
    println!("test metrics: {:?}", run.summary.test);
    for prediction in run.predict(&["the match went to penalties", "shares fell sharply"])? {
        println!("{prediction:?}");
    }
    Ok(())
}
