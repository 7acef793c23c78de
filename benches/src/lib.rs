//! kiln-benches: what the benchmarks share. A MiniLM-shaped BERT (h 384, 6 layers, 12 heads,
//! feed-forward 1536, vocabulary 30,522, as all-MiniLM-L6-v2) at random initialisation or any HF
//! directory, a method applied as `kiln train` applies it, a batch of random token ids, and one
//! training step exactly as the trainer takes it: forward with dropout on, cross-entropy,
//! backward, global-norm clipping at 1.0, AdamW.
//!
//! The criterion benches (`benches/methods.rs`), the single-case probe that the PyTorch anchor
//! is compared with (`src/bin/kiln_step.rs`) and `cargo xtask bench` all build on this.

use std::path::Path;

use anyhow::{Context, Result};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};

use kiln_models::{Backbone, BertConfig, BertInput, HeadConfig, Readout, SequenceClassifier};
use kiln_train::trainer::adamw;
use kiln_train::transforms::clip_global_norm;
use kiln_tuning::{MethodConfig, ParamReport};

/// The batch shape of every step benchmark and of the PyTorch anchor: 16 sequences of 128.
pub const BATCH: usize = 16;
pub const SEQ_LEN: usize = 128;
/// Outputs of the task head (BBC News has five topics).
pub const CLASSES: usize = 5;

/// all-MiniLM-L6-v2's shape, so that benchmarks need no download.
pub fn minilm_shaped() -> BertConfig {
    Shape::MiniLm.config()
}

/// The BERT shapes a benchmark runs at random initialisation (the anchor's `--shape`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// all-MiniLM-L6-v2: hidden 384, 6 layers, 12 heads, feed-forward 1536.
    #[value(name = "minilm")]
    MiniLm,
    /// BERT-base: hidden 768, 12 layers, 12 heads, feed-forward 3072.
    Base,
}

impl Shape {
    pub fn config(self) -> BertConfig {
        let (hidden, layers, inner) = match self {
            Shape::MiniLm => (384, 6, 1536),
            Shape::Base => (768, 12, 3072),
        };
        serde_json::from_value(serde_json::json!({
            "vocab_size": 30522, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": 12, "intermediate_size": inner, "max_position_embeddings": 512,
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1
        }))
        .expect("a fixed, valid BERT config")
    }
}

/// The backbone in `model` (a HF directory), or a BERT of `shape` at random initialisation.
pub fn backbone(model: Option<&Path>, shape: Shape, device: &Device) -> Result<Backbone> {
    match model {
        Some(dir) => Backbone::load(dir, device)
            .with_context(|| format!("loading the model in {}", dir.display())),
        None => {
            let config = shape.config();
            Ok(Backbone::Bert(Box::new(config.init(device)), config))
        }
    }
}

/// `backbone` with a mean-pooled head for [`CLASSES`] outputs and the method called `method`
/// applied with its defaults. AdapterFusion gets two fresh Pfeiffer adapters to fuse.
pub fn classifier(
    backbone: Backbone,
    method: &str,
    device: &Device,
) -> Result<(SequenceClassifier, ParamReport)> {
    let config = MethodConfig::parse(method, &[])?;
    let head = HeadConfig {
        layers: config.method().head_layers(),
        outputs: CLASSES,
        dropout: 0.1,
    };
    let mut model = SequenceClassifier::new(backbone, Readout::Mean, head, device)?;
    if matches!(config, MethodConfig::Fusion(_)) {
        for name in ["first", "second"] {
            MethodConfig::parse("pfeiffer", &[("adapter-name", name)])?
                .method()
                .prepare(&mut model)?;
        }
    }
    Ok(config.apply(model)?)
}

/// One padded batch and its labels.
#[derive(Clone)]
pub struct Batch {
    pub input: BertInput,
    pub labels: Tensor<1, Int>,
}

impl Batch {
    /// `batch` rows of `len` token ids drawn (seeded) from the vocabulary above its first 1,000
    /// entries (BERT's special and unused tokens), every position attended, labels cycling over
    /// the classes.
    pub fn random(batch: usize, len: usize, vocab: usize, seed: u64, device: &Device) -> Self {
        let mut rng = kiln_data::SplitMix64::new(seed);
        let low = 1000.min(vocab / 2);
        let ids: Vec<i64> = (0..batch * len)
            .map(|_| (low + rng.below(vocab - low)) as i64)
            .collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, len]), device);
        let labels: Vec<i64> = (0..batch).map(|i| (i % CLASSES) as i64).collect();
        Self {
            input: BertInput {
                attention_mask: ids.ones_like(),
                token_type_ids: ids.zeros_like(),
                input_ids: ids,
            },
            labels: Tensor::from_data(TensorData::new(labels, [batch]), device),
        }
    }

    pub fn tokens(&self) -> usize {
        self.input.input_ids.shape().num_elements()
    }
}

/// A model with its optimizer, taking training steps as the trainer does.
pub struct TrainStep {
    model: Option<SequenceClassifier>,
    optimizer: ModuleOptimizer,
    steps: usize,
}

impl TrainStep {
    /// `model` must live on an autodiff device.
    pub fn new(model: SequenceClassifier) -> Self {
        Self {
            model: Some(model),
            optimizer: adamw(0.01),
            steps: 0,
        }
    }

    /// Forward (dropout on), loss, backward, clipping and the AdamW update; returns the loss.
    pub fn run(&mut self, batch: &Batch) -> f32 {
        let mut model = self
            .model
            .take()
            .expect("the model is put back after every step");
        let device = batch.labels.device();
        // AdapterDrop and side-tuning draw their per-step state here, as in the trainer.
        model.begin_train_step(0.5, self.steps as u64);
        let logits = model.forward(batch.input.clone());
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, batch.labels.clone());
        let value = loss.clone().into_scalar::<f32>();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        clip_global_norm(&model, &mut grads, 1.0);
        self.model = Some(self.optimizer.step(1e-4, model, grads));
        self.steps += 1;
        value
    }
}

/// Task outputs of a (validation-mode) model, read back to the host so the work is done.
pub fn infer(model: &SequenceClassifier, batch: &Batch) -> Vec<f32> {
    model
        .forward(batch.input.clone())
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 outputs")
}

/// Every method a text classifier trains with (the registry without `fpt` and `icl`, which have
/// their own commands).
pub fn text_methods() -> Vec<&'static str> {
    kiln_tuning::registry()
        .into_iter()
        .filter(|m| m.command.is_none())
        .map(|m| m.name)
        .collect()
}
