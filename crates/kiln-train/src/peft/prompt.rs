//! peft's prompt-tuning format: `prompt_embeddings` `[n, h]`, the virtual tokens in front of
//! the input (for BERT in front of `[CLS]`: kiln's `--prompt-at-start`), and for a BERT sequence
//! classifier the head as `base_model.classifier`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use burn::tensor::{Tensor, TensorData};

use kiln_models::{PromptTemplate, SequenceClassifier, SoftPrompt, WeightFile};
use kiln_tuning::{ParamReport, set_trainable};

use super::{
    PEFT_WEIGHTS_FILE, PeftExport, is_bert_sequence_classifier, one, read_floats, read_peft_config,
    set_head, write_peft_config, write_peft_weights, yes,
};
use crate::error::{Result, TrainError};

/// The fields of peft's `PromptTuningConfig` kiln writes and reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftPromptConfig {
    /// `PROMPT_TUNING`.
    pub peft_type: String,
    /// peft's task type.
    pub task_type: Option<String>,
    /// Virtual tokens.
    pub num_virtual_tokens: usize,
    /// Width of a token's embedding.
    pub token_dim: usize,
    /// peft's count of transformer stacks (1 here).
    #[serde(default = "one")]
    pub num_transformer_submodules: usize,
    /// Attention heads per layer, as peft records it.
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
    /// Layers, as peft records it.
    #[serde(default)]
    pub num_layers: Option<usize>,
    /// How peft initialised the prompt (`RANDOM`, `TEXT`).
    #[serde(default = "random_init")]
    pub prompt_tuning_init: String,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Saved for inference only.
    #[serde(default = "yes")]
    pub inference_mode: bool,
}

fn random_init() -> String {
    "RANDOM".into()
}

/// The model's plain prompt (prompt tuning: no encoder, all tokens in front).
pub(super) fn plain_prompt(model: &SequenceClassifier) -> Option<&SoftPrompt> {
    let prompt = match (&model.bert, &model.gpt2) {
        (Some(bert), _) => bert.prompt.as_ref(),
        (_, Some(gpt2)) => gpt2.prompt.as_ref(),
        _ => None,
    }?;
    (prompt.encoder.is_none() && prompt.template.after == 0).then_some(prompt)
}

/// Writes a prompt-tuning model as a peft `PROMPT_TUNING` directory: `prompt_embeddings`
/// `[n, h]`, and for a BERT sequence classifier its head as `base_model.classifier`. BERT's
/// tokens must sit in front of `[CLS]` (`--prompt-at-start`), where peft puts them.
pub fn export_prompt(
    model: &SequenceClassifier,
    out: &Path,
    base_model: &str,
) -> Result<PeftExport> {
    let prompt = plain_prompt(model).ok_or_else(|| {
        TrainError::Invalid(
            "the model has no prompt-tuning prompt to export (P-tuning's encoder and tokens \
             behind the text have no peft counterpart)"
                .into(),
        )
    })?;
    if model.backbone().has_cls_token() && !prompt.template.at_start {
        return Err(TrainError::Invalid(
            "kiln put this BERT's virtual tokens after [CLS]; peft puts them in front of it: \
             train with --prompt-at-start to export"
                .into(),
        ));
    }
    let embeddings = prompt.embedding.val();
    let [tokens, width] = embeddings.dims();
    let with_classifier = is_bert_sequence_classifier(model);
    let mut named: Vec<(String, Vec<usize>, Vec<f32>)> = vec![(
        "prompt_embeddings".into(),
        vec![tokens, width],
        read_floats(embeddings)?,
    )];
    if with_classifier {
        let head = &model.head.output;
        named.push((
            "base_model.classifier.weight".into(),
            head.weight.val().transpose().dims().to_vec(),
            read_floats(head.weight.val().transpose())?,
        ));
        if let Some(bias) = &head.bias {
            named.push((
                "base_model.classifier.bias".into(),
                bias.val().dims().to_vec(),
                read_floats(bias.val())?,
            ));
        }
    }
    write_peft_weights(out, &named)?;
    let task_type = if with_classifier {
        "SEQ_CLS"
    } else {
        "FEATURE_EXTRACTION"
    };
    let config = PeftPromptConfig {
        peft_type: "PROMPT_TUNING".into(),
        task_type: Some(task_type.into()),
        num_virtual_tokens: tokens,
        token_dim: width,
        num_transformer_submodules: 1,
        num_attention_heads: None,
        num_layers: Some(model.num_layers()),
        prompt_tuning_init: random_init(),
        base_model_name_or_path: Some(base_model.into()),
        inference_mode: true,
    };
    write_peft_config(out, &config)?;
    Ok(PeftExport {
        task_type,
        target_modules: Vec::new(),
        tensors: named.len(),
        with_classifier,
    })
}

/// Puts the prompt of the peft `PROMPT_TUNING` directory `dir` in front of `model`'s input (in
/// front of `[CLS]` for BERT, as peft does) and loads its classifier when there is one; the
/// prompt and the head train.
pub fn import_prompt(
    model: SequenceClassifier,
    dir: &Path,
) -> Result<(SequenceClassifier, ParamReport)> {
    let (config, config_path) = read_peft_config::<PeftPromptConfig>(dir)?;
    if config.peft_type != "PROMPT_TUNING" || config.num_transformer_submodules != 1 {
        return Err(TrainError::Invalid(format!(
            "{}: `peft_type` {} with {} transformer submodules; kiln reads PROMPT_TUNING with one",
            config_path.display(),
            config.peft_type,
            config.num_transformer_submodules
        )));
    }
    let weights_path = dir.join(PEFT_WEIGHTS_FILE);
    let file = WeightFile::open(&weights_path)?;
    let bad = |message: String| TrainError::checkpoint(&weights_path, message);
    let embeddings = file
        .get("prompt_embeddings")
        .ok_or_else(|| bad("`prompt_embeddings` is missing".into()))?;
    let width = model.hidden_size();
    if embeddings.shape != [config.num_virtual_tokens, width] {
        return Err(bad(format!(
            "`prompt_embeddings` is {:?}; the config and the model ask for [{}, {width}]",
            embeddings.shape, config.num_virtual_tokens
        )));
    }
    let classifier = file.get("base_model.classifier.weight");
    if classifier.is_some() && !is_bert_sequence_classifier(&model) {
        return Err(bad(
            "it holds a BertForSequenceClassification classifier: build the model with \
             `--readout pooler` and a one-layer head to load it"
                .into(),
        ));
    }
    let device = model.head.output.weight.lazy_device();
    let mut model = model;
    let initial = Tensor::<2>::from_data(
        TensorData::new(
            embeddings.values.clone(),
            [config.num_virtual_tokens, width],
        ),
        &device,
    );
    let template = PromptTemplate {
        before: config.num_virtual_tokens,
        after: 0,
        at_start: true,
    };
    model.add_prompt(template, initial, None)?;
    if let Some(weight) = classifier {
        let bias = file
            .get("base_model.classifier.bias")
            .ok_or_else(|| bad("`base_model.classifier.bias` is missing".into()))?;
        set_head(&mut model, weight.clone(), bias.clone(), &weights_path)?;
    }
    let prompt = format!("{}.prompt.*", model.backbone_name());
    Ok(set_trainable(model, &[prompt, "head.*".to_string()]))
}
