//! peft's prefix-tuning format, GPT-2 only: peft passes the prefixes as `past_key_values`,
//! which transformers 5's BERT does not take, and HF GPT-2 then numbers the real tokens after
//! the prefix, so a kiln run must be trained with `--prefix-positions` to give peft's outputs.
//! `prompt_embeddings` `[n, L·2·h]` holds, per virtual token, each layer's key row then value
//! row; kiln's folded prefix-tuning prefixes and P-tuning v2's deep prompts both write to it
//! (peft's `prefix_projection` MLP is folded away, as kiln folds its own).

use std::path::Path;

use serde::{Deserialize, Serialize};

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};

use kiln_models::{AdapterConfig, AttentionPrefix, LayerAdapter, SequenceClassifier, WeightFile};
use kiln_tuning::{ParamReport, set_trainable};

use super::prompt::plain_prompt;
use super::{
    PEFT_WEIGHTS_FILE, PeftExport, one, read_floats, read_peft_config, write_peft_config,
    write_peft_weights, yes,
};
use crate::error::{Result, TrainError};

/// The fields of peft's `PrefixTuningConfig` kiln writes and reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftPrefixConfig {
    /// `PREFIX_TUNING`.
    pub peft_type: String,
    /// peft's task type.
    pub task_type: Option<String>,
    /// Prefix rows per layer.
    pub num_virtual_tokens: usize,
    /// Width of a token's state.
    pub token_dim: usize,
    /// peft's count of transformer stacks (1 for GPT-2).
    #[serde(default = "one")]
    pub num_transformer_submodules: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Layers.
    pub num_layers: usize,
    /// Hidden width of peft's reparameterisation MLP.
    pub encoder_hidden_size: usize,
    /// Whether peft reparameterises the prefixes with an MLP (refused on import; kiln writes
    /// `false`, its prefixes folded).
    #[serde(default)]
    pub prefix_projection: bool,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Saved for inference only.
    #[serde(default = "yes")]
    pub inference_mode: bool,
}

/// Every GPT-2 layer's attention prefix (key rows, value rows), from a prefix-only adapter.
fn gpt2_prefixes(model: &SequenceClassifier) -> Result<Vec<(Tensor<2>, Tensor<2>)>> {
    let refuse = |why: &str| TrainError::Invalid(format!("no peft prefix-tuning export: {why}"));
    let gpt2 = model
        .gpt2
        .as_ref()
        .ok_or_else(|| refuse("peft's prefix tuning runs on GPT-2 only here"))?;
    if gpt2.prefix_encoder.is_some() {
        return Err(refuse("fold the prefix encoder first"));
    }
    if !gpt2.prefix_takes_positions {
        return Err(refuse(
            "kiln's prefix took no positions, HF GPT-2 numbers the text after it: train with \
             --prefix-positions",
        ));
    }
    if plain_prompt(model).is_some() || gpt2.prompt.is_some() {
        return Err(refuse("the model also has virtual tokens"));
    }
    gpt2.blocks
        .iter()
        .enumerate()
        .map(|(i, block)| {
            let slots = block
                .adapters
                .as_ref()
                .ok_or_else(|| refuse(&format!("layer {i} has no prefix")))?;
            let bottlenecks = slots.active_one().is_some_and(|(_, a)| {
                a.attention.is_some() || a.feed_forward.is_some() || a.parallel.is_some()
            });
            if bottlenecks {
                return Err(refuse(
                    "the adapter has bottleneck modules beside its prefix",
                ));
            }
            slots
                .prefix()
                .ok_or_else(|| refuse(&format!("layer {i} has no prefix")))
        })
        .collect()
}

/// Writes a GPT-2's attention prefixes as a peft `PREFIX_TUNING` directory
/// (`FEATURE_EXTRACTION` on `GPT2Model`; kiln's head has no peft counterpart).
pub fn export_prefix(
    model: &SequenceClassifier,
    out: &Path,
    base_model: &str,
) -> Result<PeftExport> {
    let prefixes = gpt2_prefixes(model)?;
    let (tokens, width) = match prefixes.first() {
        Some((key, _)) => (key.dims()[0], key.dims()[1]),
        None => return Err(TrainError::Invalid("the model has no layers".into())),
    };
    // Row i: layer 0's key, layer 0's value, layer 1's key, ... (peft's past_key_values view).
    let rows = prefixes
        .into_iter()
        .flat_map(|(key, value)| [key, value])
        .collect::<Vec<_>>();
    let layers = rows.len() / 2;
    let embeddings = read_floats(Tensor::cat(rows, 1))?;
    write_peft_weights(
        out,
        &[(
            "prompt_embeddings".into(),
            vec![tokens, layers * 2 * width],
            embeddings,
        )],
    )?;
    let heads = model
        .gpt2
        .as_ref()
        .map_or(1, |g| g.blocks[0].attention.heads);
    let config = PeftPrefixConfig {
        peft_type: "PREFIX_TUNING".into(),
        task_type: Some("FEATURE_EXTRACTION".into()),
        num_virtual_tokens: tokens,
        token_dim: width,
        num_transformer_submodules: 1,
        num_attention_heads: heads,
        num_layers: layers,
        encoder_hidden_size: width,
        prefix_projection: false,
        base_model_name_or_path: Some(base_model.into()),
        inference_mode: true,
    };
    write_peft_config(out, &config)?;
    Ok(PeftExport {
        task_type: "FEATURE_EXTRACTION",
        target_modules: Vec::new(),
        tensors: 1,
        with_classifier: false,
    })
}

/// The adapter name an imported peft prefix is held under.
pub const PEFT_PREFIX_ADAPTER: &str = "p-tuning-v2";

/// Puts the prefixes of the peft `PREFIX_TUNING` directory `dir` into a GPT-2 `model` as the
/// prefix-only adapter [`PEFT_PREFIX_ADAPTER`], numbering the text after them as HF does; the
/// prefixes and the head train. peft's `prefix_projection` MLP is not read (its prefixes would
/// need the encoder's weights, which peft saves under other names): such adapters are refused.
pub fn import_prefix(
    model: SequenceClassifier,
    dir: &Path,
) -> Result<(SequenceClassifier, ParamReport)> {
    let (config, config_path) = read_peft_config::<PeftPrefixConfig>(dir)?;
    let refuse = |field: &str, why: String| {
        TrainError::Invalid(format!("{}: `{field}` {why}", config_path.display()))
    };
    if config.prefix_projection {
        return Err(refuse(
            "prefix_projection",
            "is true; kiln reads peft prefixes without the projection MLP".into(),
        ));
    }
    let Some(gpt2) = model.gpt2.as_ref() else {
        return Err(refuse(
            "peft_type",
            "is PREFIX_TUNING, which kiln reads into GPT-2 only".into(),
        ));
    };
    let (layers, width) = (gpt2.blocks.len(), model.hidden_size());
    if config.num_layers != layers || config.token_dim != width {
        return Err(refuse(
            "num_layers",
            format!(
                "and `token_dim` are {} and {}; the model has {layers} layers {width} wide",
                config.num_layers, config.token_dim
            ),
        ));
    }
    let weights_path = dir.join(PEFT_WEIGHTS_FILE);
    let file = WeightFile::open(&weights_path)?;
    let tokens = config.num_virtual_tokens;
    let embeddings = file
        .get("prompt_embeddings")
        .ok_or_else(|| TrainError::checkpoint(&weights_path, "`prompt_embeddings` is missing"))?;
    if embeddings.shape != [tokens, layers * 2 * width] {
        return Err(TrainError::checkpoint(
            &weights_path,
            format!(
                "`prompt_embeddings` is {:?}; the config asks for [{tokens}, {}]",
                embeddings.shape,
                layers * 2 * width
            ),
        ));
    }
    let device = model.head.output.weight.lazy_device();
    let all = Tensor::<2>::from_data(
        TensorData::new(embeddings.values.clone(), [tokens, layers * 2 * width]),
        &device,
    );
    let mut model = model;
    // The adapter of that name (P-tuning v2's, when `kiln train` built the method first) becomes
    // the peft prefixes and nothing else.
    let config = AdapterConfig::prefix_only(tokens);
    let index = match model.adapter_index(PEFT_PREFIX_ADAPTER) {
        Some(index) => index,
        None => {
            model.add_adapter(PEFT_PREFIX_ADAPTER, &config)?;
            model.adapters.len() - 1
        }
    };
    model.adapters[index].config = config;
    model.set_active_adapter(Some(PEFT_PREFIX_ADAPTER))?;
    let gpt2 = model.gpt2.as_mut().expect("checked above");
    gpt2.prefix_takes_positions = true;
    for (l, block) in gpt2.blocks.iter_mut().enumerate() {
        let columns = |j: usize| {
            Param::from_tensor(all.clone().slice([0..tokens, j * width..(j + 1) * width]))
        };
        let slot = block
            .adapters
            .as_mut()
            .and_then(|slots| slots.loaded.get_mut(index))
            .expect("every layer holds every adapter");
        *slot = LayerAdapter {
            attention: None,
            feed_forward: None,
            parallel: None,
            prefix: Some(AttentionPrefix {
                key: columns(2 * l),
                value: columns(2 * l + 1),
            }),
            prefix_gate: None,
            phm_rule: None,
            reft: None,
        };
    }
    let mut patterns = model.adapter_patterns(PEFT_PREFIX_ADAPTER);
    patterns.push("head.*".into());
    Ok(set_trainable(model, &patterns))
}
