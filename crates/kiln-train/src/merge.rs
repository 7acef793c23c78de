//! A trained model written back as a HF checkpoint with its weight-side methods folded into the
//! base weights (`kiln merge`: LoRA-family deltas, IA3 vectors, LoHa/LoKr/VeRA/AdaLoRA updates,
//! OFT rotations): `config.json`, `model.safetensors` under HF's names and layouts, and the base
//! directory's tokenizer files, which transformers loads with no kiln or peft code.
//!
//! A BERT classifier that reads the pooler through one linear layer is written as
//! `BertForSequenceClassification` (its head as `classifier`); anything else as the base model
//! (`BertModel`, `GPT2Model`), whose states kiln's head reads; the head then has no HF class to
//! go in. Adapters, prompts, prefixes and side networks are modules transformers' classes do not
//! have: a model holding them is refused.

use std::path::Path;

use kiln_models::SequenceClassifier;
use kiln_models::weights::{Layout, hf_name_for};
use kiln_models::{bert::BERT_KEYS, gpt2::GPT2_KEYS};

use crate::checkpoint::{save_params_laid_out, write_atomically};
use crate::error::{Result, TrainError};

/// Tokenizer files copied from the base directory when present.
const TOKENIZER_FILES: [&str; 6] = [
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
];

/// What `save_merged` wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedCheckpoint {
    /// The transformers class the checkpoint is for.
    pub architecture: &'static str,
    /// Tensors written.
    pub tensors: usize,
    /// LoRA deltas, IA3 vectors, LoHa/LoKr/VeRA updates and OFT rotations folded in.
    pub merged_deltas: usize,
}

/// What a sequence classifier's outputs mean, for HF's config: class names, or a multi-label
/// task's label names (written with `problem_type: multi_label_classification`, which makes
/// transformers' sequence classifiers use a sigmoid per label and BCE).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeadLabels<'a> {
    /// One class per text.
    Classes(&'a [String]),
    /// Any number of labels per text.
    MultiLabel(&'a [String]),
}

impl<'a> HeadLabels<'a> {
    fn names(self) -> &'a [String] {
        match self {
            HeadLabels::Classes(names) | HeadLabels::MultiLabel(names) => names,
        }
    }
}

/// Writes `model` with its deltas merged to `out`, taking `config.json` and the tokenizer files
/// from `base_dir` (the directory the model was loaded from); a sequence classifier's
/// `id2label` names the `labels` (`LABEL_0`, ... without; no labels and one output is a
/// regression).
pub fn save_merged(
    model: &SequenceClassifier,
    base_dir: &Path,
    out: &Path,
    labels: Option<HeadLabels>,
) -> Result<MergedCheckpoint> {
    let extra = [
        (!model.adapters.is_empty(), "adapters"),
        (model.side.is_some(), "a side network"),
        (
            model
                .bert
                .as_ref()
                .is_some_and(|b| b.prompt.is_some() || b.prefix_encoder.is_some())
                || model
                    .gpt2
                    .as_ref()
                    .is_some_and(|g| g.prompt.is_some() || g.prefix_encoder.is_some()),
            "virtual tokens or prefixes",
        ),
    ];
    if let Some((_, what)) = extra.iter().find(|(present, _)| *present) {
        return Err(TrainError::Invalid(format!(
            "the model holds {what}, which no transformers class has: kiln merge folds LoRA \
             deltas, IA3 vectors and LoHa/LoKr/VeRA updates into a plain checkpoint"
        )));
    }
    let mut merged = model.clone();
    let mut merged_deltas = 0;
    for (_, projection) in merged.projections_mut() {
        if projection.lora.as_ref().is_some_and(|d| !d.merged) {
            merged_deltas += 1;
        }
        if projection.ia3.as_ref().is_some_and(|v| !v.merged) {
            merged_deltas += 1;
        }
        if projection.loha.as_ref().is_some_and(|d| !d.merged)
            || projection.lokr.as_ref().is_some_and(|d| !d.merged)
            || projection.vera.as_ref().is_some_and(|d| !d.merged)
            || projection.adalora.as_ref().is_some_and(|d| !d.merged)
        {
            merged_deltas += 1;
        }
        if projection.oft.as_ref().is_some_and(|r| !r.merged()) {
            merged_deltas += 1;
        }
        projection.merge_lora();
        projection.merge_ia3();
        projection.merge_update();
        projection.merge_rotation();
    }
    let (_, embedding) = merged.word_embedding_mut();
    if embedding.lora.as_ref().is_some_and(|d| !d.merged) {
        merged_deltas += 1;
    }
    embedding.merge_lora();
    let sequence_classifier = crate::peft::is_bert_sequence_classifier(model);
    let (table, backbone, architecture, prefix) = match (&model.bert, &model.gpt2) {
        (Some(_), _) if sequence_classifier => {
            (BERT_KEYS, "bert", "BertForSequenceClassification", "bert.")
        }
        (Some(_), _) => (BERT_KEYS, "bert", "BertModel", ""),
        (_, Some(_)) => (GPT2_KEYS, "gpt2", "GPT2Model", ""),
        _ => {
            return Err(TrainError::Invalid(
                "kiln merge writes BERT and GPT-2 checkpoints; M2-BERT's stays in kiln's format"
                    .into(),
            ));
        }
    };
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let tensors = save_params_laid_out(&merged, &out.join("model.safetensors"), |path| {
        if sequence_classifier {
            match path {
                "head.output.weight" => {
                    return Some(("classifier.weight".into(), Layout::Transposed));
                }
                "head.output.bias" => return Some(("classifier.bias".into(), Layout::Same)),
                _ => {}
            }
        }
        let inner = path.strip_prefix(backbone)?.strip_prefix('.')?;
        if inner.contains(".lora.") {
            return None;
        }
        hf_name_for(table, inner).map(|(name, layout)| (format!("{prefix}{name}"), layout))
    })?;

    let config_path = base_dir.join("config.json");
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| TrainError::io(&config_path, e))?;
    let mut config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", config_path.display())))?;
    let fields = config.as_object_mut().ok_or_else(|| {
        TrainError::Invalid(format!("{}: not a JSON object", config_path.display()))
    })?;
    fields.insert("architectures".into(), serde_json::json!([architecture]));
    if sequence_classifier {
        let outputs = model.head.output.weight.lazy_shape().dims::<2>()[1];
        let name = |i: usize| {
            labels
                .and_then(|l| l.names().get(i).cloned())
                .unwrap_or_else(|| format!("LABEL_{i}"))
        };
        let names: serde_json::Map<String, serde_json::Value> = (0..outputs)
            .map(|i| (i.to_string(), name(i).into()))
            .collect();
        let ids: serde_json::Map<String, serde_json::Value> =
            (0..outputs).map(|i| (name(i), i.into())).collect();
        fields.insert("num_labels".into(), outputs.into());
        match labels {
            None if outputs == 1 => {
                fields.insert("problem_type".into(), "regression".into());
            }
            Some(HeadLabels::MultiLabel(_)) => {
                fields.insert("problem_type".into(), "multi_label_classification".into());
            }
            _ => {}
        }
        fields.insert("id2label".into(), names.into());
        fields.insert("label2id".into(), ids.into());
    }
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| TrainError::Invalid(e.to_string()))?;
    write_atomically(&out.join("config.json"), format!("{text}\n").as_bytes())?;
    for name in TOKENIZER_FILES {
        let source = base_dir.join(name);
        if source.is_file() {
            let bytes = std::fs::read(&source).map_err(|e| TrainError::io(&source, e))?;
            write_atomically(&out.join(name), &bytes)?;
        }
    }
    Ok(MergedCheckpoint {
        architecture,
        tensors,
        merged_deltas,
    })
}
