//! `kiln train`, `kiln eval` and `kiln methods`.
//!
//! A run directory holds `run.json` (everything needed to rebuild the model and the data split),
//! the trainer's files (`metrics.jsonl`, `state.json`, checkpoints, `best/`), and `summary.json`
//! with the test metrics once training ends.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use clap::Args;
use serde::{Deserialize, Serialize};

use kiln_data::{LoadedTask, TaskSpec};
use kiln_models::{Activation, AdapterInit};
use kiln_models::{
    Backbone, DeviceChoice, FrozenCut, HeadConfig, PaddingSide, Pretrained, Readout,
    SequenceClassifier,
};
use kiln_train::peft::{PEFT_PREFIX_ADAPTER, import_peft, read_lora_config, read_peft_config};
use kiln_train::trainer::{BEST_DIR, TRAINED_FILE, read_json, write_json};
use kiln_train::{
    ChildTuning, Decay, EpochRecord, Metrics, PathTensors, TaskData, TextTask, TrainConfig,
    Trainer, estimate_fisher, evaluate, load_adapter, save_adapter,
};
use kiln_tuning::{METHODS, MethodConfig, MethodOptions, ParamReport};

#[derive(Args)]
pub struct TaskArgs {
    /// A folder-per-class directory, a GLUE task directory (train.tsv, dev.tsv), or a
    /// CSV/TSV/JSONL file.
    #[arg(long)]
    pub task: PathBuf,
    /// Table column with the text [default: text].
    #[arg(long)]
    text_column: Option<String>,
    /// Table column with the second text of a pair.
    #[arg(long)]
    pair_column: Option<String>,
    /// Table column with the label [default: label].
    #[arg(long)]
    label_column: Option<String>,
    /// The table's labels are real numbers (regression).
    #[arg(long)]
    regression: bool,
    /// GLUE task of a GLUE directory (sst2, cola, mrpc, rte, sts-b) [default: the directory name].
    #[arg(long)]
    glue: Option<String>,
    /// Encoding of files that are not UTF-8 (latin1, windows-1252, utf-16le, ...).
    #[arg(long)]
    encoding: Option<String>,
    /// Skip and count bad rows instead of stopping at the first.
    #[arg(long)]
    skip_bad_rows: bool,
}

impl TaskArgs {
    /// The same options as `kiln` flags, for a `kiln train` started by another command.
    pub fn to_cli_args(&self) -> Vec<String> {
        let mut args = vec!["--task".to_string(), self.task.display().to_string()];
        for (flag, value) in [
            ("--text-column", &self.text_column),
            ("--pair-column", &self.pair_column),
            ("--label-column", &self.label_column),
            ("--glue", &self.glue),
            ("--encoding", &self.encoding),
        ] {
            if let Some(value) = value {
                args.extend([flag.to_string(), value.clone()]);
            }
        }
        for (flag, on) in [
            ("--regression", self.regression),
            ("--skip-bad-rows", self.skip_bad_rows),
        ] {
            if on {
                args.push(flag.to_string());
            }
        }
        args
    }

    pub fn spec(&self) -> TaskSpec {
        TaskSpec {
            path: self.task.clone(),
            text_column: self.text_column.clone(),
            pair_column: self.pair_column.clone(),
            label_column: self.label_column.clone(),
            regression: self.regression,
            glue: self.glue.clone(),
            encoding: self.encoding.clone(),
            skip_bad_rows: self.skip_bad_rows,
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
    method: MethodArgs,
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
    #[arg(long)]
    layer_decay: Option<f64>,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Peak learning rate [default: the method's: 5e-5 full, 1e-4 partial-k, 1e-2 prompt,
    /// p-tuning, p-tuning-v2 and side, 1e-3 otherwise].
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Tokens per text, special tokens included; longer texts are truncated.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Seeds the split, the initialisation, the data order and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of steps spent warming the learning rate up.
    #[arg(long, default_value_t = 0.1)]
    warmup_ratio: f64,
    /// Decay after warm-up: linear, cosine or constant.
    #[arg(long, default_value = "linear")]
    schedule: Decay,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Clip the joint gradient norm (0 turns clipping off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Stop after this many epochs without a better validation metric.
    #[arg(long)]
    patience: Option<usize>,
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
    /// Start from a HF peft adapter directory (LoRA with `--method lora`, prompt tuning with
    /// `--method prompt`, GPT-2 prefix tuning with `--method p-tuning-v2`): its settings replace
    /// the method's options, its deltas, prompt or prefixes (and classifier, with
    /// `--readout pooler`) the fresh ones.
    #[arg(long)]
    peft_adapter: Option<PathBuf>,
    /// Run the frozen bottom of linear-probe, mlp-k and partial-k every step instead of once per
    /// example (the cache turns its dropout off).
    #[arg(long)]
    no_feature_cache: bool,
    /// Run directory.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Continue the run in --out after its last complete epoch.
    #[arg(long)]
    resume: bool,
}

/// The method and its options, as `kiln train` and `kiln plan` take them.
#[derive(Args)]
pub struct MethodArgs {
    /// Transfer method; `kiln methods` lists them with their options.
    #[arg(long)]
    pub method: String,
    /// partial-k: layers that train; mlp-k: layers of the head.
    #[arg(long)]
    k: Option<usize>,
    /// LoRA rank.
    #[arg(long)]
    rank: Option<usize>,
    /// LoRA alpha (the delta is scaled by alpha / rank).
    #[arg(long)]
    alpha: Option<f64>,
    /// LoRA dropout on the delta's input.
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// LoRA target projections, comma-separated (query,value; c_attn; attention.output).
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    #[command(flatten)]
    adapter: AdapterArgs,
    #[command(flatten)]
    prompt: PromptArgs,
}

impl MethodArgs {
    /// The options as the registry takes them (`prompt_init_ids` still empty: they need the
    /// model's tokenizer).
    pub fn options(&self) -> Result<MethodOptions> {
        let adapter = &self.adapter;
        let prompt = &self.prompt;
        let template = match prompt.template.as_deref() {
            None => None,
            Some(&[before, after]) => Some((before, after)),
            Some(other) => bail!("--template takes two counts, before,after (got {other:?})"),
        };
        Ok(MethodOptions {
            k: self.k,
            rank: self.rank,
            alpha: self.alpha,
            lora_dropout: self.lora_dropout,
            targets: self.targets.clone(),
            bottleneck: adapter.bottleneck,
            reduction_factor: adapter.reduction_factor,
            adapter_activation: adapter.adapter_activation,
            adapter_init: adapter.adapter_init,
            train_norms: adapter.train_norms,
            adapter_name: adapter.adapter_name.clone(),
            scale: adapter.scale,
            prefix_len: adapter.prefix_len,
            adapters: adapter.adapters.clone(),
            drop_layers: adapter.drop_layers,
            drop_max: adapter.drop_max,
            side_width: adapter.side_width,
            side_alpha: adapter.side_alpha,
            side_alpha_end: adapter.side_alpha_end,
            prompt_len: prompt.prompt_len,
            prompt_init_text: prompt.prompt_init_text.clone(),
            prompt_at_start: prompt.prompt_at_start.then_some(true),
            prefix_positions: prompt.prefix_positions.then_some(true),
            prompt_init_ids: Vec::new(),
            template,
            prompt_encoder: prompt.prompt_encoder.clone(),
            prefix_hidden: prompt.prefix_hidden,
        })
    }
}

/// Options of the adapter family (houlsby, pfeiffer, parallel, fusion, adapter-drop, mam, side).
#[derive(Args)]
pub struct AdapterArgs {
    /// Adapter bottleneck width (overrides --reduction-factor).
    #[arg(long)]
    bottleneck: Option<usize>,
    /// Bottleneck = hidden size / this.
    #[arg(long)]
    reduction_factor: Option<usize>,
    /// Adapter non-linearity: relu, gelu, gelu_new, swish, tanh.
    #[arg(long)]
    adapter_activation: Option<Activation>,
    /// near-identity (Houlsby) or lora (up-projection zero).
    #[arg(long)]
    adapter_init: Option<AdapterInit>,
    /// Train the backbone's layer norms with the adapter (true or false).
    #[arg(long)]
    train_norms: Option<bool>,
    /// Name the adapter is saved under [default: the method's name].
    #[arg(long)]
    adapter_name: Option<String>,
    /// Parallel / MAM adapter output scale s.
    #[arg(long)]
    scale: Option<f64>,
    /// MAM, prefix, p-tuning-v2: prefix rows per attention.
    #[arg(long)]
    prefix_len: Option<usize>,
    /// fusion: directories of saved adapters (RUN/adapter), comma-separated.
    #[arg(long, value_delimiter = ',')]
    adapters: Option<Vec<PathBuf>>,
    /// adapter-drop: lowest layers without adapters at inference.
    #[arg(long)]
    drop_layers: Option<usize>,
    /// adapter-drop: most layers dropped in a training step.
    #[arg(long)]
    drop_max: Option<usize>,
    /// side: hidden width of the side network.
    #[arg(long)]
    side_width: Option<usize>,
    /// side: weight of the backbone's features (at the start of training).
    #[arg(long)]
    side_alpha: Option<f64>,
    /// side: weight at the end of training and at inference (a linear curriculum).
    #[arg(long)]
    side_alpha_end: Option<f64>,
}

/// Options of the prompt family (prompt, prefix, p-tuning, p-tuning-v2).
#[derive(Args)]
pub struct PromptArgs {
    /// prompt: virtual tokens.
    #[arg(long)]
    prompt_len: Option<usize>,
    /// prompt, p-tuning: start the virtual tokens from these words' embeddings.
    #[arg(long)]
    prompt_init_text: Option<String>,
    /// prompt: put the virtual tokens in front of BERT's [CLS], as HF peft does.
    #[arg(long)]
    prompt_at_start: bool,
    /// prefix, p-tuning-v2 on GPT-2: the prefix takes the first positions and the text counts on
    /// after it, as HF GPT-2 under peft's prefix tuning (needed to export to peft).
    #[arg(long)]
    prefix_positions: bool,
    /// p-tuning: virtual tokens before and after the text, `B,A`.
    #[arg(long, value_delimiter = ',')]
    template: Option<Vec<usize>>,
    /// p-tuning: prompt encoder, lstm or mlp.
    #[arg(long)]
    prompt_encoder: Option<String>,
    /// prefix: hidden width of the reparameterisation MLP.
    #[arg(long)]
    prefix_hidden: Option<usize>,
}

/// Everything needed to rebuild a run's model and data: `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub model: PathBuf,
    pub task: TaskSpec,
    pub method: MethodConfig,
    pub train: TrainConfig,
    pub readout: Readout,
    pub head: HeadConfig,
    pub max_len: usize,
    pub save_full: bool,
    /// The backbone started from random initialisation (checkpoints are then full).
    #[serde(default)]
    pub random_init: bool,
    /// Train on a seeded random subset of this many training examples.
    #[serde(default)]
    pub train_examples: Option<usize>,
    /// The frozen bottom's outputs were computed once per example and cached.
    #[serde(default)]
    pub feature_cache: bool,
    /// The peft adapter the method's parameters started from.
    #[serde(default)]
    pub peft_adapter: Option<PathBuf>,
}

/// Where `kiln train` saves an adapter method's adapter on its own (see `kiln_train::adapters`).
pub const ADAPTER_DIR: &str = "adapter";

/// The most memory the frozen-feature cache may take (its rows are kept on the host).
const FEATURE_CACHE_LIMIT: usize = 4 << 30;

/// Where Child-Tuning D's Fisher estimate is saved in a run directory.
pub const FISHER_FILE: &str = "fisher.safetensors";

/// `summary.json`: how the run ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub method: String,
    pub trainable_params: usize,
    pub total_params: usize,
    pub trainable_percent: f64,
    pub best_epoch: Option<usize>,
    pub validation: Option<Metrics>,
    pub test: Option<Metrics>,
    pub seconds_per_epoch: f64,
    pub peak_rss_mib: Option<f64>,
    pub device: String,
}

fn default_lr(method: &MethodConfig) -> f64 {
    match method {
        MethodConfig::Full(_) => 5e-5,
        MethodConfig::PartialK(_) => 1e-4,
        // Free virtual tokens and deep prompts move slowly at adapter rates (Lester et al. and
        // P-tuning v2 train them at 1e-2 and above); so does a head on MiniLM's small features
        // beside a side network (BBC News, one epoch: 72.6% at 1e-3, 95.5% at 1e-2).
        MethodConfig::Prompt(_)
        | MethodConfig::PTuning(_)
        | MethodConfig::PTuningV2(_)
        | MethodConfig::Side(_) => 1e-2,
        _ => 1e-3,
    }
}

pub fn train(args: TrainArgs, choice: DeviceChoice, device: &Device) -> Result<()> {
    let mut options = args.method.options()?;
    if let Some(dir) = &args.peft_adapter {
        options = peft_method_options(&args.method.method, &options, dir)?;
    }
    let mut method = MethodConfig::from_options(&args.method.method, &options)?;
    let child_tuning = match args.child_tuning.as_deref() {
        None => None,
        Some("f") => Some(ChildTuning::F {
            reserve: args.reserve,
        }),
        Some("d") => Some(ChildTuning::D {
            reserve: args.reserve,
        }),
        Some(other) => bail!("--child-tuning {other}: expected f or d"),
    };
    if let Some(child_tuning) = &child_tuning {
        child_tuning.check()?;
    }
    let train_config = TrainConfig {
        child_tuning,
        layer_decay: args.layer_decay,
        epochs: args.epochs,
        lr: args.lr.unwrap_or_else(|| default_lr(&method)),
        batch_size: args.batch_size,
        warmup_ratio: args.warmup_ratio,
        decay: args.schedule,
        weight_decay: args.weight_decay,
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        patience: args.patience,
        seed: args.seed,
        ..TrainConfig::default()
    };
    let mut task = args
        .task
        .spec()
        .load(args.seed)
        .with_context(|| format!("reading task {}", args.task.task.display()))?;
    if let Some(n) = args.train_examples {
        let available = task.split.train.len();
        if n == 0 || n > available {
            bail!("--train-examples {n}: the split has {available} training examples");
        }
        task.split.subsample_train(n, args.seed);
    }
    report_task(&task);

    let train_device = device.clone().autodiff();
    train_device.seed(args.seed);
    let pretrained = load_model(&args.model, args.random_init, &train_device)?;
    if let Some(text) = &options.prompt_init_text {
        options.prompt_init_ids = pretrained
            .tokenizer
            .encode_words(text)
            .context("--prompt-init-text")?;
        method = MethodConfig::from_options(&args.method.method, &options)?;
    }
    let readout = args.readout.unwrap_or(match pretrained.backbone {
        Backbone::Bert(..) | Backbone::M2Bert(..) => Readout::Mean,
        Backbone::Gpt2(..) => Readout::Last,
    });
    let head = HeadConfig {
        layers: method.method().head_layers(),
        outputs: task.num_outputs(),
        dropout: 0.1,
    };
    let run = RunConfig {
        model: args.model.clone(),
        task: args.task.spec(),
        method,
        train: train_config,
        readout,
        head,
        max_len: args.max_len,
        save_full: args.save_full || args.random_init,
        random_init: args.random_init,
        train_examples: args.train_examples,
        feature_cache: false,
        peft_adapter: args.peft_adapter.clone(),
    };
    let (model, tokenizer, report) = build(pretrained, &run, &train_device)?;
    let mut run = run;
    if !args.no_feature_cache
        && let Some(cut) = run.method.method().frozen_cut(&model)
    {
        let examples = task.split.train.len() + task.split.validation.len();
        let positions = match cut {
            FrozenCut::Features => 1,
            FrozenCut::BeforeLayer(_) => run.max_len,
        };
        let bytes = examples * positions * model.hidden_size() * 4;
        run.feature_cache = bytes <= FEATURE_CACHE_LIMIT;
        if !run.feature_cache {
            println!(
                "feature cache off: it would hold up to {:.1} GiB (limit {:.0} GiB)",
                bytes as f64 / f64::from(1 << 30),
                FEATURE_CACHE_LIMIT as f64 / f64::from(1 << 30)
            );
        }
    }
    prepare_run_dir(&args.out, &run, args.resume)?;
    println!(
        "{}: {} of {} parameters train ({:.3}%)",
        run.method.label(),
        report.trainable(),
        report.total(),
        report.trainable_percent()
    );
    let trainable = trainable_patterns(&report);
    let child_mask = match run.train.child_tuning {
        Some(ChildTuning::D { reserve }) => {
            let fisher = child_network_fisher(&args, &model, &tokenizer, &task, &train_device)?;
            let mask = fisher.top_share_mask(reserve)?;
            println!(
                "Child-Tuning D: the child network keeps {:.0} of {} backbone entries",
                mask.values
                    .values()
                    .map(|m| f64::from(m.clone().sum().into_scalar::<f32>()))
                    .sum::<f64>(),
                mask.num_elements()
            );
            Some(mask)
        }
        _ => None,
    };
    let trainer = Trainer {
        config: run.train.clone(),
        device: train_device.clone(),
        run_dir: args.out.clone(),
        saved: if run.save_full {
            vec!["*".into()]
        } else {
            trainable.clone()
        },
        trainable,
        progress: true,
        epoch_limit: None,
        child_mask,
    };
    let mut text_task = TextTask::new(tokenizer.clone(), task.kind.clone());
    if run.feature_cache
        && let Some(cut) = run.method.method().frozen_cut(&model)
    {
        text_task = text_task.with_feature_cache(cut);
    }
    let data = TaskData {
        task: &text_task,
        train: task.part(&task.split.train),
        validation: task.part(&task.split.validation),
    };
    let (model, summary) = trainer.fit(model, &data, args.resume)?;
    let mut model = model;
    if let MethodConfig::Prefix(prefix) = &run.method {
        // The test metrics below come from the folded prefixes.
        model.fold_prefix_encoder(&prefix.name)?;
    }
    if let Some(name) = run.method.adapter_name() {
        let dir = args.out.join(ADAPTER_DIR);
        save_adapter(&model, name, run.method.name(), &dir)?;
        println!("adapter `{name}` saved on its own in {}", dir.display());
    }

    let test = if task.split.test.is_empty() {
        None
    } else {
        Some(evaluate(
            &model.valid(),
            &tokenizer,
            &task.part(&task.split.test),
            &task.kind,
            device,
            run.train.eval_batch_size,
        )?)
    };
    let run_summary = RunSummary {
        method: run.method.label(),
        trainable_params: report.trainable(),
        total_params: report.total(),
        trainable_percent: report.trainable_percent(),
        best_epoch: summary.state.best_epoch,
        validation: summary.best_validation().cloned(),
        test: test.clone(),
        seconds_per_epoch: summary.seconds_per_epoch(),
        peak_rss_mib: summary.peak_rss_mib,
        device: choice.to_string(),
    };
    write_json(&args.out.join("summary.json"), &run_summary)?;
    if let Some(test) = &test {
        let (name, value) = test.primary();
        println!(
            "test {name}: {value:.4} ({} examples); trainable {:.3}%; {:.1} s/epoch; peak memory {}",
            task.split.test.len(),
            run_summary.trainable_percent,
            run_summary.seconds_per_epoch,
            run_summary
                .peak_rss_mib
                .map_or("unknown".into(), |m| format!("{m:.0} MiB"))
        );
    }
    println!("run written to {}", args.out.display());
    Ok(())
}

/// Child-Tuning D's Fisher information: `--fisher`, the run's own from an earlier start, or a
/// fresh estimate saved in the run directory.
fn child_network_fisher(
    args: &TrainArgs,
    model: &SequenceClassifier,
    tokenizer: &kiln_models::TextTokenizer,
    task: &LoadedTask,
    device: &Device,
) -> Result<PathTensors> {
    let own = args.out.join(FISHER_FILE);
    let saved = args
        .fisher
        .clone()
        .or_else(|| own.is_file().then(|| own.clone()));
    if let Some(path) = saved {
        println!("Child-Tuning D: Fisher information from {}", path.display());
        return PathTensors::load(&path, &device.clone().inner())
            .with_context(|| format!("--fisher {}", path.display()));
    }
    let fisher = estimate_fisher(
        model,
        tokenizer,
        &task.part(&task.split.train),
        &task.kind,
        device,
        args.batch_size,
        args.fisher_batches,
        true,
    )?;
    fisher.save(&own)?;
    println!(
        "Child-Tuning D: Fisher information saved to {}",
        own.display()
    );
    Ok(fisher)
}

/// The model directory's backbone and tokenizer, with its weights or at random initialisation.
fn load_model(dir: &Path, random_init: bool, device: &Device) -> Result<Pretrained> {
    let loaded = if random_init {
        Pretrained::random(dir, device)
    } else {
        Pretrained::load(dir, device)
    };
    loaded.with_context(|| format!("loading model from {}", dir.display()))
}

/// The model of `run` on `pretrained`'s backbone, with the method applied and the tokenizer
/// set to the run's length.
fn build(
    pretrained: Pretrained,
    run: &RunConfig,
    device: &Device,
) -> Result<(SequenceClassifier, kiln_models::TextTokenizer, ParamReport)> {
    let positions = pretrained.max_positions();
    let virtual_tokens = run.method.method().virtual_tokens();
    if run.max_len + virtual_tokens > positions {
        bail!(
            "--max-len {} plus {virtual_tokens} virtual tokens is more than the model's {positions} \
             positions",
            run.max_len
        );
    }
    let Pretrained {
        backbone,
        mut tokenizer,
        ..
    } = pretrained;
    tokenizer.configure(run.max_len, PaddingSide::Right)?;
    let mut classifier = SequenceClassifier::new(backbone, run.readout, run.head, device)?;
    if let MethodConfig::Fusion(fusion) = &run.method {
        for dir in &fusion.adapters {
            let (loaded, saved) = load_adapter(classifier, dir)
                .with_context(|| format!("loading the adapter in {}", dir.display()))?;
            println!(
                "loaded adapter `{}` ({}) from {}",
                saved.name,
                saved.method,
                dir.display()
            );
            classifier = loaded;
        }
    }
    let (model, report) = run.method.apply(classifier)?;
    let Some(adapter) = &run.peft_adapter else {
        return Ok((model, tokenizer, report));
    };
    let (model, report) = import_peft(model, adapter)
        .with_context(|| format!("--peft-adapter {}", adapter.display()))?;
    println!("started from the peft adapter in {}", adapter.display());
    Ok((model, tokenizer, report))
}

/// The method options a peft adapter's config gives (rank, alpha and dropout; prompt length);
/// the method must be the adapter's and take its options from it alone.
fn peft_method_options(method: &str, given: &MethodOptions, dir: &Path) -> Result<MethodOptions> {
    if *given != MethodOptions::default() {
        bail!("--peft-adapter: the method's options come from the adapter's config; give none");
    }
    let (config, path) = read_peft_config::<serde_json::Value>(dir)?;
    match (method, config["peft_type"].as_str()) {
        ("lora", Some("LORA")) => {
            let lora = read_lora_config(dir)?;
            let alpha = if lora.use_rslora {
                lora.lora_alpha * (lora.r as f64).sqrt()
            } else {
                lora.lora_alpha
            };
            Ok(MethodOptions {
                rank: Some(lora.r),
                alpha: Some(alpha),
                lora_dropout: Some(lora.lora_dropout),
                ..MethodOptions::default()
            })
        }
        ("prompt", Some("PROMPT_TUNING")) => Ok(MethodOptions {
            prompt_len: config["num_virtual_tokens"].as_u64().map(|n| n as usize),
            prompt_at_start: Some(true),
            ..MethodOptions::default()
        }),
        ("p-tuning-v2", Some("PREFIX_TUNING")) => Ok(MethodOptions {
            prefix_len: config["num_virtual_tokens"].as_u64().map(|n| n as usize),
            prefix_positions: Some(true),
            adapter_name: Some(PEFT_PREFIX_ADAPTER.into()),
            ..MethodOptions::default()
        }),
        (method, peft_type) => bail!(
            "--peft-adapter: {} holds a {} adapter; kiln starts `--method lora` from LORA, \
             `--method prompt` from PROMPT_TUNING and `--method p-tuning-v2` from \
             PREFIX_TUNING (got --method {method})",
            path.display(),
            peft_type.unwrap_or("unknown")
        ),
    }
}

fn trainable_patterns(report: &ParamReport) -> Vec<String> {
    report
        .trainable_paths()
        .into_iter()
        .map(str::to_string)
        .collect()
}

fn report_task(task: &LoadedTask) {
    println!(
        "task: {} examples ({} train, {} validation, {} test), {} outputs",
        task.examples.len(),
        task.split.train.len(),
        task.split.validation.len(),
        task.split.test.len(),
        task.num_outputs()
    );
    if !task.skipped.is_empty() {
        println!("skipped {} bad rows:", task.skipped.len());
        for row in task.skipped.iter().take(10) {
            println!("  {}: {}", row.location, row.reason);
        }
    }
}

/// A run directory is never overwritten: a new run needs an empty one, a resumed run the same
/// settings.
fn prepare_run_dir(dir: &Path, run: &RunConfig, resume: bool) -> Result<()> {
    let path = dir.join("run.json");
    if path.is_file() {
        if !resume {
            bail!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                dir.display()
            );
        }
        let recorded: RunConfig = read_json(&path)?;
        if &recorded != run {
            bail!(
                "{} holds a run with other settings; resume it with the same options (see {})",
                dir.display(),
                path.display()
            );
        }
        return Ok(());
    }
    write_json(&path, run)?;
    Ok(())
}

#[derive(Args)]
pub struct EvalArgs {
    /// Run directory written by `kiln train`.
    #[arg(long)]
    run: PathBuf,
    /// Which part of the run's split: validation or test.
    #[arg(long, default_value = "validation")]
    split: String,
    /// Print the metrics as JSON.
    #[arg(long)]
    json: bool,
    /// Run without adapters in this many of the lowest layers (AdapterDrop at inference).
    #[arg(long)]
    adapter_drop: Option<usize>,
}

/// The model of the run in `dir` (settings `run`) with its best weights, and its tokenizer.
pub fn load_run_model(
    dir: &Path,
    run: &RunConfig,
    device: &Device,
) -> Result<(SequenceClassifier, kiln_models::TextTokenizer)> {
    let pretrained = load_model(&run.model, run.random_init, device)?;
    let (model, tokenizer, _) = build(pretrained, run, device)?;
    let weights = dir.join(BEST_DIR).join(TRAINED_FILE);
    let (model, _) = kiln_train::load_params(model, &weights)?;
    Ok((model, tokenizer))
}

pub fn eval(args: EvalArgs, device: &Device) -> Result<()> {
    let run: RunConfig = read_json(&args.run.join("run.json"))?;
    let task = run
        .task
        .load(run.train.seed)
        .with_context(|| format!("reading task {}", run.task.path.display()))?;
    let indices = match args.split.as_str() {
        "validation" => &task.split.validation,
        "test" => &task.split.test,
        other => bail!("--split {other}: expected validation or test"),
    };
    let (mut model, tokenizer) = load_run_model(&args.run, &run, device)?;
    if let Some(layers) = args.adapter_drop {
        if model.adapters.is_empty() {
            bail!("--adapter-drop: the run's model holds no adapters");
        }
        if layers > model.num_layers() {
            bail!(
                "--adapter-drop {layers}: the model has {} layers",
                model.num_layers()
            );
        }
        let training_max = model.adapter_drop_max;
        model.set_adapter_drop(training_max, layers);
    }
    let started = std::time::Instant::now();
    let metrics = evaluate(
        &model,
        &tokenizer,
        &task.part(indices),
        &task.kind,
        device,
        run.train.eval_batch_size,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let (name, value) = metrics.primary();
    if args.json {
        println!("{}", serde_json::to_string(&metrics)?);
    } else {
        println!(
            "{} {name}: {value:.6} (loss {:.6}); {} examples in {seconds:.2} s",
            args.split,
            metrics.loss,
            indices.len()
        );
    }
    if args.split == "validation" && args.adapter_drop.is_none() {
        let best: EpochRecord = read_json(&args.run.join("best.json"))?;
        let recorded = best.validation.primary().1;
        if !args.json {
            println!("recorded at epoch {}: {recorded:.6}", best.epoch);
        }
        // JSON text may move a float by its last bit; anything more is a real difference.
        if (recorded - value).abs() > 1e-12 * recorded.abs().max(1.0) {
            bail!("the reloaded model gives {value}, the run recorded {recorded}");
        }
    }
    Ok(())
}

pub fn methods() {
    let width = METHODS.iter().map(|m| m.name.len()).max().unwrap_or(0);
    for method in METHODS {
        let options = if method.options.is_empty() {
            String::new()
        } else {
            format!("  [{}]", method.options)
        };
        println!("{:width$}  {}{options}", method.name, method.summary);
    }
}
