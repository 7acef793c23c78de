//! Causal language modelling on GPT-2: documents become fixed-length blocks of token ids (each
//! document ends with the end-of-text token, as GPT-2 was trained and as transformers'
//! `run_clm.py` groups texts), the loss is next-token cross-entropy, and evaluation reports it
//! with its perplexity.
//!
//! Two models learn it: the bare [`Gpt2`] (`kiln pretrain`, from random initialisation) and a
//! GPT-2 [`SequenceClassifier`] with any method in its slots ([`train`], `kiln train --objective
//! causal-lm`): full fine-tuning, the LoRA family, IA3, BitFit, the adapters, prompt and prefix
//! tuning train inside the backbone, and the next token is read through its tied embedding, as
//! `GPT2LMHeadModel` does. The classifier's task head is not on this path: it neither trains
//! nor counts, and methods that train only the head or a side network are refused.

use std::path::Path;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::tensor::{Device, Int, Tensor, TensorData};

use kiln_data::{Corpus, ReadOptions, TaskSpec, read_corpus};
use kiln_models::{
    Gpt2, Gpt2Input, HeadConfig, OptimizerGroup, Readout, SequenceClassifier, TextTokenizer,
};
use kiln_tuning::{MethodConfig, ParamReport, set_trainable};

use crate::error::{Context, Result, TrainError};
use crate::fingerprint::Fingerprints;
use crate::generate::{GenerateSettings, Generation, generate};
use crate::metrics::Metrics;
use crate::run::{
    EvalData, Objective, RUN_FILE, RunConfig, RunEvaluation, RunSettings, RunSummary, SUMMARY_FILE,
    Split, build, fitted_max_len, load_pretrained, lock_run_dir, prepare_run_dir, rebuild_model,
};
use crate::schedule::layer_decayed;
use crate::task_model::{Task, TaskModel};
use crate::trainer::{EpochRecord, TaskData, Trainer, read_json, write_json};

/// Next-token prediction over token blocks: the task of a causal language model. Its examples
/// are blocks of token ids, all of one length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LanguageModeling;

impl Task for LanguageModeling {
    type Example = Vec<u32>;
}

/// Concatenates the documents (each followed by `eos`) and cuts them into blocks of `block`
/// tokens; the ragged end is dropped.
pub fn token_blocks(documents: &[Vec<u32>], eos: u32, block: usize) -> Vec<Vec<u32>> {
    let stream: Vec<u32> = documents
        .iter()
        .flat_map(|d| d.iter().copied().chain(std::iter::once(eos)))
        .collect();
    stream
        .chunks_exact(block.max(2))
        .map(<[u32]>::to_vec)
        .collect()
}

/// A corpus as training, validation and test blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct LanguageModelData {
    /// Training blocks.
    pub train: Vec<Vec<u32>>,
    /// Validation blocks: the spec's validation corpus, else `held_out` of the documents.
    pub validation: Vec<Vec<u32>>,
    /// Test blocks: the spec's test corpus; empty without one.
    pub test: Vec<Vec<u32>>,
    /// Documents read for each of the three.
    pub documents: [usize; 3],
}

impl LanguageModelData {
    /// Reads `spec`'s corpus (a directory of `.txt` documents, or a file with one document per
    /// line) and its validation and test corpora, tokenises them with `tokenizer` (no special
    /// tokens, no truncation) and cuts blocks of `block` tokens. Without a validation corpus,
    /// `held_out` of the documents (seeded) are held out for it.
    pub fn read(
        spec: &TaskSpec,
        tokenizer: &TextTokenizer,
        block: usize,
        held_out: f64,
        seed: u64,
    ) -> Result<Self> {
        let reader = CorpusReader::new(spec, tokenizer, block)?;
        let corpus = reader.read(&spec.path)?;
        let validation_corpus = spec
            .validation
            .as_deref()
            .map(|p| reader.read(p))
            .transpose()?;
        let test_corpus = spec.test.as_deref().map(|p| reader.read(p)).transpose()?;
        let (train_docs, held_docs): (Vec<&str>, Vec<&str>) = match &validation_corpus {
            Some(validation) => (documents(&corpus), documents(validation)),
            None => {
                if !(held_out > 0.0 && held_out < 1.0) {
                    return Err(TrainError::Invalid(format!(
                        "held-out share {held_out}: must be in (0, 1) without a validation corpus"
                    )));
                }
                if corpus.documents.len() < 2 {
                    return Err(TrainError::Invalid(format!(
                        "{}: {} document(s); validation holds documents out, so it needs at \
                         least 2 (or give a validation corpus)",
                        spec.path.display(),
                        corpus.documents.len()
                    )));
                }
                corpus.split(held_out, seed)
            }
        };
        let test_docs = test_corpus.as_ref().map(documents).unwrap_or_default();
        let validation_path = spec.validation.as_deref().unwrap_or(&spec.path);
        let data = Self {
            train: reader.blocks(&train_docs, "training", &spec.path)?,
            validation: reader.blocks(&held_docs, "validation", validation_path)?,
            test: match &spec.test {
                Some(path) => reader.blocks(&test_docs, "test", path)?,
                None => Vec::new(),
            },
            documents: [train_docs.len(), held_docs.len(), test_docs.len()],
        };
        if data.train.is_empty() || data.validation.is_empty() {
            return Err(TrainError::Invalid(format!(
                "{}: no text to train or validate on",
                spec.path.display()
            )));
        }
        Ok(data)
    }
}

/// Every document of `spec`'s corpus (its validation and test corpora aside) as blocks of
/// `block` tokens: what `kiln eval --task CORPUS` scores a language model on.
pub fn corpus_blocks(
    spec: &TaskSpec,
    tokenizer: &TextTokenizer,
    block: usize,
) -> Result<Vec<Vec<u32>>> {
    let reader = CorpusReader::new(spec, tokenizer, block)?;
    let corpus = reader.read(&spec.path)?;
    let blocks = reader.blocks(&documents(&corpus), "corpus", &spec.path)?;
    if blocks.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no text to score",
            spec.path.display()
        )));
    }
    Ok(blocks)
}

fn documents(corpus: &Corpus) -> Vec<&str> {
    corpus.documents.iter().map(String::as_str).collect()
}

/// Reads corpora with a task's options and cuts them into blocks.
struct CorpusReader<'a> {
    options: ReadOptions,
    tokenizer: &'a TextTokenizer,
    eos: u32,
    block: usize,
}

impl<'a> CorpusReader<'a> {
    fn new(spec: &TaskSpec, tokenizer: &'a TextTokenizer, block: usize) -> Result<Self> {
        if block < 2 {
            return Err(TrainError::Invalid(format!(
                "blocks of {block} tokens: a block needs at least 2 (one to predict from)"
            )));
        }
        let eos = tokenizer.token_id("<|endoftext|>").ok_or_else(|| {
            TrainError::Invalid(
                "the model's tokenizer has no <|endoftext|> token to end documents with".into(),
            )
        })?;
        Ok(Self {
            options: spec.read_options()?,
            tokenizer,
            eos,
            block,
        })
    }

    fn read(&self, path: &Path) -> Result<Corpus> {
        let corpus =
            read_corpus(path, self.options).context(|| format!("reading {}", path.display()))?;
        for skipped in &corpus.skipped {
            eprintln!("skipped {}: {}", skipped.location, skipped.reason);
        }
        Ok(corpus)
    }

    /// `docs` as blocks; an error naming `path` where they hold text but not one block.
    fn blocks(&self, docs: &[&str], what: &str, path: &Path) -> Result<Vec<Vec<u32>>> {
        let encoded = docs
            .iter()
            .map(|d| self.tokenizer.encode_words(d).map_err(TrainError::from))
            .collect::<Result<Vec<_>>>()?;
        let blocks = token_blocks(&encoded, self.eos, self.block);
        if blocks.is_empty() && !docs.is_empty() {
            return Err(TrainError::Invalid(format!(
                "{}: the {what} text has fewer than {} tokens, not one block (lower --max-len \
                 or give more text)",
                path.display(),
                self.block
            )));
        }
        Ok(blocks)
    }
}

/// The next-token logits of `blocks` and the ids they predict. Without virtual tokens a block of
/// `len` tokens makes `len - 1` predictions; behind a prompt's virtual tokens the last of them
/// predicts the block's first token too, as peft's prompt tuning for causal LMs counts it (its
/// labels are the virtual tokens' ignored ones followed by the block).
fn next_token_logits(
    model: &Gpt2,
    blocks: &[&Vec<u32>],
    device: &Device,
) -> Result<(Tensor<2>, Tensor<1, Int>)> {
    let (batch, len) = (blocks.len(), blocks.first().map_or(0, |b| b.len()));
    if len < 2 || blocks.iter().any(|b| b.len() != len) {
        return Err(TrainError::Invalid(
            "language-model blocks must share one length of at least 2".into(),
        ));
    }
    let virtual_tokens = virtual_tokens_before(model)?;
    let ids: Vec<i64> = blocks
        .iter()
        .flat_map(|b| b.iter().map(|&t| i64::from(t)))
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, len]), device);
    let hidden = model.forward(Gpt2Input {
        input_ids: ids.clone(),
        attention_mask: ids.ones_like(),
    });
    let (states, targets) = match virtual_tokens {
        0 => (hidden.narrow(1, 0, len - 1), ids.narrow(1, 1, len - 1)),
        n => (hidden.narrow(1, n - 1, len), ids),
    };
    let predictions = targets.dims()[1];
    let logits = model.lm_logits(states);
    let vocab = logits.dims()[2];
    Ok((
        logits.reshape([batch * predictions, vocab]),
        targets.reshape([batch * predictions]),
    ))
}

/// How many virtual tokens a prompt method puts before the text; an error where some follow
/// it, where a causal model would never read them.
fn virtual_tokens_before(model: &Gpt2) -> Result<usize> {
    let Some(prompt) = &model.prompt else {
        return Ok(0);
    };
    let template = prompt.template;
    if template.before < template.len() {
        return Err(TrainError::Invalid(format!(
            "{} of the prompt's virtual tokens follow the text, where a causal language model \
             never reads them; put them all before it (p-tuning: --template N,0)",
            template.len() - template.before
        )));
    }
    Ok(template.before)
}

fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>, device: &Device) -> Tensor<1> {
    CrossEntropyLossConfig::new()
        .init(device)
        .forward(logits, targets)
}

/// Mean next-token loss of `model` over `blocks`, `batch_size` at a time.
fn evaluate_blocks(
    model: &Gpt2,
    blocks: &[&Vec<u32>],
    device: &Device,
    batch_size: usize,
) -> Result<Metrics> {
    let (mut loss_sum, mut count) = (0.0, 0usize);
    for chunk in blocks.chunks(batch_size.max(1)) {
        let (logits, targets) = next_token_logits(model, chunk, device)?;
        let n = targets.dims()[0];
        let loss = cross_entropy(logits, targets, device);
        loss_sum += f64::from(loss.into_scalar::<f32>()) * n as f64;
        count += n;
    }
    Ok(Metrics::language_model(loss_sum / count.max(1) as f64))
}

impl TaskModel<LanguageModeling> for Gpt2 {
    fn batch_loss(
        &self,
        _task: &LanguageModeling,
        blocks: &[&Vec<u32>],
        device: &Device,
    ) -> Result<(Tensor<1>, usize)> {
        let (logits, targets) = next_token_logits(self, blocks, device)?;
        let tokens = targets.dims()[0];
        Ok((cross_entropy(logits, targets, device), tokens))
    }

    fn evaluate(
        &self,
        _task: &LanguageModeling,
        blocks: &[&Vec<u32>],
        device: &Device,
        batch_size: usize,
    ) -> Result<Metrics> {
        evaluate_blocks(self, blocks, device, batch_size)
    }
}

/// The GPT-2 of a classifier, or an error naming the backbone it holds instead.
fn gpt2_of(model: &SequenceClassifier) -> Result<&Gpt2> {
    model.gpt2.as_ref().ok_or_else(|| {
        TrainError::Invalid(format!(
            "language modelling needs a GPT-2; this model's backbone is {}",
            model.backbone_name()
        ))
    })
}

impl TaskModel<LanguageModeling> for SequenceClassifier {
    fn batch_loss(
        &self,
        _task: &LanguageModeling,
        blocks: &[&Vec<u32>],
        device: &Device,
    ) -> Result<(Tensor<1>, usize)> {
        let (logits, targets) = next_token_logits(gpt2_of(self)?, blocks, device)?;
        let tokens = targets.dims()[0];
        let loss = cross_entropy(logits, targets, device);
        let regularizers = [self.fusion_regularization(), self.adalora_regularization()];
        let loss = regularizers.into_iter().flatten().fold(loss, |l, r| l + r);
        Ok((loss, tokens))
    }

    fn evaluate(
        &self,
        _task: &LanguageModeling,
        blocks: &[&Vec<u32>],
        device: &Device,
        batch_size: usize,
    ) -> Result<Metrics> {
        evaluate_blocks(gpt2_of(self)?, blocks, device, batch_size)
    }

    fn begin_train_step(&mut self, progress: f64, draw: u64) {
        SequenceClassifier::begin_train_step(self, progress, draw);
    }

    fn observe_gradients(&mut self, grads: &GradientsParams) {
        self.keep_adalora_gradients(grads);
    }

    fn end_train_step(&mut self, step: usize, total_steps: usize) {
        self.allocate_ranks(step, total_steps);
    }

    fn layer_rates(&self, lr: f64, decay: f64) -> Option<ModuleLearningRate> {
        Some(layer_decayed(self, lr, decay))
    }

    fn optimizer_groups(&self) -> Vec<OptimizerGroup> {
        self.backbone().optimizer_groups()
    }
}

/// The classifier's parts a language model never reads: its task head (the next token comes
/// from the tied embedding) and side-tuning's network (it blends read-out features).
const NOT_ON_THE_LM_PATH: [&str; 2] = ["head.", "side."];

fn on_lm_path(path: &str) -> bool {
    !NOT_ON_THE_LM_PATH.iter().any(|p| path.starts_with(p))
}

/// Sets `model`'s trainable set for language modelling: the method's patterns inside the
/// backbone (`*` becomes `gpt2.*`), none in the head or a side network. The report leaves those
/// out too. A method that trains nothing else is refused.
pub fn language_model_trainable(
    model: SequenceClassifier,
    method: &MethodConfig,
) -> Result<(SequenceClassifier, ParamReport)> {
    let backbone = model.backbone_name();
    let patterns: Vec<String> = method
        .method()
        .trainable_patterns(&model)
        .into_iter()
        .map(|p| if p == "*" { format!("{backbone}.*") } else { p })
        .filter(|p| on_lm_path(p))
        .collect();
    if patterns.is_empty() {
        return Err(TrainError::Invalid(format!(
            "--method {}: it trains only the task head or a side network, which a language \
             model does not read; choose a method that trains inside the backbone (full, lora, \
             bitfit, an adapter, prompt, prefix, ...)",
            method.name()
        )));
    }
    if let Some(gpt2) = &model.gpt2 {
        virtual_tokens_before(gpt2)
            .map_err(|e| TrainError::Invalid(format!("--method {}: {e}", method.name())))?;
    }
    let (model, mut report) = set_trainable(model, &patterns);
    report.entries.retain(|e| on_lm_path(&e.path));
    Ok((model, report))
}

/// A fine-tuned causal language model: its settings and summary, and the model as it was at the
/// best evaluation (the method's `after_fit` applied), ready to generate.
pub struct LanguageModelRun {
    /// What `run.json` records.
    pub config: RunConfig,
    /// What `summary.json` records (loss and perplexity; `validation_before` is the model's
    /// before training).
    pub summary: RunSummary,
    /// The model, without autodiff.
    pub model: SequenceClassifier,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// The device the model is on.
    pub device: Device,
}

impl LanguageModelRun {
    /// Continues `prompt` with the fine-tuned model.
    pub fn generate(&self, prompt: &str, settings: &GenerateSettings) -> Result<Generation> {
        generate(
            gpt2_of(&self.model)?,
            &self.tokenizer,
            prompt,
            settings,
            &self.device,
        )
    }
}

/// The share of the documents held out for validation when the task has no validation corpus.
pub const HELD_OUT: f64 = 0.1;

/// Fine-tunes a GPT-2 as a causal language model (`settings.objective` must be
/// [`Objective::CausalLm`]) on `settings.task`'s corpus in blocks of `settings.max_len`
/// tokens, with `settings.method`, into run directory `out`; with `resume`, continues the run
/// there. The summary holds the validation loss and perplexity before and after, and the
/// test corpus's when the task names one.
pub fn train(settings: &RunSettings, out: &Path, resume: bool) -> Result<LanguageModelRun> {
    if settings.objective != Objective::CausalLm {
        return Err(TrainError::Invalid(
            "causal_lm::train trains --objective causal-lm runs; run::train the others".into(),
        ));
    }
    let settings = &crate::run::absolute(settings);
    let say = settings.progress;
    let device = &settings.device.device()?;
    settings.train.check()?;
    refuse_text_task_options(settings)?;
    let seed = settings.train.seed;
    let train_device = device.clone().autodiff();
    train_device.seed(seed);
    let pretrained = load_pretrained(&settings.model, settings.random_init, &train_device)?;
    if !matches!(pretrained.backbone, kiln_models::Backbone::Gpt2(..)) {
        return Err(TrainError::Invalid(format!(
            "--objective causal-lm: {} is not a GPT-2 (a causal language model)",
            settings.model.display()
        )));
    }
    let fingerprints = Fingerprints::of(&pretrained.dir, &settings.task)?;
    let mut method = settings.method.clone();
    method.method_mut().tokenize(&pretrained.tokenizer)?;
    let max_len = fitted_max_len(settings.max_len, &method, pretrained.max_positions(), say)?;
    let data = LanguageModelData::read(
        &settings.task,
        &pretrained.tokenizer,
        max_len,
        HELD_OUT,
        seed,
    )?;
    if say {
        println!(
            "corpus: {} training, {} validation and {} test documents -> {} / {} / {} blocks of \
             {max_len} tokens",
            data.documents[0],
            data.documents[1],
            data.documents[2],
            data.train.len(),
            data.validation.len(),
            data.test.len()
        );
    }
    let run = RunConfig {
        model: settings.model.clone(),
        task: settings.task.clone(),
        method,
        train: settings.train.clone(),
        // The head is not on the language model's path; its shape only has to be valid.
        readout: Readout::Last,
        head: HeadConfig {
            layers: 1,
            outputs: 1,
            dropout: 0.0,
        },
        max_len,
        max_len_requested: (max_len != settings.max_len).then_some(settings.max_len),
        save_full: settings.save_full || settings.random_init,
        random_init: settings.random_init,
        train_examples: None,
        feature_cache: false,
        peft_adapter: settings.peft_adapter.clone(),
        labels: None,
        multi_label: false,
        threshold: None,
        objective: Objective::CausalLm,
        fingerprints: Some(fingerprints),
    };
    let (model, tokenizer, _) = build(pretrained, &run, say, &train_device)?;
    let (model, report) = language_model_trainable(model, &run.method)?;
    let _writer = lock_run_dir(out)?;
    prepare_run_dir(out, &run, resume)?;
    if say {
        println!(
            "{}: {} of {} parameters train ({:.3}%)",
            run.method.label(),
            report.trainable(),
            report.total(),
            report.trainable_percent()
        );
    }
    let validation: Vec<&Vec<u32>> = data.validation.iter().collect();
    let batch = run.train.eval_batch_size;
    let before = TaskModel::<LanguageModeling>::evaluate(
        &model.valid(),
        &LanguageModeling,
        &validation,
        device,
        batch,
    )?;
    if say {
        println!(
            "validation perplexity before training {:.2}",
            before.perplexity()
        );
    }
    let trainable: Vec<String> = report
        .trainable_paths()
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut trainer = Trainer::new(
        run.train.clone(),
        train_device,
        out.to_path_buf(),
        trainable.clone(),
    );
    trainer.progress = say;
    if run.save_full {
        trainer.saved = vec!["*".into()];
    }
    let task_data = TaskData {
        task: &LanguageModeling,
        train: data.train.iter().collect(),
        validation: validation.clone(),
    };
    let (mut model, summary) = trainer.fit(model, &task_data, resume)?;
    run.method.method().after_fit(&mut model)?;
    let model = model.valid();
    let test = if data.test.is_empty() {
        None
    } else {
        let test: Vec<&Vec<u32>> = data.test.iter().collect();
        Some(TaskModel::<LanguageModeling>::evaluate(
            &model,
            &LanguageModeling,
            &test,
            device,
            batch,
        )?)
    };
    let run_summary = RunSummary {
        method: run.method.label(),
        trainable_params: report.trainable(),
        total_params: report.total(),
        trainable_percent: report.trainable_percent(),
        best_epoch: summary.state.best_epoch,
        validation: summary.best_validation().cloned(),
        test,
        seconds_per_epoch: summary.seconds_per_epoch(),
        peak_rss_mib: summary.peak_rss_mib,
        device: settings.device.to_string(),
        threshold: None,
        validation_before: Some(before.clone()),
    };
    write_json(&out.join(SUMMARY_FILE), &run_summary)?;
    if say {
        let after = run_summary
            .validation
            .as_ref()
            .map_or(f64::NAN, Metrics::perplexity);
        println!(
            "validation perplexity {:.2} -> {after:.2}{}; trainable {:.3}%; {:.1} s/epoch",
            before.perplexity(),
            run_summary
                .test
                .as_ref()
                .map(|t| format!("; test perplexity {:.2}", t.perplexity()))
                .unwrap_or_default(),
            run_summary.trainable_percent,
            run_summary.seconds_per_epoch
        );
        println!("run written to {}", out.display());
    }
    Ok(LanguageModelRun {
        config: run,
        summary: run_summary,
        model,
        tokenizer,
        device: device.clone(),
    })
}

/// Refuses, by flag, what only a text-classification run reads.
fn refuse_text_task_options(settings: &RunSettings) -> Result<()> {
    let task = &settings.task;
    let refused = [
        (task.regression, "--regression"),
        (task.multi_label, "--multi-label"),
        (task.glue.is_some(), "--glue"),
        (task.text_column.is_some(), "--text-column"),
        (task.pair_column.is_some(), "--pair-column"),
        (task.label_column.is_some(), "--label-column"),
        (settings.readout.is_some(), "--readout"),
        (settings.threshold.is_some(), "--threshold"),
        (settings.train_examples.is_some(), "--train-examples"),
        (
            matches!(
                settings.train.child_tuning,
                Some(crate::ChildTuning::D { .. })
            ),
            "--child-tuning d",
        ),
    ];
    match refused.iter().find(|(given, _)| *given) {
        Some((_, flag)) => Err(TrainError::Invalid(format!(
            "{flag}: not for --objective causal-lm, whose task is a plain-text corpus (a \
             directory of .txt documents or a file of lines)"
        ))),
        None => Ok(()),
    }
}

/// The fine-tuned language model in run directory `dir`, with its best weights and the method's
/// `after_fit` applied, on `device`. A base model whose files changed since the run trained is
/// refused unless `allow_changed_inputs`.
pub fn load(dir: &Path, device: &Device, allow_changed_inputs: bool) -> Result<LanguageModelRun> {
    let config: RunConfig = read_json(&dir.join(RUN_FILE))?;
    if config.objective != Objective::CausalLm {
        return Err(TrainError::Invalid(format!(
            "{}: a text-classification run, not a language model (`kiln predict --run` reads it)",
            dir.display()
        )));
    }
    let (mut model, tokenizer, _) =
        rebuild_model(dir, &config, device, false, allow_changed_inputs)?;
    config.method.method().after_fit(&mut model)?;
    let summary_path = dir.join(SUMMARY_FILE);
    let summary: RunSummary = read_json(&summary_path)
        .context(|| format!("{}: the run has not finished", summary_path.display()))?;
    Ok(LanguageModelRun {
        config,
        summary,
        model,
        tokenizer,
        device: device.clone(),
    })
}

/// Scores the language-model run in `dir` (its `run.json` read as `config`): next-token loss
/// and perplexity on its validation or test blocks (cut again from its corpus as it trained),
/// or on every document of another corpus. On the validation split it also reads what the run
/// recorded, for [`RunEvaluation::check_reproduced`].
pub(crate) fn evaluate_run(
    dir: &Path,
    config: RunConfig,
    data: &EvalData,
    device: &Device,
    allow_changed_inputs: bool,
) -> Result<RunEvaluation> {
    let split = matches!(data, EvalData::Split(_));
    let (model, tokenizer, _) = rebuild_model(dir, &config, device, split, allow_changed_inputs)?;
    let blocks = match data {
        EvalData::Split(part) => {
            let seed = config.train.seed;
            let split =
                LanguageModelData::read(&config.task, &tokenizer, config.max_len, HELD_OUT, seed)?;
            match part {
                Split::Validation => split.validation,
                Split::Test if split.test.is_empty() => {
                    return Err(TrainError::Invalid(
                        "--split test: the run has no test corpus (it trained without \
                         --test-task); score a corpus with --task"
                            .into(),
                    ));
                }
                Split::Test => split.test,
            }
        }
        EvalData::File(file) => {
            let spec = TaskSpec {
                encoding: file.encoding.clone().or(config.task.encoding.clone()),
                skip_bad_rows: file.skip_bad_rows || config.task.skip_bad_rows,
                ..TaskSpec::new(&file.path)
            };
            corpus_blocks(&spec, &tokenizer, config.max_len)?
        }
    };
    let blocks: Vec<&Vec<u32>> = blocks.iter().collect();
    let started = std::time::Instant::now();
    let metrics = TaskModel::<LanguageModeling>::evaluate(
        &model,
        &LanguageModeling,
        &blocks,
        device,
        config.train.eval_batch_size,
    )?;
    let recorded = if *data == EvalData::Split(Split::Validation) {
        let best: EpochRecord = read_json(&dir.join("best.json"))?;
        Some((best.epoch, best.validation))
    } else {
        None
    };
    Ok(RunEvaluation {
        metrics,
        examples: blocks.len(),
        seconds: started.elapsed().as_secs_f64(),
        recorded,
    })
}
