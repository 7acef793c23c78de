//! `kiln train`, `kiln eval` and `kiln methods`: arguments, then one call of
//! [`kiln_train::run`] each.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;

use kiln_data::TaskSpec;
use kiln_models::{DeviceChoice, Readout};
use kiln_train::run::{EvalData, FisherSource, Objective, RunSettings, evaluate_run};
use kiln_train::{ChildTuning, Decay};

use crate::method_flags::MethodFlags;

/// How a table's columns and bytes are read: shared by every command that reads labelled or
/// unlabelled texts.
#[derive(Args, Clone, Default)]
pub struct ColumnArgs {
    /// Table column with the text [default: text].
    #[arg(long)]
    pub text_column: Option<String>,
    /// Table column with the second text of a pair.
    #[arg(long)]
    pub pair_column: Option<String>,
    /// Table column with the label [default: label].
    #[arg(long)]
    pub label_column: Option<String>,
    /// Encoding of files that are not UTF-8 (latin1, windows-1252, utf-16le, ...).
    #[arg(long)]
    pub encoding: Option<String>,
    /// Skip and count bad rows instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_rows: bool,
}

impl ColumnArgs {
    /// The task in `path` read with these options.
    pub fn spec(&self, path: PathBuf) -> TaskSpec {
        TaskSpec {
            text_column: self.text_column.clone(),
            pair_column: self.pair_column.clone(),
            label_column: self.label_column.clone(),
            encoding: self.encoding.clone(),
            skip_bad_rows: self.skip_bad_rows,
            ..TaskSpec::new(path)
        }
    }
}

#[derive(Args)]
pub struct TaskArgs {
    /// The training data: a folder-per-class directory, a GLUE task directory (train.tsv,
    /// dev.tsv), a CSV/TSV/JSONL file, or a directory with train/ (class folders) or
    /// train.csv|tsv|jsonl and optionally validation/ and test/ beside it.
    #[arg(long)]
    pub task: PathBuf,
    /// Held-out validation data (file or class folders, read like --task) [default: 10% of
    /// the training data, stratified].
    #[arg(long)]
    pub validation_task: Option<PathBuf>,
    /// Held-out test data, as --validation-task [default: 10% of the training data].
    #[arg(long)]
    pub test_task: Option<PathBuf>,
    #[command(flatten)]
    pub columns: ColumnArgs,
    /// The table's labels are real numbers (regression).
    #[arg(long, conflicts_with = "multi_label")]
    regression: bool,
    /// Any number of labels per row: a label cell split by --label-separator, or a JSON list
    /// (JSONL files whose labels are lists are multi-label without this flag). Sigmoid outputs
    /// and binary cross-entropy; micro/macro F1 and subset accuracy.
    #[arg(long)]
    multi_label: bool,
    /// What splits a multi-label cell [default: |].
    #[arg(long, requires = "multi_label")]
    label_separator: Option<String>,
    /// GLUE task of a GLUE directory (sst2, cola, mrpc, rte, sts-b) [default: the directory name].
    #[arg(long)]
    glue: Option<String>,
}

impl TaskArgs {
    pub fn spec(&self) -> TaskSpec {
        TaskSpec {
            validation: self.validation_task.clone(),
            test: self.test_task.clone(),
            regression: self.regression,
            multi_label: self.multi_label,
            label_separator: self.label_separator.clone(),
            glue: self.glue.clone(),
            ..self.columns.spec(self.task.clone())
        }
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// HF model directory (BERT or GPT-2).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    task: TaskArgs,
    #[command(flatten)]
    method: MethodFlags,
    /// Child-Tuning gradient mask: f (fresh random mask each step) or d (fixed, by Fisher
    /// information); works with any method, meant for full fine-tuning.
    #[arg(long)]
    child_tuning: Option<String>,
    /// Child-Tuning: share of the gradients kept.
    #[arg(long, default_value_t = 0.3)]
    reserve: f64,
    /// Child-Tuning D: training batches the Fisher information is estimated on [default: all].
    #[arg(long)]
    fisher_batches: Option<usize>,
    /// Child-Tuning D: reuse a Fisher estimate saved by an earlier run (RUN/fisher.safetensors).
    #[arg(long)]
    fisher: Option<PathBuf>,
    /// Layer-wise learning-rate decay: each layer below the top trains at this factor times the
    /// rate of the one above (embeddings last); the head keeps --lr.
    #[arg(long, allow_negative_numbers = true)]
    layer_decay: Option<f64>,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Peak learning rate [default: the method's; `kiln methods` lists them].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// What the run learns: sequence (a class, labels or a score per text, through a task
    /// head) or causal-lm (the next token of plain text, on a GPT-2: --task is then a directory
    /// of .txt documents or a file with one document per line, --validation-task and
    /// --test-task corpora the same; without --validation-task 10% of the documents are held
    /// out; the summary reports perplexity).
    #[arg(long, default_value = "sequence")]
    objective: Objective,
    /// Tokens per text, special tokens included; longer texts are truncated. With --objective
    /// causal-lm: tokens per training block.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Seeds the split, the initialisation, the data order and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of steps spent warming the learning rate up.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    warmup_ratio: f64,
    /// Decay after warm-up: linear, cosine or constant.
    #[arg(long, default_value = "linear")]
    schedule: Decay,
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    weight_decay: f64,
    /// Clip the joint gradient norm (0 turns clipping off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    max_grad_norm: f64,
    /// Stop after this many evaluations without a better validation metric.
    #[arg(long)]
    patience: Option<usize>,
    /// Add up the gradients of N batches of --batch-size before each optimizer step (the step
    /// of an N-times batch, in N passes).
    #[arg(long, value_name = "N", default_value_t = 1)]
    gradient_accumulation: usize,
    /// Train for N optimizer steps, whatever --epochs says; the schedule spans them.
    #[arg(long, value_name = "N")]
    max_steps: Option<usize>,
    /// Evaluate (keep the best checkpoint, count --patience) every N optimizer steps and at the
    /// end, instead of after every epoch.
    #[arg(long, value_name = "N")]
    eval_every: Option<usize>,
    /// Also checkpoint every N optimizer steps, so --resume continues mid-epoch (dropout is then
    /// re-seeded every step, so such a run's dropout differs from one without).
    #[arg(long, value_name = "N")]
    save_every: Option<usize>,
    /// Write a step record to metrics.jsonl and metrics.csv every N optimizer steps.
    #[arg(long, value_name = "N", default_value_t = 10)]
    log_every: usize,
    /// Multi-label: predict a label where its probability is above T [default: the threshold
    /// with the best validation micro-F1, tuned after training; evaluations during training use
    /// 0.5].
    #[arg(long, value_name = "T")]
    threshold: Option<f64>,
    /// How texts become one vector: mean, cls, pooler (BERT) or last (GPT-2) [default: mean
    /// for BERT, last for GPT-2].
    #[arg(long)]
    readout: Option<Readout>,
    /// Save the whole model in checkpoints, not only what the method trains.
    #[arg(long)]
    save_full: bool,
    /// Start from the model directory's architecture (its config.json) at random
    /// initialisation instead of its weights (which it then need not have); checkpoints hold
    /// every parameter.
    #[arg(long)]
    random_init: bool,
    /// Train on a random subset of this many training examples (drawn from --seed); validation
    /// and test stay whole.
    #[arg(long)]
    train_examples: Option<usize>,
    /// Start from a HF peft adapter directory (LoRA and its variants with `--method lora`, IA3,
    /// VeRA, OFT, LoHa, LoKr, AdaLoRA with `--method ia3|vera|oft|loha|lokr|adalora`, prompt
    /// tuning with `--method prompt`, GPT-2 prefix tuning with `--method p-tuning-v2`) or an
    /// AdapterHub one
    /// (BERT: `--method pfeiffer`, `houlsby`, `parallel`, `mam`, `adapter-drop`): its settings
    /// replace the method's options, its deltas, prompt, prefixes or adapters (and classifier or
    /// head, where the readout fits) the fresh ones.
    #[arg(long, visible_alias = "adapterhub-adapter")]
    peft_adapter: Option<PathBuf>,
    /// Run the frozen bottom of linear-probe, mlp-k and partial-k every step instead of once per
    /// example (the cache turns its dropout off).
    #[arg(long)]
    no_feature_cache: bool,
    /// Run directory [default: a new runs/METHOD-DATE-TIME, UTC].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out after its last checkpoint (an epoch's end, or a --save-every
    /// step); --epochs or --max-steps may grow, every other setting must match.
    #[arg(long, requires = "out")]
    resume: bool,
}

impl TrainArgs {
    /// The run these arguments ask for.
    fn settings(&self, device: DeviceChoice) -> Result<RunSettings> {
        let method = match &self.peft_adapter {
            Some(dir) => {
                if !self.method.options.is_empty() {
                    bail!(
                        "--peft-adapter: the method's options come from the adapter's config; \
                         give none"
                    );
                }
                kiln_train::peft::method_from_adapter(&self.method.method, dir)?
            }
            None => self.method.config()?,
        };
        let child_tuning = match self.child_tuning.as_deref() {
            None => None,
            Some("f") => Some(ChildTuning::F {
                reserve: self.reserve,
            }),
            Some("d") => Some(ChildTuning::D {
                reserve: self.reserve,
            }),
            Some(other) => bail!("--child-tuning {other}: expected f or d"),
        };
        let mut settings = RunSettings::new(&self.model, self.task.spec(), method);
        let train = &mut settings.train;
        train.child_tuning = child_tuning;
        train.layer_decay = self.layer_decay;
        train.epochs = self.epochs;
        if let Some(lr) = self.lr {
            train.lr = lr;
        }
        train.batch_size = self.batch_size;
        train.warmup_ratio = self.warmup_ratio;
        train.decay = self.schedule;
        train.weight_decay = self.weight_decay;
        // 0 turns clipping off; anything else, negative included, is checked as a norm.
        train.max_grad_norm = (self.max_grad_norm != 0.0).then_some(self.max_grad_norm);
        train.patience = self.patience;
        train.gradient_accumulation = self.gradient_accumulation;
        train.max_steps = self.max_steps;
        train.eval_every = self.eval_every;
        train.save_every = self.save_every;
        train.log_every = self.log_every;
        train.seed = self.seed;
        settings.readout = self.readout;
        settings.max_len = self.max_len;
        settings.save_full = self.save_full;
        settings.random_init = self.random_init;
        settings.train_examples = self.train_examples;
        settings.feature_cache = !self.no_feature_cache;
        settings.peft_adapter = self.peft_adapter.clone();
        settings.fisher = FisherSource {
            saved: self.fisher.clone(),
            batches: self.fisher_batches,
        };
        if let Some(threshold) = self.threshold
            && !(threshold > 0.0 && threshold < 1.0)
        {
            bail!("--threshold {threshold}: a probability strictly between 0 and 1");
        }
        settings.threshold = self.threshold;
        settings.objective = self.objective;
        settings.device = device;
        Ok(settings)
    }
}

pub fn train(args: TrainArgs, device: DeviceChoice) -> Result<()> {
    let settings = args.settings(device)?;
    let train = |out: &Path, resume: bool| -> Result<()> {
        match settings.objective {
            Objective::Sequence => drop(kiln_train::run::train(&settings, out, resume)?),
            Objective::CausalLm => drop(kiln_train::causal_lm::train(&settings, out, resume)?),
        }
        Ok(())
    };
    let Some(out) = &args.out else {
        let out = kiln_train::run::fresh_run_dir("runs".as_ref(), &settings.method.label())?;
        let trained = train(&out, false);
        if trained.is_err() {
            // A run that failed before writing anything leaves no empty folder behind.
            let _ = std::fs::remove_dir(&out);
        }
        return trained;
    };
    train(out, args.resume)
}

#[derive(Args)]
pub struct EvalArgs {
    /// Run directory written by `kiln train`.
    #[arg(long)]
    run: PathBuf,
    /// Which part of the run's split: validation or test.
    #[arg(long, default_value = "validation", conflicts_with = "task")]
    split: String,
    /// Score this file (CSV/TSV/JSONL, or class folders) instead of a part of the run's split;
    /// its labels must be the run's. Columns and encoding default to the run's.
    #[arg(long)]
    task: Option<PathBuf>,
    #[command(flatten)]
    columns: ColumnArgs,
    /// Print `{"metrics": {...}, "examples": N}` as JSON.
    #[arg(long)]
    json: bool,
    /// Run without adapters in this many of the lowest layers (AdapterDrop at inference).
    #[arg(long)]
    adapter_drop: Option<usize>,
    /// Go on when the base model's or the task's files changed since the run trained.
    #[arg(long)]
    allow_changed_inputs: bool,
}

pub fn eval(args: EvalArgs, device: &burn::tensor::Device) -> Result<()> {
    let data = match &args.task {
        Some(path) => EvalData::File(Box::new(args.columns.spec(path.clone()))),
        None => EvalData::Split(args.split.parse()?),
    };
    let evaluation = evaluate_run(
        &args.run,
        &data,
        args.adapter_drop,
        device,
        args.allow_changed_inputs,
    )?;
    let metrics = &evaluation.metrics;
    // A language model's perplexity reads better than its negative loss.
    let headline = |m: &kiln_train::Metrics| match m.perplexity {
        Some(perplexity) => ("perplexity", perplexity),
        None => m.primary(),
    };
    let (name, value) = headline(metrics);
    let scored = match &args.task {
        Some(path) => path.display().to_string(),
        None => args.split.clone(),
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "metrics": metrics, "examples": evaluation.examples })
        );
    } else {
        println!(
            "{scored} {name}: {value:.6} (loss {:.6}); {} examples in {:.2} s",
            metrics.loss, evaluation.examples, evaluation.seconds
        );
        if let Some((epoch, recorded)) = &evaluation.recorded {
            println!("recorded at epoch {epoch}: {:.6}", headline(recorded).1);
        }
    }
    evaluation.check_reproduced()?;
    Ok(())
}
