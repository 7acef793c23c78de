//! Several tasks answered in one forward pass: the adapters of several runs on one base model,
//! composed in parallel (AdapterHub's `Parallel`, the multi-task inference of Rücklé et al.
//! 2021, "AdapterDrop"). The batch is repeated once per task at the first sub-layer where an
//! adapter acts, so everything below it (the embeddings, and with AdapterDrop the lower layers
//! that run without adapters) is computed once for all tasks; each task's head reads its own copy.

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use kiln_data::{TaskKind, TaskSpec};
use kiln_models::{BertInput, Composition, MlpHead, SequenceClassifier, TextInput, TextTokenizer};

use crate::adapters::copy_adapter;
use crate::error::{Context, Result, TrainError};
use crate::predict::{Prediction, predictions_of};
use crate::run::load_run;

/// One base model carrying every task's adapter, and every task's head.
pub struct ParallelTasks {
    /// The tasks' names, in order.
    pub names: Vec<String>,
    /// The base with one adapter per task (task `i`'s is adapter `i`).
    pub model: SequenceClassifier,
    /// Each task's head.
    pub heads: Vec<MlpHead>,
    /// Each task's adapter's name in `model`.
    pub adapters: Vec<String>,
    /// What each task's head predicts.
    pub kinds: Vec<TaskKind>,
    /// Each task's multi-label decision threshold (0.5 for tasks not loaded from runs).
    pub thresholds: Vec<f64>,
    /// Each task's data settings (columns, encoding), when loaded from runs.
    pub specs: Vec<TaskSpec>,
    /// Texts per forward pass: the first run's evaluation batch size (32 for tasks not loaded
    /// from runs).
    pub batch_size: usize,
    /// The tokenizer the runs share.
    pub tokenizer: TextTokenizer,
}

impl ParallelTasks {
    /// The tasks of `models` (each a base with its task's adapter active and its head), on the
    /// base of the first, their adapters copied onto it. They must share the backbone and the
    /// readout; each adapter must be a sequential bottleneck adapter (Houlsby, Pfeiffer,
    /// AdapterDrop, Compacter placements).
    pub fn new(
        names: Vec<String>,
        models: Vec<SequenceClassifier>,
        kinds: Vec<TaskKind>,
        tokenizer: TextTokenizer,
    ) -> Result<Self> {
        if names.len() != models.len() || kinds.len() != models.len() {
            return Err(TrainError::Invalid(format!(
                "{} names and {} kinds for {} models",
                names.len(),
                kinds.len(),
                models.len()
            )));
        }
        let mut models = models.into_iter();
        let mut base = models
            .next()
            .ok_or_else(|| TrainError::Invalid("parallel tasks need at least one run".into()))?;
        let mut heads = vec![base.head.clone()];
        let first = active_adapter(&base, &names[0])?;
        let mut adapters = vec![first];
        for (name, model) in names.iter().skip(1).zip(models) {
            if model.backbone_name() != base.backbone_name() || model.readout != base.readout {
                return Err(TrainError::Invalid(format!(
                    "task `{name}` reads a {} backbone by {:?}; `{}` reads a {} backbone by {:?}: \
                     parallel tasks share one",
                    model.backbone_name(),
                    model.readout,
                    names[0],
                    base.backbone_name(),
                    base.readout
                )));
            }
            let adapter = active_adapter(&model, name)?;
            // Adapters keep their names unless two tasks share one.
            let mut unique = adapter.clone();
            while base.adapter_index(&unique).is_some() {
                unique = format!("{unique}-{name}");
            }
            base = copy_adapter(&model, &adapter, base, &unique)?;
            heads.push(model.head.clone());
            adapters.push(unique);
        }
        let indices = adapters
            .iter()
            .filter_map(|a| base.adapter_index(a))
            .collect();
        base.set_composition(Composition::Parallel(indices))?;
        Ok(Self {
            names,
            model: base,
            heads,
            adapters,
            thresholds: vec![0.5; kinds.len()],
            kinds,
            specs: Vec::new(),
            batch_size: 32,
            tokenizer,
        })
    }

    /// The runs in `runs` (directories written by `kiln train`), on `device`; each task is
    /// named after its directory.
    pub fn load(runs: &[PathBuf], device: &Device, allow_changed_inputs: bool) -> Result<Self> {
        let mut names = Vec::new();
        let mut models = Vec::new();
        let mut kinds = Vec::new();
        let mut thresholds = Vec::new();
        let mut specs = Vec::new();
        let mut batch_size = None;
        let mut tokenizer = None;
        let mut base_dir = None;
        for dir in runs {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| dir.display().to_string());
            if names.contains(&name) {
                return Err(TrainError::Invalid(format!(
                    "two runs are called `{name}`: parallel tasks are named after their run \
                     directories"
                )));
            }
            let run = load_run(dir, device, allow_changed_inputs)
                .context(|| format!("loading the run in {}", dir.display()))?;
            let mut model = run.model;
            run.config.method.method().after_fit(&mut model)?;
            match &base_dir {
                None => base_dir = Some(run.model_dir.clone()),
                Some(base) if *base != run.model_dir => {
                    return Err(TrainError::Invalid(format!(
                        "{}: trained on {}; the first run on {}: parallel tasks share one base \
                         model",
                        dir.display(),
                        run.model_dir.display(),
                        base.display()
                    )));
                }
                Some(_) => {}
            }
            tokenizer.get_or_insert(run.tokenizer);
            specs.push(run.config.task.clone());
            batch_size.get_or_insert(run.config.train.eval_batch_size);
            names.push(name);
            models.push(model);
            kinds.push(run.kind);
            thresholds.push(run.threshold);
        }
        let tokenizer = tokenizer
            .ok_or_else(|| TrainError::Invalid("parallel tasks need at least one run".into()))?;
        // The lowest layers run without adapters where every task's run drops them.
        let drop = models
            .iter()
            .map(SequenceClassifier::adapter_drop_inference)
            .min()
            .unwrap_or(0);
        let mut tasks = Self::new(names, models, kinds, tokenizer)?;
        tasks.set_adapter_drop(drop)?;
        tasks.specs = specs;
        tasks.thresholds = thresholds;
        tasks.batch_size = batch_size.unwrap_or(tasks.batch_size);
        Ok(tasks)
    }

    /// Runs the lowest `layers` layers without adapters (AdapterDrop at inference): computed
    /// once for every task. At most the model's depth.
    pub fn set_adapter_drop(&mut self, layers: usize) -> Result<()> {
        let depth = self.model.num_layers();
        if layers > depth {
            return Err(TrainError::Invalid(format!(
                "--drop-layers {layers}: the model has {depth} layers"
            )));
        }
        self.model.set_adapter_drop(0, layers);
        Ok(())
    }

    /// Every task's outputs `[batch, outputs_i]` for a batch, in one forward pass.
    pub fn forward(&self, input: BertInput) -> Vec<Tensor<2>> {
        let texts = input.input_ids.dims()[0];
        let features = self.model.features(input);
        self.heads
            .iter()
            .enumerate()
            .map(|(i, head)| {
                head.forward(features.clone().slice_dim(0, i * texts..(i + 1) * texts))
            })
            .collect()
    }

    /// Every task's outputs as separate passes, one adapter at a time: what [`Self::forward`]
    /// saves.
    pub fn forward_one_by_one(&self, input: BertInput) -> Result<Vec<Tensor<2>>> {
        let mut model = self.model.clone();
        let mut outputs = Vec::with_capacity(self.heads.len());
        for (adapter, head) in self.adapters.iter().zip(&self.heads) {
            model.set_active_adapter(Some(adapter))?;
            outputs.push(head.forward(model.features(input.clone())));
        }
        Ok(outputs)
    }

    /// Each task's predictions for `inputs` (`[task][input]`), `batch_size` texts per pass.
    pub fn predict(
        &self,
        inputs: &[TextInput],
        device: &Device,
        batch_size: usize,
    ) -> Result<Vec<Vec<Prediction>>> {
        let tasks = Self {
            model: self.model.valid(),
            heads: self.heads.iter().map(Module::valid).collect(),
            adapters: self.adapters.clone(),
            names: self.names.clone(),
            kinds: self.kinds.clone(),
            thresholds: self.thresholds.clone(),
            specs: self.specs.clone(),
            batch_size: self.batch_size,
            tokenizer: self.tokenizer.clone(),
        };
        let mut predictions = vec![Vec::with_capacity(inputs.len()); self.heads.len()];
        for chunk in inputs.chunks(batch_size.max(1)) {
            let encoded = self.tokenizer.encode_batch(chunk)?;
            let outputs = tasks.forward(encoded.bert_input(device));
            let tasks_kinds = self.kinds.iter().zip(&self.thresholds);
            for ((task, outputs), (kind, &threshold)) in
                predictions.iter_mut().zip(outputs).zip(tasks_kinds)
            {
                task.extend(predictions_of(outputs, kind, threshold)?);
            }
        }
        Ok(predictions)
    }
}

/// The name of the adapter active in `model`, the run of task `name`.
fn active_adapter(model: &SequenceClassifier, name: &str) -> Result<String> {
    model.active_adapter().map(str::to_string).ok_or_else(|| {
        TrainError::Invalid(format!(
            "task `{name}`'s run has no single active adapter; parallel tasks take runs of \
             bottleneck-adapter methods (houlsby, pfeiffer, adapter-drop, compacter, compacter++)"
        ))
    })
}
