//! AdapterHub adapters, heads and fusions loaded into kiln's slots.

use std::path::Path;

use burn::module::Param;
use burn::tensor::activation::tanh;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;

use kiln_models::weights::{RawTensor, WeightFile};
use kiln_models::{
    Activation, AdapterProjection, AttentionPrefix, BottleneckAdapter, MlpHead, Readout,
    ReftIntervention, SequenceClassifier,
};
use kiln_tuning::{MethodConfig, ParamReport, set_trainable};

use crate::error::{Result, TrainError};
use crate::peft::transposed;
use crate::trainer::read_json;

use super::reft::rotation_from_adapterhub;
use super::{
    ADAPTERHUB_CONFIG_FILE, ADAPTERHUB_FUSION_CONFIG_FILE, ADAPTERHUB_FUSION_WEIGHTS_FILE,
    ADAPTERHUB_HEAD_CONFIG_FILE, ADAPTERHUB_HEAD_WEIGHTS_FILE, ADAPTERHUB_TORCH_WEIGHTS_FILE,
    ADAPTERHUB_WEIGHTS_FILE, Saved, adapter_tensor_name, flag, lookup, read_adapterhub_config,
    refuse, require_bert, tensor_1d,
};

/// Fills one bottleneck adapter from AdapterHub's tensors of `layer`, or zeros it where
/// AdapterHub leaves the layer out (a zero adapter adds exactly nothing).
pub(super) fn fill_bottleneck(
    adapter: &mut BottleneckAdapter,
    file: &WeightFile,
    layer: usize,
    slot: &str,
    name: &str,
    left_out: bool,
    path: &Path,
) -> Result<()> {
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
    for (part, projection) in [("down", &mut adapter.down), ("up", &mut adapter.up)] {
        fill_projection(projection, part, left_out, &get)?;
    }
    if let Some(gate) = adapter.gate.as_mut() {
        let device = gate.weight.lazy_device();
        let width = gate.weight.lazy_shape().dims::<2>()[0];
        if left_out {
            gate.weight = Param::from_tensor(Tensor::zeros([width, 1], &device));
            gate.bias = Some(Param::from_tensor(Tensor::zeros([1], &device)));
        } else {
            let weight = get("gate.weight", &[1, width])?;
            gate.weight = Param::from_tensor(transposed(&weight.values, [1, width], &device));
            gate.bias = Some(Param::from_tensor(tensor_1d(
                get("gate.bias", &[1])?,
                &device,
            )));
        }
    }
    Ok(())
}

/// One projection (`part`: `down` or `up`) from AdapterHub's tensors: a `Linear`'s weight and
/// bias, or a PHM layer's `W_left`, `W_right` and `b`; zeros where the layer is left out.
fn fill_projection<'a>(
    projection: &mut AdapterProjection,
    part: &str,
    left_out: bool,
    get: &impl Fn(&str, &[usize]) -> Result<&'a RawTensor>,
) -> Result<()> {
    let [d_in, d_out] = projection.dims();
    let device = match (&projection.weight, &projection.phm) {
        (Some(weight), _) => weight.lazy_device(),
        (None, Some(phm)) => phm.left.lazy_device(),
        (None, None) => return Ok(()),
    };
    if let Some(phm) = projection.phm.as_mut() {
        let [n, i, r] = phm.left.lazy_shape().dims::<3>();
        let o = d_out / n.max(1);
        let (left, right, bias) = if left_out {
            (
                Tensor::zeros([n, i, r], &device),
                Tensor::zeros([n, r, o], &device),
                Tensor::zeros([d_out], &device),
            )
        } else {
            let read = |key: &str, shape: [usize; 3]| -> Result<Tensor<3>> {
                let raw = get(&format!("{part}.{key}"), &shape)?;
                Ok(Tensor::from_data(
                    TensorData::new(raw.values.clone(), shape),
                    &device,
                ))
            };
            (
                read("W_left", [n, i, r])?,
                read("W_right", [n, r, o])?,
                tensor_1d(get(&format!("{part}.b"), &[d_out])?, &device),
            )
        };
        phm.left = Param::from_tensor(left);
        phm.right = Param::from_tensor(right);
        projection.bias = Some(Param::from_tensor(bias));
        return Ok(());
    }
    let (weight, bias) = if left_out {
        (
            Tensor::zeros([d_in, d_out], &device),
            Tensor::zeros([d_out], &device),
        )
    } else {
        (
            transposed(
                &get(&format!("{part}.weight"), &[d_out, d_in])?.values,
                [d_out, d_in],
                &device,
            ),
            tensor_1d(get(&format!("{part}.bias"), &[d_out])?, &device),
        )
    };
    projection.weight = Some(Param::from_tensor(weight));
    projection.bias = Some(Param::from_tensor(bias));
    Ok(())
}

/// The per-layer key and value rows `[l, h]` of an AdapterHub prefix: a `flat` one's
/// `control_trans` vector, or what a reparameterised one computes,
/// `W2·tanh(W1·wte + b1) + b2`, both laid out `[l, L, 2, h]`.
pub(super) fn read_prefixes(
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

pub(super) fn open_adapter_weights(dir: &Path) -> Result<WeightFile> {
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
        if let Some(rule) = one.phm_rule.as_mut() {
            let n = rule.lazy_shape().dims::<3>()[0];
            let key = format!("bert.shared_parameters.{}.phm_rule", adapter.name);
            let raw = lookup(&file, &key)
                .filter(|raw| raw.shape == [n, n, n])
                .ok_or_else(|| {
                    refuse(file.path(), format!("`{key}` [{n}, {n}, {n}] is missing"))
                })?;
            *rule = Param::from_tensor(Tensor::from_data(
                TensorData::new(raw.values.clone(), [n, n, n]),
                &device,
            ));
        }
        if let Some(reft) = one.reft.as_mut() {
            fill_reft(reft, &file, layer, &adapter.name, &device)?;
        }
        if let Some(gate) = one.prefix_gate.as_mut() {
            let key = |part: &str| {
                format!(
                    "bert.encoder.layer.{layer}.attention.self.prefix_tuning.prefix_gates.{}.{part}",
                    adapter.name
                )
            };
            fill_gate(gate, &file, &key("weight"), &key("bias"), &device)?;
        }
    }
    if adapter.lora_rank.is_some() {
        fill_gated_lora(model, &file, &adapter.name, &device)?;
    }
    load_head(model, dir, &adapter.name)
}

/// A UniPELT gate `[h, 1]` from AdapterHub's `weight` `[1, h]` and `bias` `[1]`.
fn fill_gate(
    gate: &mut burn::nn::Linear,
    file: &WeightFile,
    weight: &str,
    bias: &str,
    device: &Device,
) -> Result<()> {
    let width = gate.weight.lazy_shape().dims::<2>()[0];
    let read = |key: &str, shape: &[usize]| -> Result<&RawTensor> {
        lookup(file, key)
            .filter(|raw| raw.shape == shape)
            .ok_or_else(|| refuse(file.path(), format!("`{key}` {shape:?} is missing")))
    };
    gate.weight = Param::from_tensor(transposed(
        &read(weight, &[1, width])?.values,
        [1, width],
        device,
    ));
    gate.bias = Some(Param::from_tensor(tensor_1d(read(bias, &[1])?, device)));
    Ok(())
}

/// UniPELT's gated LoRA deltas of every layer's query and value from AdapterHub's `loras`.
fn fill_gated_lora(
    model: &mut SequenceClassifier,
    file: &WeightFile,
    name: &str,
    device: &Device,
) -> Result<()> {
    for (path, projection) in model.projections_mut() {
        let Some(delta) = projection.lora.as_mut() else {
            continue;
        };
        // `bert.layers.{i}.attention.{query,value}`, as AdapterHub's `attention.self.*`.
        let Some((layer, matrix)) = path
            .strip_prefix("bert.layers.")
            .and_then(|rest| rest.split_once(".attention."))
        else {
            continue;
        };
        let key = |part: &str| {
            format!("bert.encoder.layer.{layer}.attention.self.{matrix}.loras.{name}.{part}")
        };
        let [d_in, rank] = delta.a.lazy_shape().dims::<2>();
        let d_out = delta.b.lazy_shape().dims::<2>()[1];
        let read = |part: &str, shape: [usize; 2]| -> Result<Tensor<2>> {
            let key = key(part);
            let raw = lookup(file, &key)
                .filter(|raw| raw.shape == shape)
                .ok_or_else(|| refuse(file.path(), format!("`{key}` {shape:?} is missing")))?;
            Ok(transposed(&raw.values, shape, device))
        };
        delta.a = Param::from_tensor(read("lora_A", [rank, d_in])?);
        delta.b = Param::from_tensor(read("lora_B", [d_out, rank])?);
        if let Some(gate) = delta.gate.as_mut() {
            fill_gate(gate, file, &key("gate.weight"), &key("gate.bias"), device)?;
        }
    }
    Ok(())
}

/// Fills one layer's LoReFT units from AdapterHub's `units.0` (the prefix's, or both when tied)
/// and `units.1` (the suffix's), turning torch's parametrised projection into `R`.
fn fill_reft(
    reft: &mut ReftIntervention,
    file: &WeightFile,
    layer: usize,
    name: &str,
    device: &Device,
) -> Result<()> {
    let (rank, width) = (reft.config.rank, reft.width());
    let units = [(0, reft.prefix.as_mut()), (1, reft.suffix.as_mut())];
    for (index, unit) in units {
        let Some(unit) = unit else { continue };
        let get = |part: &str, shape: &[usize]| -> Result<&RawTensor> {
            let key =
                format!("bert.encoder.layer.{layer}.reft_layer.refts.{name}.units.{index}.{part}");
            let raw = lookup(file, &key)
                .ok_or_else(|| refuse(file.path(), format!("`{key}` is missing")))?;
            if raw.shape != shape {
                return Err(refuse(
                    file.path(),
                    format!("`{key}` is {:?}; the config gives {shape:?}", raw.shape),
                ));
            }
            Ok(raw)
        };
        let source = get("learned_source.weight", &[rank, width])?;
        unit.source.weight = Param::from_tensor(transposed(&source.values, [rank, width], device));
        unit.source.bias = Some(Param::from_tensor(tensor_1d(
            get("learned_source.bias", &[rank])?,
            device,
        )));
        let original = get(
            "projection.parametrizations.weight.original",
            &[rank, width],
        )?;
        let base = get("projection.parametrizations.weight.0.base", &[width, width])?;
        let rotation = rotation_from_adapterhub(&original.values, &base.values, rank, width);
        unit.rotation = Param::from_tensor(Tensor::from_data(
            TensorData::new(rotation, [rank, width]),
            device,
        ));
    }
    Ok(())
}

/// AdapterHub's classification head settings.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct HeadSettings {
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

pub(super) fn yes() -> bool {
    true
}

/// The readout a head of AdapterHub's reads: the pooler, else `[CLS]`.
pub(super) fn head_readout(use_pooler: bool) -> Readout {
    if use_pooler {
        Readout::Pooler
    } else {
        Readout::Cls
    }
}

/// Puts `dir`'s head (when it has one) in place of `model`'s, with AdapterHub's layers and
/// non-linearity: its labels must be the model's outputs and its readout the model's. Returns
/// whether it did.
pub(super) fn load_head(model: &mut SequenceClassifier, dir: &Path, name: &str) -> Result<bool> {
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

/// Loads the AdapterHub adapter in `dir` into the adapter `method` put in `model` (see
/// [`method_from_adapterhub`](super::method_from_adapterhub)), its head too where it has one, and makes what the method trains
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
