//! AdapterHub's `adapter_config.json` read into kiln's adapter layout and method, and written
//! from them.

use std::path::Path;

use serde_json::{Value, json};

use kiln_models::{Activation, AdapterConfig, AdapterInit};
use kiln_tuning::MethodConfig;

use crate::error::{Result, TrainError};
use crate::trainer::read_json;

use super::{ADAPTERHUB_CONFIG_FILE, Saved, activation_name, field, flag, number, refuse};

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

/// The bottleneck part of an AdapterHub config, checked field by field.
pub(super) fn bottleneck_layout(
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

/// AdapterHub's config for one of kiln's layouts (`leave_out`: layers without it).
pub(super) fn adapterhub_config(
    layout: &AdapterConfig,
    width: usize,
    leave_out: &[usize],
) -> Result<Value> {
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
