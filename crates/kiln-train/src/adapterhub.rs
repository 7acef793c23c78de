//! AdapterHub's adapter directories (the Python `adapters` library), both ways, for BERT:
//! `adapter_config.json` + `adapter.safetensors` (or `pytorch_adapter.bin`) as
//! `model.save_adapter` writes them, the head as `head_config.json` + `model_head.safetensors`,
//! and a fusion as `adapter_fusion_config.json` + `model_adapter_fusion.safetensors`.
//! `model.load_adapter(dir, use_safetensors=True)` loads what [`export_adapterhub`] writes; the
//! tests check the outputs against the library's on fixtures it wrote
//! (`scripts/make_adapterhub_fixtures.py`).
//!
//! Bottleneck adapters map one to one: `SeqBnConfig` (Pfeiffer), `DoubleSeqBnConfig` (Houlsby),
//! `ParBnConfig` (parallel), `leave_out` (AdapterDrop at inference, the layers left out carrying
//! a zero adapter), and `MAMConfig` (a prefix with a parallel adapter; kiln's folded prefix is
//! AdapterHub's `flat` prefix, and a reparameterised one imports as the prefixes it computes).
//! What kiln cannot represent (gating, PHM layers, adapter layer norms, invertible adapters,
//! learned scaling, adapter dropout) is refused naming the field.

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::activation::tanh;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use kiln_models::weights::{Layout, RawTensor, WeightFile};
use kiln_models::{
    Activation, AdapterConfig, AdapterInit, AttentionPrefix, BottleneckAdapter, MlpHead, Readout,
    SequenceClassifier,
};

use kiln_tuning::{MethodConfig, ParamReport, set_trainable};

use crate::checkpoint::save_params_laid_out;
use crate::error::{Result, TrainError};
use crate::peft::transposed;
use crate::trainer::{read_json, write_json};

/// An AdapterHub adapter's settings file (the name kiln's own adapter directories use too).
pub const ADAPTERHUB_CONFIG_FILE: &str = "adapter_config.json";
/// Its tensors, as `save_adapter(..., use_safetensors=True)` writes them.
pub const ADAPTERHUB_WEIGHTS_FILE: &str = "adapter.safetensors";
/// Its tensors as `save_adapter` writes them by default (a PyTorch pickle).
pub const ADAPTERHUB_TORCH_WEIGHTS_FILE: &str = "pytorch_adapter.bin";
/// The head's settings.
pub const ADAPTERHUB_HEAD_CONFIG_FILE: &str = "head_config.json";
/// The head's tensors.
pub const ADAPTERHUB_HEAD_WEIGHTS_FILE: &str = "model_head.safetensors";
/// A fusion's settings.
pub const ADAPTERHUB_FUSION_CONFIG_FILE: &str = "adapter_fusion_config.json";
/// A fusion's tensors.
pub const ADAPTERHUB_FUSION_WEIGHTS_FILE: &str = "model_adapter_fusion.safetensors";

/// The library version whose format is written.
const VERSION: &str = "adapters.1.3.0";

/// The model class the tensors are named for (`bert.encoder.layer...`).
const MODEL_CLASS: &str = "BertAdapterModel";

/// What every AdapterHub settings file holds around its `config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    config: Value,
    hidden_size: usize,
    #[serde(default)]
    model_class: Option<String>,
    #[serde(default)]
    model_name: Option<String>,
    model_type: String,
    name: String,
    #[serde(default)]
    version: Option<String>,
    /// Fusion configs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adapter_names: Option<Vec<String>>,
}

/// Whether `dir` holds an AdapterHub adapter: its `adapter_config.json` has AdapterHub's
/// `config` object and `model_type` (kiln's own adapter files and peft's have neither).
pub fn is_adapterhub_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(ADAPTERHUB_CONFIG_FILE))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .is_some_and(|v| {
            v.get("config").is_some_and(Value::is_object) && v.get("model_type").is_some()
        })
}

/// An AdapterHub adapter read into kiln's terms.
#[derive(Debug, Clone)]
pub struct AdapterHubAdapter {
    /// Its name in AdapterHub (the key inside tensor names).
    pub name: String,
    /// Width of the model it was made for.
    pub hidden_size: usize,
    /// Its layout in kiln.
    pub layout: AdapterConfig,
    /// Layers AdapterHub leaves without the adapter (`leave_out`).
    pub leave_out: Vec<usize>,
    /// The kiln method it corresponds to (`pfeiffer`, `houlsby`, `parallel`, `mam`).
    pub method: &'static str,
    /// The prefix MLP's hidden width when the prefix is reparameterised (not `flat`).
    pub prefix_hidden: Option<usize>,
}

fn refuse(path: &Path, message: String) -> TrainError {
    TrainError::checkpoint(path, message)
}

fn field<'a>(config: &'a Value, name: &str) -> Option<&'a Value> {
    config.get(name).filter(|v| !v.is_null())
}

fn flag(config: &Value, name: &str) -> bool {
    field(config, name)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn number(config: &Value, name: &str) -> Option<f64> {
    field(config, name).and_then(Value::as_f64)
}

/// The bottleneck part of an AdapterHub config, checked field by field.
fn bottleneck_layout(
    config: &Value,
    hidden: usize,
    path: &Path,
) -> Result<(AdapterConfig, Vec<usize>)> {
    for (name, unsupported) in [
        ("use_gating", flag(config, "use_gating")),
        ("phm_layer", flag(config, "phm_layer")),
        ("ln_before", flag(config, "ln_before")),
        ("ln_after", flag(config, "ln_after")),
        (
            "adapter_residual_before_ln",
            flag(config, "adapter_residual_before_ln"),
        ),
        ("cross_adapter", flag(config, "cross_adapter")),
        ("inv_adapter", field(config, "inv_adapter").is_some()),
        ("dropout", number(config, "dropout").unwrap_or(0.0) != 0.0),
        (
            "stochastic_depth",
            number(config, "stochastic_depth").unwrap_or(0.0) != 0.0,
        ),
        (
            "original_ln_after",
            !field(config, "original_ln_after")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        ),
        (
            "residual_before_ln",
            field(config, "residual_before_ln") != Some(&Value::Bool(true)),
        ),
    ] {
        if unsupported {
            return Err(refuse(
                path,
                format!(
                    "`{name}` = {}: kiln's adapters have no such variant",
                    config[name]
                ),
            ));
        }
    }
    let reduction = match field(config, "reduction_factor") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::Object(map)) if map.len() == 1 => map.get("default").and_then(Value::as_f64),
        _ => None,
    }
    .filter(|r| *r > 0.0)
    .ok_or_else(|| {
        refuse(
            path,
            "`reduction_factor` must be one positive number (per-layer factors are not supported)"
                .into(),
        )
    })?;
    // As the library: `int(hidden // reduction_factor)`.
    let bottleneck = (hidden as f64 / reduction).floor() as usize;
    let activation: Activation = field(config, "non_linearity")
        .and_then(Value::as_str)
        .unwrap_or("relu")
        .to_lowercase()
        .parse()
        .map_err(|e: String| refuse(path, format!("`non_linearity`: {e}")))?;
    let scale = match field(config, "scaling") {
        None => 1.0,
        Some(v) => v.as_f64().ok_or_else(|| {
            refuse(
                path,
                format!("`scaling` = {v}: only a fixed number is supported"),
            )
        })?,
    };
    let parallel = flag(config, "is_parallel");
    let (attention, output) = (flag(config, "mh_adapter"), flag(config, "output_adapter"));
    if parallel && attention {
        return Err(refuse(
            path,
            "a parallel adapter beside the attention (`mh_adapter` with `is_parallel`) is not \
             supported"
                .into(),
        ));
    }
    let init = match field(config, "init_weights").and_then(Value::as_str) {
        Some("mam_adapter") => AdapterInit::Lora,
        _ => AdapterInit::NearIdentity,
    };
    let leave_out: Vec<usize> = match field(config, "leave_out") {
        None => Vec::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| refuse(path, format!("`leave_out`: {e}")))?,
    };
    let layout = AdapterConfig {
        after_attention: attention,
        after_feed_forward: output && !parallel,
        parallel: output && parallel,
        bottleneck,
        activation,
        scale,
        init,
        prefix_len: 0,
        original_ln_before: flag(config, "original_ln_before"),
    };
    Ok((layout, leave_out))
}

/// Reads `dir`'s `adapter_config.json` as AdapterHub wrote it (for BERT).
pub fn read_adapterhub_config(dir: &Path) -> Result<AdapterHubAdapter> {
    let path = dir.join(ADAPTERHUB_CONFIG_FILE);
    let saved: Saved = read_json(&path)?;
    if saved.model_type != "bert" {
        return Err(refuse(
            &path,
            format!(
                "model_type `{}`: kiln reads AdapterHub adapters of BERT",
                saved.model_type
            ),
        ));
    }
    let hidden = saved.hidden_size;
    let config = &saved.config;
    let architecture = field(config, "architecture")
        .and_then(Value::as_str)
        .unwrap_or("bottleneck");
    let (bottleneck, prefix) = match architecture {
        "bottleneck" => (config, None),
        "union" => {
            let parts: &[Value] = config["configs"].as_array().map_or(&[], Vec::as_slice);
            let find = |kind: &str| {
                parts.iter().find(|c| {
                    field(c, "architecture")
                        .and_then(Value::as_str)
                        .unwrap_or("bottleneck")
                        == kind
                })
            };
            match (parts.len(), find("prefix_tuning"), find("bottleneck")) {
                (2, Some(prefix), Some(bottleneck)) => (bottleneck, Some(prefix)),
                _ => {
                    return Err(refuse(
                        &path,
                        "a config union other than prefix tuning + one bottleneck adapter (MAM) \
                         is not supported"
                            .into(),
                    ));
                }
            }
        }
        other => {
            return Err(refuse(
                &path,
                format!("architecture `{other}`: kiln reads bottleneck adapters and MAM"),
            ));
        }
    };
    let bottleneck = bottleneck.clone();
    let (mut layout, leave_out) = bottleneck_layout(&bottleneck, hidden, &path)?;
    let mut prefix_hidden = None;
    if let Some(prefix) = prefix {
        for name in ["use_gating", "cross_prefix_only"] {
            if flag(prefix, name) {
                return Err(refuse(&path, format!("prefix `{name}` is not supported")));
            }
        }
        if field(prefix, "leave_out")
            .and_then(Value::as_array)
            .is_some_and(|l| !l.is_empty())
        {
            return Err(refuse(
                &path,
                "a prefix with `leave_out` is not supported".into(),
            ));
        }
        if field(prefix, "non_linearity")
            .and_then(Value::as_str)
            .unwrap_or("tanh")
            != "tanh"
        {
            return Err(refuse(
                &path,
                "a prefix MLP other than tanh is not supported".into(),
            ));
        }
        layout.prefix_len = field(prefix, "prefix_length")
            .and_then(Value::as_u64)
            .filter(|&l| l > 0)
            .ok_or_else(|| refuse(&path, "the prefix needs a positive `prefix_length`".into()))?
            as usize;
        if !flag(prefix, "flat") {
            prefix_hidden = field(prefix, "bottleneck_size")
                .and_then(Value::as_u64)
                .map(|m| m as usize);
        }
    }
    let method = match (&layout, prefix.is_some()) {
        (l, true) if l.parallel && !l.after_attention && !l.after_feed_forward => "mam",
        (l, false) if l.parallel && !l.after_attention && !l.after_feed_forward => "parallel",
        (l, false) if l.after_attention && l.after_feed_forward && !l.parallel => "houlsby",
        (l, false) if l.after_feed_forward && !l.after_attention && !l.parallel => "pfeiffer",
        _ => {
            return Err(refuse(
                &path,
                "this combination of adapter positions has no kiln method".into(),
            ));
        }
    };
    Ok(AdapterHubAdapter {
        name: saved.name,
        hidden_size: hidden,
        layout,
        leave_out,
        method,
        prefix_hidden,
    })
}

/// The AdapterHub name of one of kiln's bottleneck tensors: `slot` is `attention`,
/// `feed_forward` or `parallel`, `part` e.g. `down.weight`.
fn adapter_tensor_name(layer: usize, slot: &str, name: &str, part: &str) -> String {
    let location = if slot == "attention" {
        "attention.output"
    } else {
        "output"
    };
    // kiln's `down.weight` is the library's `adapter_down.0.weight` (a Linear, then the
    // non-linearity, in one Sequential); `up.*` is `adapter_up.*`.
    let part = match part.strip_prefix("down.") {
        Some(rest) => format!("adapter_down.0.{rest}"),
        None => format!("adapter_{part}"),
    };
    format!("bert.encoder.layer.{layer}.{location}.adapters.{name}.{part}")
}

/// `bert.encoder...` as `BertAdapterModel` names it, or `encoder...` as a bare `BertModel`
/// with adapters does.
fn lookup<'a>(file: &'a WeightFile, name: &str) -> Option<&'a RawTensor> {
    file.get(name)
        .or_else(|| name.strip_prefix("bert.").and_then(|bare| file.get(bare)))
}

fn tensor_1d(raw: &RawTensor, device: &Device) -> Tensor<1> {
    Tensor::from_data(
        TensorData::new(raw.values.clone(), [raw.values.len()]),
        device,
    )
}

/// Fills one bottleneck adapter from AdapterHub's tensors of `layer`, or zeros it where
/// AdapterHub leaves the layer out (a zero adapter adds exactly nothing).
fn fill_bottleneck(
    adapter: &mut BottleneckAdapter,
    file: &WeightFile,
    layer: usize,
    slot: &str,
    name: &str,
    left_out: bool,
    path: &Path,
) -> Result<()> {
    let device = adapter.down.weight.lazy_device();
    let [width, m] = adapter.down.weight.lazy_shape().dims::<2>();
    if left_out {
        adapter.down.weight = Param::from_tensor(Tensor::zeros([width, m], &device));
        adapter.up.weight = Param::from_tensor(Tensor::zeros([m, width], &device));
        adapter.down.bias = Some(Param::from_tensor(Tensor::zeros([m], &device)));
        adapter.up.bias = Some(Param::from_tensor(Tensor::zeros([width], &device)));
        return Ok(());
    }
    let get = |part: &str, shape: &[usize]| -> Result<&RawTensor> {
        let key = adapter_tensor_name(layer, slot, name, part);
        let raw = lookup(file, &key).ok_or_else(|| refuse(path, format!("`{key}` is missing")))?;
        if raw.shape != shape {
            return Err(refuse(
                path,
                format!("`{key}` is {:?}; the config gives {shape:?}", raw.shape),
            ));
        }
        Ok(raw)
    };
    adapter.down.weight = Param::from_tensor(transposed(
        &get("down.weight", &[m, width])?.values,
        [m, width],
        &device,
    ));
    adapter.down.bias = Some(Param::from_tensor(tensor_1d(
        get("down.bias", &[m])?,
        &device,
    )));
    adapter.up.weight = Param::from_tensor(transposed(
        &get("up.weight", &[width, m])?.values,
        [width, m],
        &device,
    ));
    adapter.up.bias = Some(Param::from_tensor(tensor_1d(
        get("up.bias", &[width])?,
        &device,
    )));
    Ok(())
}

/// The per-layer key and value rows `[l, h]` of an AdapterHub prefix: a `flat` one's
/// `control_trans` vector, or what a reparameterised one computes,
/// `W2·tanh(W1·wte + b1) + b2`, both laid out `[l, L, 2, h]`.
fn read_prefixes(
    file: &WeightFile,
    name: &str,
    len: usize,
    layers: usize,
    width: usize,
    device: &Device,
    path: &Path,
) -> Result<Vec<(Tensor<2>, Tensor<2>)>> {
    let suffix = |part: &str| format!("prefix_tunings.{name}.self_prefix.{part}");
    let find = |part: &str| -> Option<&RawTensor> {
        let wanted = suffix(part);
        file.names()
            .filter(|n| n.ends_with(&wanted))
            .min_by_key(|n| n.len())
            .and_then(|n| file.get(n))
    };
    let rows = len * layers * 2 * width;
    let flat: Tensor<2> = match (find("control_trans"), find("wte.weight")) {
        (Some(flat), _) if flat.values.len() == rows => Tensor::from_data(
            TensorData::new(flat.values.clone(), [len, layers * 2 * width]),
            device,
        ),
        (_, Some(wte)) => {
            let part = |p: &str| {
                find(p).ok_or_else(|| refuse(path, format!("`{}` is missing", suffix(p))))
            };
            let (w1, b1) = (
                part("control_trans.0.weight")?,
                part("control_trans.0.bias")?,
            );
            let (w2, b2) = (
                part("control_trans.2.weight")?,
                part("control_trans.2.bias")?,
            );
            let mid = b1.values.len();
            if wte.shape != [len, width]
                || w1.shape != [mid, width]
                || w2.shape != [layers * 2 * width, mid]
            {
                return Err(refuse(
                    path,
                    "the prefix MLP's tensors do not fit the config".into(),
                ));
            }
            let embeddings =
                Tensor::<2>::from_data(TensorData::new(wte.values.clone(), [len, width]), device);
            let hidden = tanh(
                embeddings.matmul(transposed(&w1.values, [mid, width], device))
                    + tensor_1d(b1, device).unsqueeze_dim(0),
            );
            hidden.matmul(transposed(&w2.values, [layers * 2 * width, mid], device))
                + tensor_1d(b2, device).unsqueeze_dim(0)
        }
        _ => return Err(refuse(path, format!("no prefix tensors for `{name}`"))),
    };
    let per_layer = flat.reshape([len, layers, 2, width]);
    Ok((0..layers)
        .map(|i| {
            let rows = |k: usize| {
                per_layer
                    .clone()
                    .narrow(1, i, 1)
                    .narrow(2, k, 1)
                    .reshape([len, width])
            };
            (rows(0), rows(1))
        })
        .collect())
}

fn open_adapter_weights(dir: &Path) -> Result<WeightFile> {
    let safetensors = dir.join(ADAPTERHUB_WEIGHTS_FILE);
    let path = if safetensors.is_file() {
        safetensors
    } else {
        dir.join(ADAPTERHUB_TORCH_WEIGHTS_FILE)
    };
    WeightFile::open(&path).map_err(|e| refuse(&path, e.to_string()))
}

/// Loads the AdapterHub adapter in `dir` into the adapter called `kiln_name` of `model`, whose
/// layout must be the adapter's (as the method built from [`read_adapterhub_config`] makes
/// it), and its head where `dir` holds one. Returns whether a head was loaded.
pub fn load_adapterhub(
    model: &mut SequenceClassifier,
    kiln_name: &str,
    dir: &Path,
) -> Result<bool> {
    require_bert(model)?;
    let adapter = read_adapterhub_config(dir)?;
    let config_path = dir.join(ADAPTERHUB_CONFIG_FILE);
    if adapter.hidden_size != model.hidden_size() {
        return Err(refuse(
            &config_path,
            format!(
                "the adapter is for hidden size {}; this model has {}",
                adapter.hidden_size,
                model.hidden_size()
            ),
        ));
    }
    let index = model
        .adapter_index(kiln_name)
        .ok_or_else(|| TrainError::Invalid(format!("the model holds no adapter `{kiln_name}`")))?;
    if model.adapters[index].config != adapter.layout {
        return Err(refuse(
            &config_path,
            format!(
                "the adapter's layout {:?} differs from the method's {:?}",
                adapter.layout, model.adapters[index].config
            ),
        ));
    }
    let file = open_adapter_weights(dir)?;
    let layers = model.num_layers();
    let width = model.hidden_size();
    let device = model.head.output.weight.lazy_device();
    let prefixes = if adapter.layout.prefix_len > 0 {
        Some(read_prefixes(
            &file,
            &adapter.name,
            adapter.layout.prefix_len,
            layers,
            width,
            &device,
            file.path(),
        )?)
    } else {
        None
    };
    for (layer, slots) in model.layer_adapters_mut().into_iter().enumerate() {
        let Some(one) = slots.as_mut().map(|s| &mut s.loaded[index]) else {
            continue;
        };
        let left_out = adapter.leave_out.contains(&layer);
        for (slot, bottleneck) in [
            ("attention", one.attention.as_mut()),
            ("feed_forward", one.feed_forward.as_mut()),
            ("parallel", one.parallel.as_mut()),
        ] {
            if let Some(bottleneck) = bottleneck {
                fill_bottleneck(
                    bottleneck,
                    &file,
                    layer,
                    slot,
                    &adapter.name,
                    left_out,
                    file.path(),
                )?;
            }
        }
        if let (Some(prefix), Some(prefixes)) = (one.prefix.as_mut(), prefixes.as_ref()) {
            let (key, value) = prefixes[layer].clone();
            *prefix = AttentionPrefix {
                key: Param::from_tensor(key),
                value: Param::from_tensor(value),
            };
        }
    }
    load_head(model, dir, &adapter.name)
}

fn require_bert(model: &SequenceClassifier) -> Result<()> {
    if model.bert.is_none() {
        return Err(TrainError::Invalid(format!(
            "AdapterHub adapters are read and written for BERT; this model is {}",
            model.backbone_name()
        )));
    }
    Ok(())
}

/// AdapterHub's classification head settings.
#[derive(Debug, Clone, Deserialize)]
struct HeadSettings {
    head_type: String,
    num_labels: usize,
    layers: usize,
    #[serde(default)]
    activation_function: Option<String>,
    #[serde(default)]
    use_pooler: bool,
    #[serde(default = "yes")]
    bias: bool,
}

fn yes() -> bool {
    true
}

/// The readout a head of AdapterHub's reads: the pooler, else `[CLS]`.
fn head_readout(use_pooler: bool) -> Readout {
    if use_pooler {
        Readout::Pooler
    } else {
        Readout::Cls
    }
}

/// Puts `dir`'s head (when it has one) in place of `model`'s, with AdapterHub's layers and
/// non-linearity: its labels must be the model's outputs and its readout the model's. Returns
/// whether it did.
fn load_head(model: &mut SequenceClassifier, dir: &Path, name: &str) -> Result<bool> {
    let config_path = dir.join(ADAPTERHUB_HEAD_CONFIG_FILE);
    if !config_path.is_file() {
        return Ok(false);
    }
    let saved: Saved = read_json(&config_path)?;
    let head: HeadSettings = serde_json::from_value(saved.config.clone())
        .map_err(|e| refuse(&config_path, e.to_string()))?;
    if head.head_type != "classification" || !head.bias || head.layers == 0 {
        return Err(refuse(
            &config_path,
            format!(
                "head type `{}`: kiln reads classification heads with biases",
                head.head_type
            ),
        ));
    }
    let activation: Activation = head
        .activation_function
        .as_deref()
        .unwrap_or("tanh")
        .to_lowercase()
        .parse()
        .map_err(|e: String| refuse(&config_path, e))?;
    let readout = head_readout(head.use_pooler);
    let outputs = model.head.output.weight.lazy_shape().dims::<2>()[1];
    if model.readout != readout || outputs != head.num_labels {
        return Err(refuse(
            &config_path,
            format!(
                "its head reads {readout:?} into {} labels; the model reads {:?} into {outputs}: \
                 train with --readout {} on a task of {} labels",
                head.num_labels,
                model.readout,
                if head.use_pooler { "pooler" } else { "cls" },
                head.num_labels
            ),
        ));
    }
    let weights = dir.join(ADAPTERHUB_HEAD_WEIGHTS_FILE);
    let file = WeightFile::open(&weights).map_err(|e| refuse(&weights, e.to_string()))?;
    let device = model.head.output.weight.lazy_device();
    let width = model.hidden_size();
    let mut linears = Vec::with_capacity(head.layers);
    for k in 0..head.layers {
        // AdapterHub's head is `[Dropout, Linear, Activation] * (layers - 1), Dropout, Linear`.
        let index = 3 * k + 1;
        let rows = if k + 1 == head.layers {
            head.num_labels
        } else {
            width
        };
        let get = |part: &str| -> Result<&RawTensor> {
            let key = format!("heads.{name}.{index}.{part}");
            file.get(&key)
                .ok_or_else(|| refuse(&weights, format!("`{key}` is missing")))
        };
        let weight = get("weight")?;
        if weight.shape != [rows, width] {
            return Err(refuse(
                &weights,
                format!("`heads.{name}.{index}.weight` is {:?}", weight.shape),
            ));
        }
        linears.push(burn::nn::Linear {
            weight: Param::from_tensor(transposed(&weight.values, [rows, width], &device)),
            bias: Some(Param::from_tensor(tensor_1d(get("bias")?, &device))),
        });
    }
    let output = linears.pop().expect("at least one layer");
    model.head = MlpHead {
        hidden: linears,
        output,
        dropout: model.head.dropout.clone(),
        activation,
    };
    Ok(true)
}

/// What [`export_adapterhub`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterHubExport {
    /// The adapter's name in AdapterHub.
    pub name: String,
    /// Tensors written (adapter and head).
    pub tensors: usize,
    /// The head went in as an AdapterHub classification head.
    pub with_head: bool,
}

/// AdapterHub's config for one of kiln's layouts (`leave_out`: layers without it).
fn adapterhub_config(layout: &AdapterConfig, width: usize, leave_out: &[usize]) -> Result<Value> {
    let slots = [
        layout.after_attention,
        layout.after_feed_forward,
        layout.parallel,
    ];
    let valid = match slots {
        [true, true, false] | [false, true, false] => true,
        [false, false, true] => !layout.original_ln_before,
        _ => false,
    };
    if !valid || layout.bottleneck == 0 || (layout.prefix_len > 0 && !layout.parallel) {
        return Err(TrainError::Invalid(format!(
            "this adapter's layout has no AdapterHub config (Houlsby, Pfeiffer, parallel and MAM \
             layouts do): {layout:?}"
        )));
    }
    let bottleneck = json!({
        "adapter_residual_before_ln": false,
        "cross_adapter": false,
        "dropout": 0.0,
        "factorized_phm_W": true,
        "factorized_phm_rule": false,
        "hypercomplex_nonlinearity": "glorot-uniform",
        "init_weights": if layout.init == AdapterInit::Lora { "mam_adapter" } else { "bert" },
        "init_weights_seed": null,
        "inv_adapter": null,
        "inv_adapter_reduction_factor": null,
        "is_parallel": layout.parallel,
        "learn_phm": true,
        "leave_out": leave_out,
        "ln_after": false,
        "ln_before": false,
        "mh_adapter": layout.after_attention,
        "non_linearity": activation_name(layout.activation),
        "original_ln_after": true,
        "original_ln_before": layout.original_ln_before,
        "output_adapter": layout.after_feed_forward || layout.parallel,
        "phm_bias": true,
        "phm_c_init": "normal",
        "phm_dim": 4,
        "phm_init_range": 0.0001,
        "phm_layer": false,
        "phm_rank": 1,
        // The library computes the width as `int(hidden // reduction_factor)`.
        "reduction_factor": width as f64 / layout.bottleneck as f64,
        "residual_before_ln": true,
        "scaling": layout.scale,
        "shared_W_phm": false,
        "shared_phm_rule": true,
        "stochastic_depth": 0.0,
        "use_gating": false,
    });
    if (width as f64 / (width as f64 / layout.bottleneck as f64)).floor() as usize
        != layout.bottleneck
    {
        return Err(TrainError::Invalid(format!(
            "a bottleneck of {} on width {width} has no exact AdapterHub reduction factor",
            layout.bottleneck
        )));
    }
    if layout.prefix_len == 0 {
        return Ok(bottleneck);
    }
    let prefix = json!({
        "architecture": "prefix_tuning",
        "bottleneck_size": 512,
        "cross_prefix": true,
        "dropout": 0.0,
        "encoder_prefix": true,
        "flat": true,
        "init_weights_seed": null,
        "leave_out": [],
        "non_linearity": "tanh",
        "prefix_length": layout.prefix_len,
        "shared_gating": true,
        "use_gating": false,
    });
    Ok(json!({"architecture": "union", "configs": [prefix, bottleneck]}))
}

fn activation_name(activation: Activation) -> String {
    serde_json::to_value(activation)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "relu".into())
}

fn saved(config: Value, model: &SequenceClassifier, model_name: &str, name: &str) -> Saved {
    Saved {
        config,
        hidden_size: model.hidden_size(),
        model_class: Some(MODEL_CLASS.into()),
        model_name: Some(model_name.into()),
        model_type: "bert".into(),
        name: name.into(),
        version: Some(VERSION.into()),
        adapter_names: None,
    }
}

/// Writes the adapter called `name` of `model` (BERT) as an AdapterHub adapter directory in
/// `out`, and the head as its classification head where AdapterHub can express it (a `[CLS]`
/// or pooler readout). `model_name` is recorded as the base model. AdapterDrop's inference
/// layers become `leave_out`.
pub fn export_adapterhub(
    model: &SequenceClassifier,
    name: &str,
    out: &Path,
    model_name: &str,
) -> Result<AdapterHubExport> {
    write_adapter(model, name, out, model_name, true)
}

fn write_adapter(
    model: &SequenceClassifier,
    name: &str,
    out: &Path,
    model_name: &str,
    head: bool,
) -> Result<AdapterHubExport> {
    require_bert(model)?;
    let index = model
        .adapter_index(name)
        .ok_or_else(|| TrainError::Invalid(format!("the model holds no adapter `{name}`")))?;
    let layout = &model.adapters[index].config;
    let dropped = model.adapter_drop_inference();
    let leave_out: Vec<usize> = (0..dropped).collect();
    let config = adapterhub_config(layout, model.hidden_size(), &leave_out)?;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let marker = format!(".adapters.loaded.{index}.");
    let width = model.hidden_size();
    let layers = model.num_layers();
    let mut tensors = save_params_laid_out(model, &out.join(ADAPTERHUB_WEIGHTS_FILE), |path| {
        let (layer, rest) = path.strip_prefix("bert.layers.")?.split_once(&marker)?;
        let layer: usize = layer.parse().ok()?;
        if leave_out.contains(&layer) {
            return None;
        }
        let (slot, part) = rest.split_once('.')?;
        if slot == "prefix" {
            return None;
        }
        let layout = if part.ends_with("weight") {
            Layout::Transposed
        } else {
            Layout::Same
        };
        Some((adapter_tensor_name(layer, slot, name, part), layout))
    })?;
    if layout.prefix_len > 0 {
        tensors += write_flat_prefix(model, index, name, out, layers, width)?;
    }
    write_json(
        &out.join(ADAPTERHUB_CONFIG_FILE),
        &saved(config, model, model_name, name),
    )?;
    let with_head = head && matches!(model.readout, Readout::Cls | Readout::Pooler);
    if with_head {
        tensors += export_head(model, name, out, model_name)?;
    }
    Ok(AdapterHubExport {
        name: name.into(),
        tensors,
        with_head,
    })
}

/// AdapterHub keeps a MAM adapter's prefix apart from its bottleneck weights: the flat prefix
/// goes in `adapter.safetensors` too, beside them, as `control_trans` `[l·L·2·h]`.
fn write_flat_prefix(
    model: &SequenceClassifier,
    index: usize,
    name: &str,
    out: &Path,
    layers: usize,
    width: usize,
) -> Result<usize> {
    let mut rows = Vec::new();
    for slots in model.backbone().layer_adapters() {
        let prefix = slots
            .as_ref()
            .and_then(|s| s.loaded[index].prefix.as_ref())
            .ok_or_else(|| TrainError::Invalid("a MAM adapter without its prefix".into()))?;
        rows.push(Tensor::stack::<3>(
            vec![prefix.key.val(), prefix.value.val()],
            1,
        ));
    }
    let len = rows[0].dims()[0];
    // [l, L, 2, h]: every layer's key then value row for each prefix position.
    let flat = Tensor::stack::<4>(rows, 1).reshape([len * layers * 2 * width]);
    let values: Vec<f32> = flat
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::Invalid(format!("cannot read the prefix: {e:?}")))?;
    let path = out.join(ADAPTERHUB_WEIGHTS_FILE);
    let mut named = read_back(&path)?;
    named.push((
        format!("bert.prefix_tuning.prefix_tunings.{name}.self_prefix.control_trans"),
        vec![values.len()],
        values,
    ));
    write_named(&path, &named)?;
    Ok(1)
}

type Named = Vec<(String, Vec<usize>, Vec<f32>)>;

fn read_back(path: &Path) -> Result<Named> {
    let file = WeightFile::open(path).map_err(|e| refuse(path, e.to_string()))?;
    let mut names: Vec<String> = file.names().map(str::to_string).collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|n| {
            let raw = file.get(&n).expect("listed by the file").clone();
            (n, raw.shape, raw.values)
        })
        .collect())
}

fn write_named(path: &Path, named: &Named) -> Result<()> {
    let bytes: Vec<Vec<u8>> = named
        .iter()
        .map(|(_, _, v)| crate::checkpoint::f32_bytes(v))
        .collect();
    crate::checkpoint::write_f32_tensors(
        path,
        named
            .iter()
            .zip(&bytes)
            .map(|((name, shape, _), bytes)| (name.as_str(), shape.as_slice(), bytes.as_slice())),
        Some([("format".to_string(), "pt".to_string())].into()),
    )
}

/// Writes the head as AdapterHub's classification head called `name`.
fn export_head(
    model: &SequenceClassifier,
    name: &str,
    out: &Path,
    model_name: &str,
) -> Result<usize> {
    let head = &model.head;
    let layers = head.hidden.len() + 1;
    let outputs = head.output.weight.lazy_shape().dims::<2>()[1];
    let labels: serde_json::Map<String, Value> = (0..outputs)
        .map(|i| (format!("LABEL_{i}"), json!(i)))
        .collect();
    let config = json!({
        "activation_function": activation_name(head.activation),
        "bias": true,
        "dropout_prob": head.dropout.prob,
        "head_type": "classification",
        "label2id": labels,
        "layers": layers,
        "num_labels": outputs,
        "use_pooler": model.readout == Readout::Pooler,
    });
    let tensors = save_params_laid_out(model, &out.join(ADAPTERHUB_HEAD_WEIGHTS_FILE), |path| {
        let rest = path.strip_prefix("head.")?;
        let (k, part) = if let Some(part) = rest.strip_prefix("output.") {
            (layers - 1, part)
        } else {
            let (k, part) = rest.strip_prefix("hidden.")?.split_once('.')?;
            (k.parse().ok()?, part)
        };
        let layout = if part == "weight" {
            Layout::Transposed
        } else {
            Layout::Same
        };
        Some((format!("heads.{name}.{}.{part}", 3 * k + 1), layout))
    })?;
    write_json(
        &out.join(ADAPTERHUB_HEAD_CONFIG_FILE),
        &saved(config, model, model_name, name),
    )?;
    Ok(tensors)
}

/// Writes `model`'s AdapterFusion (BERT) for AdapterHub: each fused adapter in `out/NAME/` and
/// the fusion in `out/fusion/`, named `a,b` as the library names a fusion of adapters `a` and
/// `b`. Returns the directories written.
pub fn export_adapterhub_fusion(
    model: &SequenceClassifier,
    out: &Path,
    model_name: &str,
) -> Result<Vec<PathBuf>> {
    require_bert(model)?;
    let names: Vec<String> = model.adapters.iter().map(|a| a.name.clone()).collect();
    let fusion = model
        .backbone()
        .layer_adapters()
        .into_iter()
        .flatten()
        .find_map(|s| s.fusion.as_ref())
        .ok_or_else(|| TrainError::Invalid("the model has no AdapterFusion to export".into()))?;
    let score_dropout = fusion.score_dropout.prob;
    let regularization = fusion.value_regularization > 0.0;
    let mut written = Vec::new();
    for name in &names {
        let dir = out.join(name);
        // The head is the fusion's task's, not any one adapter's.
        write_adapter(model, name, &dir, model_name, false)?;
        written.push(dir);
    }
    let fusion_name = names.join(",");
    let dir = out.join("fusion");
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    save_params_laid_out(model, &dir.join(ADAPTERHUB_FUSION_WEIGHTS_FILE), |path| {
        let (layer, part) = path
            .strip_prefix("bert.layers.")?
            .split_once(".adapters.fusion.")?;
        if part.starts_with("score_dropout") {
            return None;
        }
        let layout = if part.ends_with("weight") {
            Layout::Transposed
        } else {
            Layout::Same
        };
        Some((
            format!("bert.encoder.layer.{layer}.output.adapter_fusion_layer.{fusion_name}.{part}"),
            layout,
        ))
    })?;
    let config = json!({
        "dropout_prob": score_dropout,
        "key": true,
        "query": true,
        "query_before_ln": false,
        "regularization": regularization,
        "residual_before": false,
        "temperature": false,
        "value": true,
        "value_before_softmax": true,
        "value_initialized": true,
    });
    let mut fusion_saved = saved(config, model, model_name, &fusion_name);
    fusion_saved.adapter_names = Some(names);
    write_json(&dir.join(ADAPTERHUB_FUSION_CONFIG_FILE), &fusion_saved)?;
    written.push(dir);
    Ok(written)
}

/// Loads an AdapterHub fusion directory (`adapter_fusion_config.json`) into `model`, whose
/// fusion must be over the same adapters in the same order.
pub fn load_adapterhub_fusion(model: &mut SequenceClassifier, dir: &Path) -> Result<()> {
    require_bert(model)?;
    let path = dir.join(ADAPTERHUB_FUSION_CONFIG_FILE);
    let saved: Saved = read_json(&path)?;
    let config = &saved.config;
    for (name, wanted) in [
        ("query", true),
        ("key", true),
        ("value", true),
        ("value_before_softmax", true),
        ("query_before_ln", false),
        ("residual_before", false),
        ("temperature", false),
    ] {
        if flag(config, name) != wanted {
            return Err(refuse(
                &path,
                format!(
                    "`{name}` = {}: kiln's fusion is AdapterHub's dynamic fusion",
                    config[name]
                ),
            ));
        }
    }
    let names: Vec<String> = model.adapters.iter().map(|a| a.name.clone()).collect();
    if saved.adapter_names.as_ref() != Some(&names) {
        return Err(refuse(
            &path,
            format!(
                "it fuses {:?}; the model's adapters are {names:?}",
                saved.adapter_names.unwrap_or_default()
            ),
        ));
    }
    let weights = dir.join(ADAPTERHUB_FUSION_WEIGHTS_FILE);
    let file = WeightFile::open(&weights).map_err(|e| refuse(&weights, e.to_string()))?;
    let fusion_name = &saved.name;
    for (layer, slots) in model.layer_adapters_mut().into_iter().enumerate() {
        let Some(fusion) = slots.as_mut().and_then(|s| s.fusion.as_mut()) else {
            continue;
        };
        let device = fusion.query.weight.lazy_device();
        let width = fusion.query.weight.lazy_shape().dims::<2>()[0];
        let get = |part: &str| -> Result<&RawTensor> {
            let key = format!(
                "bert.encoder.layer.{layer}.output.adapter_fusion_layer.{fusion_name}.{part}"
            );
            lookup(&file, &key).ok_or_else(|| refuse(&weights, format!("`{key}` is missing")))
        };
        for (linear, part) in [(&mut fusion.query, "query"), (&mut fusion.key, "key")] {
            linear.weight = Param::from_tensor(transposed(
                &get(&format!("{part}.weight"))?.values,
                [width, width],
                &device,
            ));
            linear.bias = Some(Param::from_tensor(tensor_1d(
                get(&format!("{part}.bias"))?,
                &device,
            )));
        }
        fusion.value.weight = Param::from_tensor(transposed(
            &get("value.weight")?.values,
            [width, width],
            &device,
        ));
    }
    Ok(())
}

/// The kiln method an AdapterHub adapter directory corresponds to, with its shape as options
/// (bottleneck, non-linearity, scale, prefix rows; `leave_out` as AdapterDrop's inference
/// layers), for a run that starts from it. `method` must be the adapter's (`adapter-drop` may
/// stand for a Pfeiffer adapter with `leave_out`).
pub fn method_from_adapterhub(method: &str, dir: &Path) -> Result<MethodConfig> {
    let adapter = read_adapterhub_config(dir)?;
    let layout = &adapter.layout;
    let mut options: Vec<(&str, String)> = vec![
        ("bottleneck", layout.bottleneck.to_string()),
        ("adapter-activation", activation_name(layout.activation)),
        ("adapter-name", adapter.name.clone()),
        // AdapterHub trains no layer norm with its adapters.
        ("train-norms", "false".to_string()),
    ];
    let dropped = adapter.leave_out.len();
    let contiguous = adapter.leave_out.iter().enumerate().all(|(i, &l)| i == l);
    match (method, adapter.method) {
        ("pfeiffer" | "houlsby", found) if found == method => {}
        ("adapter-drop", "pfeiffer") if contiguous && dropped > 0 => {
            options.push(("drop-layers", dropped.to_string()));
        }
        ("parallel", "parallel") => options.push(("scale", layout.scale.to_string())),
        ("mam", "mam") => options.extend([
            ("scale", layout.scale.to_string()),
            ("prefix-len", layout.prefix_len.to_string()),
            // The prefix arrives as the rows it computes (see `load_adapterhub`).
            ("prefix-hidden", "0".to_string()),
        ]),
        (method, found) => {
            return Err(TrainError::Invalid(format!(
                "{}: an AdapterHub {found} adapter{}; start it with --method {found}{} (got \
                 --method {method})",
                dir.join(ADAPTERHUB_CONFIG_FILE).display(),
                if dropped > 0 { " with leave_out" } else { "" },
                if dropped > 0 && contiguous && found == "pfeiffer" {
                    " or adapter-drop"
                } else {
                    ""
                },
            )));
        }
    }
    let options: Vec<(&str, &str)> = options.iter().map(|(f, t)| (*f, t.as_str())).collect();
    Ok(MethodConfig::parse(method, &options)?)
}

/// Loads the AdapterHub adapter in `dir` into the adapter `method` put in `model` (see
/// [`method_from_adapterhub`]), its head too where it has one, and makes what the method trains
/// trainable again.
pub fn import_adapterhub(
    model: SequenceClassifier,
    method: &MethodConfig,
    dir: &Path,
) -> Result<(SequenceClassifier, ParamReport)> {
    let name = method
        .method()
        .adapter_name()
        .map(str::to_string)
        .ok_or_else(|| {
            TrainError::Invalid(format!(
                "--method {} holds no adapter an AdapterHub adapter could fill",
                method.name()
            ))
        })?;
    let mut model = model;
    load_adapterhub(&mut model, &name, dir)?;
    let patterns = method.method().trainable_patterns(&model);
    Ok(set_trainable(model, &patterns))
}
