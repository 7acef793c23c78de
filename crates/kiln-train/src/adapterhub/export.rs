//! kiln's adapters, heads and fusions written as AdapterHub's directories.

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use serde_json::{Value, json};

use kiln_models::weights::{Layout, WeightFile};
use kiln_models::{Readout, ReftUnit, SequenceClassifier};

use crate::checkpoint::save_params_laid_out;
use crate::error::{Result, TrainError};
use crate::trainer::write_json;

use super::config::adapterhub_config;
use super::reft::rotation_to_adapterhub;
use super::{
    ADAPTERHUB_CONFIG_FILE, ADAPTERHUB_FUSION_CONFIG_FILE, ADAPTERHUB_FUSION_WEIGHTS_FILE,
    ADAPTERHUB_HEAD_CONFIG_FILE, ADAPTERHUB_HEAD_WEIGHTS_FILE, ADAPTERHUB_WEIGHTS_FILE,
    MODEL_CLASS, Saved, VERSION, activation_name, adapter_tensor_name, refuse, require_bert,
};

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

pub(super) fn saved(
    config: Value,
    model: &SequenceClassifier,
    model_name: &str,
    name: &str,
) -> Saved {
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

pub(super) fn write_adapter(
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
    // UniPELT's gated LoRA deltas sit on the query and value projections, beside the adapter.
    let lora_rank = layout
        .gated
        .then(|| {
            model
                .clone()
                .projections_mut()
                .into_iter()
                .find_map(|(_, p)| {
                    p.lora
                        .as_ref()
                        .filter(|d| d.gate.is_some())
                        .map(|d| d.rank())
                })
        })
        .flatten();
    let config = adapterhub_config(layout, model.hidden_size(), &leave_out, lora_rank)?;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let marker = format!(".adapters.loaded.{index}.");
    let width = model.hidden_size();
    let layers = model.num_layers();
    let phm = layout.phm.is_some();
    let mut tensors = save_params_laid_out(model, &out.join(ADAPTERHUB_WEIGHTS_FILE), |path| {
        if lora_rank.is_some()
            && let Some(named) = gated_lora_name(path, name)
        {
            return Some(named);
        }
        let (layer, rest) = path.strip_prefix("bert.layers.")?.split_once(&marker)?;
        let layer: usize = layer.parse().ok()?;
        if rest == "phm_rule" {
            let shared = format!("bert.shared_parameters.{name}.phm_rule");
            return Some((shared, Layout::Same));
        }
        if leave_out.contains(&layer) {
            return None;
        }
        let (slot, part) = rest.split_once('.')?;
        if slot == "prefix" || slot == "reft" {
            return None;
        }
        if slot == "prefix_gate" {
            let gate = format!(
                "bert.encoder.layer.{layer}.attention.self.prefix_tuning.prefix_gates.{name}.{part}"
            );
            return Some((gate, layout_of(part)));
        }
        // A PHM layer's factors keep their layout; its bias is `b`.
        let part = match part.split_once('.') {
            Some((projection, "phm.left")) => format!("{projection}.W_left"),
            Some((projection, "phm.right")) => format!("{projection}.W_right"),
            Some((projection, "bias")) if phm => format!("{projection}.b"),
            _ => part.to_string(),
        };
        Some((
            adapter_tensor_name(layer, slot, name, &part),
            layout_of(&part),
        ))
    })?;
    if layout.prefix_len > 0 {
        tensors += write_flat_prefix(model, index, name, out, layers, width)?;
    }
    if layout.reft.is_some() {
        tensors += write_reft(model, index, name, out)?;
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

/// PyTorch's `[out, in]` for a `weight`, the tensor's own layout for the rest.
fn layout_of(part: &str) -> Layout {
    if part.ends_with("weight") {
        Layout::Transposed
    } else {
        Layout::Same
    }
}

/// UniPELT's gated LoRA tensors under AdapterHub's names: `bert.layers.{i}.attention.query.lora.a`
/// is `bert.encoder.layer.{i}.attention.self.query.loras.{name}.lora_A` (`[r, in]`), and so on.
fn gated_lora_name(path: &str, name: &str) -> Option<(String, Layout)> {
    let (layer, rest) = path
        .strip_prefix("bert.layers.")?
        .split_once(".attention.")?;
    let (matrix, part) = rest.split_once(".lora.")?;
    let part = match part {
        "a" => "lora_A",
        "b" => "lora_B",
        "gate.weight" | "gate.bias" => part,
        _ => return None,
    };
    let key = format!("bert.encoder.layer.{layer}.attention.self.{matrix}.loras.{name}.{part}");
    let layout = if part == "gate.bias" {
        Layout::Same
    } else {
        Layout::Transposed
    };
    Some((key, layout))
}

/// AdapterHub keeps a MAM adapter's prefix apart from its bottleneck weights: the flat prefix
/// goes in `adapter.safetensors` too, beside them, as `control_trans` `[l·L·2·h]`.
pub(super) fn write_flat_prefix(
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

/// Writes every layer's LoReFT units as AdapterHub's `units.0` (prefix positions, or both when
/// tied) and `units.1` (suffix positions), each projection in torch's parametrised form. A unit
/// kiln leaves out because its positions are empty is written as a copy of the other (AdapterHub
/// always holds two untied units, and never uses that one).
fn write_reft(model: &SequenceClassifier, index: usize, name: &str, out: &Path) -> Result<usize> {
    let values = |t: Tensor<2>| -> Result<Vec<f32>> {
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| TrainError::Invalid(format!("cannot read a LoReFT unit: {e:?}")))
    };
    let path = out.join(ADAPTERHUB_WEIGHTS_FILE);
    let mut named = read_back(&path)?;
    let mut written = 0;
    for (layer, slots) in model.backbone().layer_adapters().into_iter().enumerate() {
        let reft = slots
            .as_ref()
            .and_then(|s| s.loaded[index].reft.as_ref())
            .ok_or_else(|| TrainError::Invalid("a LoReFT adapter without its units".into()))?;
        let units: Vec<&ReftUnit> = if reft.config.tied {
            reft.prefix.iter().collect()
        } else {
            let first = reft.prefix.as_ref().or(reft.suffix.as_ref());
            let second = reft.suffix.as_ref().or(reft.prefix.as_ref());
            first.into_iter().chain(second).collect()
        };
        for (u, unit) in units.into_iter().enumerate() {
            let [width, rank] = unit.source.weight.lazy_shape().dims::<2>();
            let key = |part: &str| {
                format!("bert.encoder.layer.{layer}.reft_layer.refts.{name}.units.{u}.{part}")
            };
            let bias = unit
                .source
                .bias
                .as_ref()
                .map_or_else(|| Ok(vec![0.0; rank]), |b| values(b.val().unsqueeze_dim(0)))?;
            let (original, base) = rotation_to_adapterhub(&values(unit.projection())?, rank, width);
            named.extend([
                (
                    key("learned_source.weight"),
                    vec![rank, width],
                    values(unit.source.weight.val().transpose())?,
                ),
                (key("learned_source.bias"), vec![rank], bias),
                (
                    key("projection.parametrizations.weight.original"),
                    vec![rank, width],
                    original,
                ),
                (
                    key("projection.parametrizations.weight.0.base"),
                    vec![width, width],
                    base,
                ),
            ]);
            written += 4;
        }
    }
    write_named(&path, &named)?;
    Ok(written)
}

pub(super) type Named = Vec<(String, Vec<usize>, Vec<f32>)>;

pub(super) fn read_back(path: &Path) -> Result<Named> {
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

pub(super) fn write_named(path: &Path, named: &Named) -> Result<()> {
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
pub(super) fn export_head(
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
