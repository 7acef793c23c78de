//! In-context learning, the zero-training baseline fine-tuning is measured against (Brown et
//! al. 2020, "Language Models are Few-Shot Learners"): a causal LM reads `k` labelled
//! demonstrations drawn from the training split and the query, all written with one template,
//! and the prediction is the label word the model gives the highest log-probability after the
//! query. Nothing trains.
//!
//! - Template: a string with `{text}` and `{label}`, e.g. `"Text: {text}\nTopic: {label}\n\n"`.
//!   A demonstration is the template filled in; the query is the template cut before `{label}`.
//! - Texts are cut to their first `text_words` words so that `k + 1` of them fit the model's
//!   positions; a context that still does not fit loses its oldest tokens.
//! - A label's score is the sum of the log-probabilities of its word's tokens (the word with a
//!   leading space, encoded apart from the context as lm-eval-harness does), given the context.
//! - Demonstrations are drawn per query from the seed and the query's index, never the query
//!   itself; the same seed gives the same prompts.
//! - Contextual calibration (Zhao et al. 2021, "Calibrate Before Use", optional): each label's
//!   score minus its score after the same demonstrations and the content-free text `N/A`, i.e.
//!   label probabilities divided by their content-free ones, which removes a weak model's
//!   standing preference for some label words.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use kiln_data::{SplitMix64, TaskKind, TaskSpec, TextExample};
use kiln_models::{Backbone, DeviceChoice, Gpt2, Gpt2Input, Pretrained, TextTokenizer};
use serde::{Deserialize, Serialize};

use crate::error::{Context, Result, TrainError};
use crate::memory::peak_rss_mib;
use crate::metrics::Metrics;
use crate::run::RunSummary;
use crate::trainer::write_json;

/// How prompts are written.
#[derive(Debug, Clone, PartialEq)]
pub struct IclConfig {
    /// Demonstrations before each query.
    pub shots: usize,
    /// Prompt template with `{text}` and `{label}`.
    pub template: String,
    /// The word each class is written as, in class order.
    pub label_words: Vec<String>,
    /// Words kept of each text.
    pub text_words: usize,
    /// Seeds the choice of demonstrations.
    pub seed: u64,
    /// Contextual calibration with the content-free text [`CONTENT_FREE`].
    pub calibrate: bool,
}

/// The default prompt template.
pub const DEFAULT_TEMPLATE: &str = "Text: {text}\nLabel: {label}\n\n";

/// The content-free query contextual calibration scores the label words after.
pub const CONTENT_FREE: &str = "N/A";

impl IclConfig {
    /// Refuses a template without its two slots, or label words that do not fit the task.
    pub fn check(&self, classes: usize) -> Result<()> {
        let label_at = self.template.find("{label}");
        match (self.template.find("{text}"), label_at) {
            (Some(text), Some(label)) if text < label => {}
            _ => {
                return Err(TrainError::Invalid(format!(
                    "--template {:?} needs `{{text}}` and then `{{label}}`",
                    self.template
                )));
            }
        }
        if self.label_words.len() != classes {
            return Err(TrainError::Invalid(format!(
                "--label-words gives {} words for {classes} classes",
                self.label_words.len()
            )));
        }
        Ok(())
    }

    fn cut(&self, text: &str) -> String {
        text.split_whitespace()
            .take(self.text_words)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// One demonstration: the template with text and label word filled in.
    pub fn demonstration(&self, example: &TextExample) -> String {
        let label = &self.label_words[example.target.class_index()];
        self.template
            .replace("{text}", &self.cut(&example.text))
            .replace("{label}", label)
    }

    /// The prompt for `query` after `demos`: the demonstrations, then the template up to (not
    /// including) the label slot, trailing spaces dropped (the label word brings its own).
    pub fn prompt(&self, demos: &[&TextExample], query: &TextExample) -> String {
        self.prompt_for_text(demos, &query.text)
    }

    /// [`Self::prompt`] for a query given as its text.
    pub fn prompt_for_text(&self, demos: &[&TextExample], text: &str) -> String {
        let mut prompt: String = demos.iter().map(|d| self.demonstration(d)).collect();
        let filled = self.template.replace("{text}", &self.cut(text));
        let head = &filled[..filled.find("{label}").unwrap_or(filled.len())];
        prompt.push_str(head.trim_end_matches(' '));
        prompt
    }

    /// `shots` distinct training examples for the query at `query_index`, never `query` itself.
    pub fn demonstrations<'a>(
        &self,
        train: &[&'a TextExample],
        query: &TextExample,
        query_index: usize,
    ) -> Vec<&'a TextExample> {
        let mut order: Vec<usize> = (0..train.len()).collect();
        SplitMix64::new(self.seed ^ (query_index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .shuffle(&mut order);
        order
            .into_iter()
            .map(|i| train[i])
            .filter(|e| !std::ptr::eq(*e, query))
            .take(self.shots)
            .collect()
    }
}

/// The summed log-probability of each continuation's tokens after `context` (oldest context
/// tokens dropped where context and continuation exceed `positions`).
pub fn continuation_scores(
    model: &Gpt2,
    context: &[u32],
    continuations: &[Vec<u32>],
    positions: usize,
    device: &Device,
) -> Result<Vec<f64>> {
    let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
    if longest == 0 || longest >= positions || context.is_empty() {
        return Err(TrainError::Invalid(
            "every label word needs tokens, and they must leave room for context".into(),
        ));
    }
    let keep = context.len().min(positions - longest);
    let context = &context[context.len() - keep..];
    let len = keep + longest;
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for continuation in continuations {
        let row: Vec<i64> = context
            .iter()
            .chain(continuation)
            .map(|&t| i64::from(t))
            .collect();
        mask.extend((0..len).map(|i| i64::from(i < row.len())));
        ids.extend(
            row.iter()
                .copied()
                .chain(std::iter::repeat_n(0, len - row.len())),
        );
    }
    let rows = continuations.len();
    let input_ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [rows, len]), device);
    let attention_mask = Tensor::<2, Int>::from_data(TensorData::new(mask, [rows, len]), device);
    let hidden = model.forward(Gpt2Input {
        input_ids,
        attention_mask,
    });
    let log_probs = log_softmax(model.lm_logits(hidden), 2);
    let values: Vec<f32> = log_probs
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::Invalid(format!("cannot read log-probabilities: {e:?}")))?;
    let vocab = values.len() / (rows * len);
    Ok(continuations
        .iter()
        .enumerate()
        .map(|(row, continuation)| {
            continuation
                .iter()
                .enumerate()
                .map(|(j, &token)| {
                    // The token at position keep + j is predicted at position keep + j - 1.
                    let at = (row * len + keep + j - 1) * vocab + token as usize;
                    f64::from(values[at])
                })
                .sum()
        })
        .collect())
}

/// Scores the label words (their tokens in `continuations`) after a prompt.
pub struct LabelScorer<'a> {
    /// The causal language model.
    pub model: &'a Gpt2,
    /// Its tokenizer.
    pub tokenizer: &'a TextTokenizer,
    /// Each label word's tokens, in class order.
    pub continuations: &'a [Vec<u32>],
    /// The model's position table length (prompts are cut to fit).
    pub positions: usize,
    /// The device the model is on.
    pub device: &'a Device,
}

impl LabelScorer<'_> {
    /// Each label's score for the query `text` after `demos`: its summed log-probability, less
    /// the same after the content-free text when `config.calibrate`.
    pub fn scores(
        &self,
        config: &IclConfig,
        demos: &[&TextExample],
        text: &str,
    ) -> Result<Vec<f64>> {
        let after = |text: &str| -> Result<Vec<f64>> {
            let context = self
                .tokenizer
                .encode_words(&config.prompt_for_text(demos, text))?;
            continuation_scores(
                self.model,
                &context,
                self.continuations,
                self.positions,
                self.device,
            )
        };
        let scores = after(text)?;
        if !config.calibrate {
            return Ok(scores);
        }
        let content_free = after(CONTENT_FREE)?;
        Ok(scores
            .iter()
            .zip(&content_free)
            .map(|(s, c)| s - c)
            .collect())
    }
}

/// Accuracy and the other classification metrics of in-context learning on `queries`; the
/// loss is the mean negative log-likelihood of the right label among the label words.
pub fn evaluate_icl(
    model: &Gpt2,
    tokenizer: &TextTokenizer,
    train: &[&TextExample],
    queries: &[&TextExample],
    config: &IclConfig,
    positions: usize,
    device: &Device,
) -> Result<Metrics> {
    let continuations = config
        .label_words
        .iter()
        .map(|word| Ok(tokenizer.encode_words(&format!(" {word}"))?))
        .collect::<Result<Vec<_>>>()?;
    let scorer = LabelScorer {
        model,
        tokenizer,
        continuations: &continuations,
        positions,
        device,
    };
    let (mut predicted, mut actual, mut loss) = (Vec::new(), Vec::new(), 0.0);
    for (index, query) in queries.iter().enumerate() {
        let demos = config.demonstrations(train, query, index);
        let scores = scorer.scores(config, &demos, &query.text)?;
        let best = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        let right = query.target.class_index();
        let normaliser = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
        let log_sum = normaliser
            + scores
                .iter()
                .map(|s| (s - normaliser).exp())
                .sum::<f64>()
                .ln();
        loss += log_sum - scores[right];
        predicted.push(best);
        actual.push(right);
    }
    Ok(Metrics::classification(
        loss / queries.len().max(1) as f64,
        &predicted,
        &actual,
        config.label_words.len(),
    ))
}

/// A `kiln icl` run on a task: the GPT-2, the prompts, which split is queried, where it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct IclSettings {
    /// HF GPT-2 directory.
    #[cfg_attr(feature = "clap", arg(long))]
    pub model: PathBuf,
    /// Demonstrations before each query.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 4))]
    pub shots: usize,
    /// Prompt template with `{text}` and `{label}`.
    #[cfg_attr(feature = "clap", arg(long, default_value = DEFAULT_TEMPLATE))]
    pub template: String,
    /// The word each class is written as, comma-separated, in the task's class order
    /// [default: the class names].
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ','))]
    pub label_words: Option<Vec<String>>,
    /// Words kept of each text.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 40))]
    pub text_words: usize,
    /// Contextual calibration: divide the label words' probabilities by those after the
    /// content-free query `N/A` (Zhao et al. 2021).
    #[cfg_attr(feature = "clap", arg(long))]
    pub calibrate: bool,
    /// Seeds the split and the choice of demonstrations.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 42))]
    pub seed: u64,
    /// Which part is queried: test or validation.
    #[cfg_attr(feature = "clap", arg(long, default_value = "test"))]
    pub split: String,
    /// Run directory.
    #[cfg_attr(feature = "clap", arg(long, default_value = "runs/icl"))]
    pub out: PathBuf,
}

impl IclSettings {
    /// In-context learning with the GPT-2 in `model` at `kiln icl`'s defaults: 4 shots, the
    /// default template, the class names as label words, 40 words per text, no calibration,
    /// seed 42, the test split, into `runs/icl`.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            shots: 4,
            template: DEFAULT_TEMPLATE.into(),
            label_words: None,
            text_words: 40,
            calibrate: false,
            seed: 42,
            split: "test".into(),
            out: "runs/icl".into(),
        }
    }
}

/// What an in-context-learning run's `run.json` records: the task and the settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IclRecord {
    /// The task queried.
    pub task: TaskSpec,
    /// The prompts and the rest.
    #[serde(flatten)]
    pub settings: IclSettings,
}

/// In-context learning of `args` on `task` on `choice`'s device: nothing trains; `run.json` and a
/// `summary.json` in `kiln train`'s shape go to `args.out`, so `kiln compare` shows it beside the
/// fine-tuned methods.
pub fn run_icl(task: &TaskSpec, args: &IclSettings, choice: DeviceChoice) -> Result<RunSummary> {
    let device = &choice.device()?;
    let started = Instant::now();
    let spec = task;
    let task = spec
        .load(args.seed)
        .context(|| format!("reading task {}", spec.path.display()))?;
    let TaskKind::Classification { labels } = &task.kind else {
        return Err(TrainError::Invalid(
            "in-context learning here classifies; the task is a regression".into(),
        ));
    };
    let pretrained = Pretrained::load(&args.model, device)
        .context(|| format!("loading model from {}", args.model.display()))?;
    let Backbone::Gpt2(model, gpt2_config) = &pretrained.backbone else {
        return Err(TrainError::Invalid(format!(
            "{}: in-context learning needs a causal language model (GPT-2)",
            args.model.display()
        )));
    };
    let prompts = IclConfig {
        shots: args.shots,
        template: args.template.replace("\\n", "\n"),
        label_words: args.label_words.clone().unwrap_or_else(|| labels.clone()),
        text_words: args.text_words,
        seed: args.seed,
        calibrate: args.calibrate,
    };
    prompts.check(labels.len())?;
    let queries = match args.split.as_str() {
        "test" => &task.split.test,
        "validation" => &task.split.validation,
        other => {
            return Err(TrainError::Invalid(format!(
                "--split {other}: expected test or validation"
            )));
        }
    };
    let train = task.part(&task.split.train);
    let metrics = evaluate_icl(
        model,
        &pretrained.tokenizer,
        &train,
        &task.part(queries),
        &prompts,
        gpt2_config.n_positions,
        device,
    )?;
    std::fs::create_dir_all(&args.out).map_err(|e| TrainError::io(&args.out, e))?;
    let record = IclRecord {
        task: spec.clone(),
        settings: args.clone(),
    };
    write_json(&args.out.join("run.json"), &record)?;
    let summary = RunSummary {
        method: format!(
            "icl-k{}{}",
            args.shots,
            if args.calibrate { "-calibrated" } else { "" }
        ),
        trainable_params: 0,
        total_params: model.num_params(),
        trainable_percent: 0.0,
        best_epoch: None,
        validation: None,
        test: Some(metrics.clone()),
        seconds_per_epoch: started.elapsed().as_secs_f64(),
        peak_rss_mib: peak_rss_mib(),
        device: choice.to_string(),
        threshold: None,
        validation_before: None,
    };
    write_json(&args.out.join("summary.json"), &summary)?;
    let (name, value) = metrics.primary();
    println!(
        "in-context learning, {} shots{}: {} {name} {value:.4} ({} queries); nothing trains",
        args.shots,
        if args.calibrate { ", calibrated" } else { "" },
        args.split,
        queries.len()
    );
    Ok(summary)
}
