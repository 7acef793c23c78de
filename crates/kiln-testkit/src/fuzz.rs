//! A seeded mutation fuzzer for kiln's input parsers, on stable Rust: each target starts from
//! small valid inputs (seeds), mutates them (bit flips, interesting bytes and lengths, inserted,
//! deleted, repeated and spliced ranges, truncation), writes each mutant where the parser reads
//! it, and calls the parser under `catch_unwind`. An `Err` is the right answer to a broken
//! input; a panic is a bug (the input is saved for replay). An abort (an allocation the input
//! asked for) ends the process, which the harness's caller sees.
//!
//! `cargo xtask fuzz [--inputs N]` runs every target for N inputs (default 10^6); the test suite
//! runs each for a few thousand with a fixed seed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_data::{OnBadRow, ReadOptions, SplitMix64, TableSpec, TaskSpec};
use kiln_models::weights::WeightFile;
use kiln_models::{BertConfig, Gpt2Config, ModelKind, TextInput, TextTokenizer};

use crate::fixtures;

/// Reads the input file at the path; an `Err` is a clean refusal.
pub type Parse = Box<dyn Fn(&Path) -> Result<(), String>>;

/// One parser to fuzz.
pub struct Target {
    /// Its name (`safetensors`, `csv`, ...).
    pub name: &'static str,
    /// Valid inputs to start from.
    pub seeds: Vec<Vec<u8>>,
    /// The file name each mutant is written to.
    pub file: &'static str,
    /// Reads the file at the path.
    pub parse: Parse,
}

/// What one target's run saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The target's name.
    pub target: &'static str,
    /// Inputs tried.
    pub inputs: usize,
    /// Inputs the parser accepted.
    pub accepted: usize,
    /// Inputs that panicked, and where the first was saved.
    pub panics: usize,
    /// The saved first panicking input.
    pub first_panic: Option<PathBuf>,
    /// Wall time in seconds.
    pub seconds: u64,
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Every target, with its seeds from the committed fixtures.
pub fn targets() -> Vec<Target> {
    let fixture = |p: &str| read(&fixtures().join(p));
    let csv =
        b"text,label\nfirst text,fire\n\"a \"\"quoted\"\", text\",water\nthird,fire\n".to_vec();
    let tsv = b"text\tlabel\nfirst text\tfire\nsecond\twater\n".to_vec();
    let jsonl =
        b"{\"text\": \"a\", \"label\": \"fire\"}\n{\"text\": \"b\", \"label\": 2}\n".to_vec();
    let mut idx = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
    idx.extend([0u8, 255, 7, 9, 1, 2, 3, 4]);
    let mut cifar = vec![3u8];
    cifar.extend((0..3072).map(|i| (i % 251) as u8));
    let bert_tokenizer = TextTokenizer::from_dir(&fixtures().join("bert-tiny"), ModelKind::Bert);
    let gpt2_tokenizer = TextTokenizer::from_dir(&fixtures().join("gpt2-tiny"), ModelKind::Gpt2);
    let (bert_tokenizer, gpt2_tokenizer) = (
        bert_tokenizer.expect("bert-tiny tokenizer"),
        gpt2_tokenizer.expect("gpt2-tiny tokenizer"),
    );
    let options = ReadOptions {
        on_bad_row: OnBadRow::Fail,
        encoding: None,
    };
    let skipping = ReadOptions {
        on_bad_row: OnBadRow::Skip,
        encoding: None,
    };
    let table = move |path: &Path| -> Result<(), String> {
        let spec = TableSpec::new("text", "label");
        let failing = kiln_data::read_table(path, &spec, options).map(|_| ());
        let skipped = kiln_data::read_table(path, &spec, skipping).map(|_| ());
        failing.and(skipped).map_err(err)
    };
    vec![
        Target {
            name: "safetensors",
            seeds: vec![fixture("bert-tiny/model.safetensors")[..].to_vec()],
            file: "model.safetensors",
            parse: Box::new(|path| WeightFile::open(path).map(|_| ()).map_err(err)),
        },
        Target {
            name: "pytorch",
            seeds: vec![
                fixture("fuzz/tiny-zip.bin"),
                fixture("fuzz/tiny-legacy.bin"),
            ],
            file: "pytorch_model.bin",
            parse: Box::new(|path| WeightFile::open(path).map(|_| ()).map_err(err)),
        },
        Target {
            name: "config",
            seeds: vec![
                fixture("bert-tiny/config.json"),
                fixture("gpt2-tiny/config.json"),
            ],
            file: "config.json",
            parse: Box::new(|path| {
                let bert = BertConfig::from_file(path).map(|_| ()).map_err(err);
                let gpt2 = Gpt2Config::from_file(path).map(|_| ()).map_err(err);
                let kind = ModelKind::detect(path.parent().unwrap_or(path)).map(|_| ());
                bert.or(gpt2).and(kind.map_err(err))
            }),
        },
        Target {
            name: "csv",
            seeds: vec![csv],
            file: "data.csv",
            parse: Box::new(table),
        },
        Target {
            name: "tsv",
            seeds: vec![tsv],
            file: "data.tsv",
            parse: Box::new(table),
        },
        Target {
            name: "jsonl",
            seeds: vec![jsonl],
            file: "data.jsonl",
            parse: Box::new(table),
        },
        Target {
            name: "class-folders",
            seeds: vec![b"A document about fire.\n".to_vec(), vec![0xa3, b'5', b' ']],
            file: "folders/fire/1.txt",
            parse: Box::new(|path| {
                let root = path.parent().and_then(Path::parent).ok_or("no root")?;
                let water = root.join("water");
                if !water.is_dir() {
                    std::fs::create_dir_all(&water).map_err(err)?;
                    std::fs::write(water.join("1.txt"), "water").map_err(err)?;
                }
                TaskSpec::new(root).load(7).map(|_| ()).map_err(err)
            }),
        },
        Target {
            name: "idx",
            seeds: vec![idx],
            file: "images.idx",
            parse: Box::new(|path| {
                let labels = path.with_file_name("labels.idx");
                if !labels.is_file() {
                    std::fs::write(&labels, [0, 0, 8, 1, 0, 0, 0, 2, 1, 0]).map_err(err)?;
                }
                kiln_data::read_idx(path, &labels).map(|_| ()).map_err(err)
            }),
        },
        Target {
            name: "cifar10",
            seeds: vec![cifar],
            file: "data_batch_1.bin",
            parse: Box::new(|path| {
                kiln_data::read_cifar10(&[path.to_path_buf()])
                    .map(|_| ())
                    .map_err(err)
            }),
        },
        Target {
            name: "tokenizer",
            seeds: vec![
                "the fire, the WATER! 123 ünïcödé".as_bytes().to_vec(),
                b"[CLS] [SEP] [PAD] <|endoftext|>".to_vec(),
            ],
            file: "text.txt",
            parse: Box::new(move |path| {
                let text = String::from_utf8_lossy(&read(path)).into_owned();
                for tokenizer in [&bert_tokenizer, &gpt2_tokenizer] {
                    let inputs = [
                        TextInput::Single(text.clone()),
                        TextInput::Pair(text.clone(), text.chars().rev().collect()),
                    ];
                    let _ = tokenizer.encode_batch(&inputs);
                    let _ = tokenizer.encode(&text);
                }
                Ok(())
            }),
        },
    ]
}

/// Bytes a mutation likes to put in: structure characters and boundaries.
const INTERESTING: [u8; 18] = [
    0, 1, 0x7f, 0x80, 0xff, b'"', b',', b'\n', b'\r', b'\t', b'{', b'}', b'[', b']', b':', b'-',
    b'9', b'\\',
];
/// Lengths and counts a mutation likes to write over eight bytes.
const INTERESTING_U64: [u64; 6] = [0, 1, 0xffff_ffff, u64::MAX, 1 << 40, 1 << 62];

/// One mutant of `seed` (splicing from `other`).
pub fn mutate(seed: &[u8], other: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = |rng: &mut SplitMix64, len: usize| rng.below(len.max(1));
        match rng.below(9) {
            0 if !data.is_empty() => {
                let i = at(rng, data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = at(rng, data.len());
                data[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = at(rng, data.len() + 1).min(data.len());
                let bytes: Vec<u8> = (0..1 + rng.below(8))
                    .map(|_| rng.below(256) as u8)
                    .collect();
                data.splice(i..i, bytes);
            }
            3 if !data.is_empty() => {
                let i = at(rng, data.len());
                let end = (i + 1 + rng.below(16)).min(data.len());
                data.drain(i..end);
            }
            4 if !data.is_empty() => {
                let i = at(rng, data.len());
                let end = (i + 1 + rng.below(32)).min(data.len());
                let copy = data[i..end].to_vec();
                let to = at(rng, data.len() + 1).min(data.len());
                data.splice(to..to, copy);
            }
            5 => data.truncate(at(rng, data.len() + 1)),
            6 if data.len() >= 8 => {
                let i = at(rng, data.len() - 7);
                let value = if rng.below(2) == 0 {
                    INTERESTING_U64[rng.below(INTERESTING_U64.len())]
                } else {
                    rng.next_u64() >> rng.below(64)
                };
                data[i..i + 8].copy_from_slice(&value.to_le_bytes());
            }
            7 if !other.is_empty() => {
                let i = at(rng, other.len());
                let end = (i + 1 + rng.below(64)).min(other.len());
                let to = at(rng, data.len() + 1).min(data.len());
                data.splice(to..to, other[i..end].iter().copied());
            }
            _ if !data.is_empty() => {
                // An ASCII digit changed: numbers in headers, configs and tables.
                let digits: Vec<usize> = (0..data.len())
                    .filter(|&i| data[i].is_ascii_digit())
                    .collect();
                if !digits.is_empty() {
                    let i = digits[rng.below(digits.len())];
                    data[i] = b'0' + rng.below(10) as u8;
                }
            }
            _ => data.push(rng.below(256) as u8),
        }
    }
    data
}

/// Runs `target` on `inputs` mutants drawn from `seed`, in the scratch folder `dir`; panicking
/// inputs are saved to `crashes`.
pub fn run(target: &Target, inputs: usize, seed: u64, dir: &Path, crashes: &Path) -> Outcome {
    let path = dir.join(target.name).join(target.file);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("scratch folder");
    let mut rng = SplitMix64::new(seed);
    let started = Instant::now();
    let (mut accepted, mut panics, mut first_panic) = (0, 0, None);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for _ in 0..inputs {
        let seed_input = &target.seeds[rng.below(target.seeds.len())];
        let other = &target.seeds[rng.below(target.seeds.len())];
        let input = mutate(seed_input, other, &mut rng);
        std::fs::write(&path, &input).expect("write the input");
        match catch_unwind(AssertUnwindSafe(|| (target.parse)(&path))) {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(_)) => {}
            Err(_) => {
                panics += 1;
                if first_panic.is_none() {
                    std::fs::create_dir_all(crashes).expect("crash folder");
                    let saved =
                        crashes.join(format!("{}-{}", target.name, target.file.replace('/', "_")));
                    std::fs::write(&saved, &input).expect("save the input");
                    first_panic = Some(saved);
                }
            }
        }
    }
    std::panic::set_hook(hook);
    Outcome {
        target: target.name,
        inputs,
        accepted,
        panics,
        first_panic,
        seconds: started.elapsed().as_secs(),
    }
}
