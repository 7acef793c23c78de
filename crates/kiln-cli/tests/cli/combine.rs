//! `kiln combine`: peft LoRA adapters combined from the command line (the arithmetic itself is
//! checked against peft in kiln-train's tests).

use crate::common::{fixtures, kiln, path, read_json};

#[test]
fn combine_writes_a_lora_adapter_and_names_bad_flags() {
    let arith = fixtures().join("peft/peft-arith");
    let out = tempfile::tempdir().expect("dir");
    let target = out.path().join("cat");
    let (a_dir, b_dir) = (arith.join("a"), arith.join("b"));
    let (a, b) = (
        format!("{}:0.7", path(&a_dir)),
        format!("{}:-0.4", path(&b_dir)),
    );
    let (ok, stdout, stderr) = kiln(&[
        "combine",
        "--adapter",
        &a,
        "--adapter",
        &b,
        "--combination",
        "cat",
        "--out",
        path(&target),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("rank 8, 6 modules"), "{stdout}");
    let config = read_json(&target.join("adapter_config.json"));
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 8);
    let (ok, _, stderr) = kiln(&[
        "combine",
        "--adapter",
        &a,
        "--combination",
        "ties",
        "--density",
        "1.5",
        "--out",
        path(&out.path().join("ties")),
    ]);
    assert!(!ok && stderr.contains("--density"), "{stderr}");
    let (ok, _, stderr) = kiln(&[
        "combine",
        "--adapter",
        &a,
        "--combination",
        "average",
        "--out",
        path(&out.path().join("x")),
    ]);
    assert!(!ok && stderr.contains("average"), "{stderr}");
}
