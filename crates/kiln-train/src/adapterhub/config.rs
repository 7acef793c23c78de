//! AdapterHub's `adapter_config.json` read into kiln's adapter layout and method, and written
//! from them.

use std::path::Path;

use serde_json::{Value, json};

use kiln_models::{Activation, AdapterConfig, AdapterInit, PhmConfig, ReftConfig};
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
    /// UniPELT's gated LoRA rank on the attention's query and value (`None`: no LoRA part).
    pub lora_rank: Option<usize>,
}

/// The bottleneck part of an AdapterHub config, checked field by field.
pub(super) fn bottleneck_layout(
    config: &Value,
    hidden: usize,
    path: &Path,
) -> Result<(AdapterConfig, Vec<usize>)> {
    let phm = flag(config, "phm_layer");
    for (name, unsupported) in [
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
        // Compacter's PHM layers as its configs make them: factorised weights, one rule shared.
        ("shared_phm_rule", phm && !flag(config, "shared_phm_rule")),
        ("factorized_phm_W", phm && !flag(config, "factorized_phm_W")),
        (
            "factorized_phm_rule",
            phm && flag(config, "factorized_phm_rule"),
        ),
        ("shared_W_phm", phm && flag(config, "shared_W_phm")),
        ("phm_bias", phm && !flag(config, "phm_bias")),
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
    let phm = if phm {
        let size = |name: &str| {
            field(config, name)
                .and_then(Value::as_u64)
                .filter(|&v| v > 0)
                .map(|v| v as usize)
                .ok_or_else(|| refuse(path, format!("`{name}` must be a positive number")))
        };
        let phm = PhmConfig {
            dim: size("phm_dim")?,
            rank: size("phm_rank")?,
        };
        if !phm.fits(hidden, bottleneck) {
            return Err(refuse(
                path,
                format!(
                    "`phm_dim` {} does not divide {hidden} and {bottleneck}",
                    phm.dim
                ),
            ));
        }
        Some(phm)
    } else {
        None
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
        phm,
        gated: flag(config, "use_gating"),
        reft: None,
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
    let mut lora_rank = None;
    let (bottleneck, prefix) = match architecture {
        "bottleneck" => (config, None),
        "reft" => {
            return Ok(AdapterHubAdapter {
                name: saved.name,
                hidden_size: hidden,
                layout: AdapterConfig {
                    reft: Some(reft_layout(config, &path)?),
                    ..AdapterConfig::prefix_only(0)
                },
                leave_out: Vec::new(),
                method: "loreft",
                prefix_hidden: None,
                lora_rank: None,
            });
        }
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
            match (
                parts.len(),
                find("prefix_tuning"),
                find("bottleneck"),
                find("lora"),
            ) {
                (2, Some(prefix), Some(bottleneck), None) => (bottleneck, Some(prefix)),
                (3, Some(prefix), Some(bottleneck), Some(lora)) => {
                    lora_rank = Some(unipelt_lora(lora, &path)?);
                    (bottleneck, Some(prefix))
                }
                _ => {
                    return Err(refuse(
                        &path,
                        "a config union other than prefix tuning + one bottleneck adapter (MAM) \
                         or with LoRA too (UniPELT) is not supported"
                            .into(),
                    ));
                }
            }
        }
        other => {
            return Err(refuse(
                &path,
                format!("architecture `{other}`: kiln reads bottleneck adapters, MAM and LoReFT"),
            ));
        }
    };
    let bottleneck = bottleneck.clone();
    let (mut layout, leave_out) = bottleneck_layout(&bottleneck, hidden, &path)?;
    let mut prefix_hidden = None;
    let unipelt = lora_rank.is_some();
    if let Some(prefix) = prefix {
        // UniPELT gates every part, the prefix with one gate for keys and values.
        for (name, unsupported) in [
            ("use_gating", flag(prefix, "use_gating") != unipelt),
            ("shared_gating", unipelt && !flag(prefix, "shared_gating")),
            ("cross_prefix_only", flag(prefix, "cross_prefix_only")),
        ] {
            if unsupported {
                return Err(refuse(
                    &path,
                    format!("prefix `{name}` = {} is not supported", prefix[name]),
                ));
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
    if layout.gated != unipelt {
        return Err(refuse(
            &path,
            format!(
                "`use_gating` = {}: kiln gates the adapter of UniPELT's union only, and always",
                layout.gated
            ),
        ));
    }
    let method = match (&layout, prefix.is_some()) {
        (l, true) if unipelt && l.after_feed_forward && !l.after_attention && !l.parallel => {
            "unipelt"
        }
        (l, true) if l.parallel && !l.after_attention && !l.after_feed_forward => "mam",
        (l, false) if l.parallel && !l.after_attention && !l.after_feed_forward => "parallel",
        (l, false) if l.after_attention && l.after_feed_forward && !l.parallel => {
            if l.phm.is_some() {
                "compacter"
            } else {
                "houlsby"
            }
        }
        (l, false) if l.after_feed_forward && !l.after_attention && !l.parallel => {
            if l.phm.is_some() {
                "compacter++"
            } else {
                "pfeiffer"
            }
        }
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
        lora_rank,
    })
}

/// UniPELT's LoRA part, checked: gated deltas on the attention's query and value only, added,
/// with no dropout; its rank.
fn unipelt_lora(config: &Value, path: &Path) -> Result<usize> {
    let matrices = field(config, "attn_matrices")
        .cloned()
        .unwrap_or(Value::Null);
    for (name, unsupported) in [
        ("use_gating", !flag(config, "use_gating")),
        ("selfattn_lora", !flag(config, "selfattn_lora")),
        ("intermediate_lora", flag(config, "intermediate_lora")),
        ("output_lora", flag(config, "output_lora")),
        ("attn_matrices", matrices != json!(["q", "v"])),
        (
            "composition_mode",
            field(config, "composition_mode").and_then(Value::as_str) != Some("add"),
        ),
        ("use_dora", flag(config, "use_dora")),
        ("dropout", number(config, "dropout").unwrap_or(0.0) != 0.0),
        (
            "leave_out",
            field(config, "leave_out")
                .and_then(Value::as_array)
                .is_some_and(|l| !l.is_empty()),
        ),
    ] {
        if unsupported {
            return Err(refuse(
                path,
                format!("UniPELT's LoRA `{name}` = {}: not UniPELT's", config[name]),
            ));
        }
    }
    field(config, "r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .map(|r| r as usize)
        .ok_or_else(|| refuse(path, "UniPELT's LoRA needs a positive `r`".into()))
}

/// LoReFT's settings from AdapterHub's `ReftConfig`: every layer, the orthogonal projection
/// and LoReFT's subtraction; positions, rank, tying and dropout as given.
fn reft_layout(config: &Value, path: &Path) -> Result<ReftConfig> {
    if field(config, "layers").and_then(Value::as_str) != Some("all") {
        return Err(refuse(
            path,
            format!("`layers` = {}: kiln edits every layer", config["layers"]),
        ));
    }
    if !flag(config, "orthogonality") {
        return Err(refuse(
            path,
            "`orthogonality` = false (NoReFT, DiReFT): kiln's ReFT is LoReFT".into(),
        ));
    }
    if field(config, "non_linearity").is_some_and(|v| !v.is_null()) {
        return Err(refuse(
            path,
            format!(
                "`non_linearity` = {}: LoReFT's edit is linear",
                config["non_linearity"]
            ),
        ));
    }
    let count = |name: &str| {
        field(config, name)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| refuse(path, format!("`{name}` must be a whole number")))
    };
    let reft = ReftConfig {
        prefix_positions: count("prefix_positions")?,
        suffix_positions: count("suffix_positions")?,
        rank: count("r")?,
        tied: flag(config, "tied_weights"),
        dropout: number(config, "dropout").unwrap_or(0.0),
    };
    if reft.rank == 0 || reft.prefix_positions + reft.suffix_positions == 0 {
        return Err(refuse(
            path,
            "LoReFT needs `r` and one of `prefix_positions`, `suffix_positions` above 0".into(),
        ));
    }
    Ok(reft)
}

/// AdapterHub's config for one of kiln's layouts (`leave_out`: layers without it; `lora_rank`:
/// UniPELT's gated LoRA rank, which a gated layout needs).
pub(super) fn adapterhub_config(
    layout: &AdapterConfig,
    width: usize,
    leave_out: &[usize],
    lora_rank: Option<usize>,
) -> Result<Value> {
    if let Some(reft) = layout.reft {
        if layout.bottlenecks() > 0 || layout.prefix_len > 0 {
            return Err(TrainError::Invalid(format!(
                "LoReFT beside other adapter modules has no AdapterHub config: {layout:?}"
            )));
        }
        return Ok(json!({
            "architecture": "reft",
            "dropout": reft.dropout,
            "dtype": null,
            "init_weights_seed": null,
            "layers": "all",
            "non_linearity": null,
            "orthogonality": true,
            "output_reft": true,
            "prefix_positions": reft.prefix_positions,
            "r": reft.rank,
            "suffix_positions": reft.suffix_positions,
            "tied_weights": reft.tied,
        }));
    }
    let unipelt = match (layout.gated, lora_rank) {
        (false, _) => None,
        (true, Some(rank)) if layout.prefix_len > 0 => Some(rank),
        (true, _) => {
            return Err(TrainError::Invalid(
                "a gated adapter is written as part of UniPELT only, with its LoRA and prefix"
                    .into(),
            ));
        }
    };
    let phm = layout.phm.unwrap_or_else(PhmConfig::compacter);
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
    let prefix_fits = layout.parallel || unipelt.is_some();
    if !valid || layout.bottleneck == 0 || (layout.prefix_len > 0 && !prefix_fits) {
        return Err(TrainError::Invalid(format!(
            "this adapter's layout has no AdapterHub config (Houlsby, Pfeiffer, Compacter, \
             parallel, MAM and LoReFT layouts do): {layout:?}"
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
        "phm_dim": phm.dim,
        "phm_init_range": 0.0001,
        "phm_layer": layout.phm.is_some(),
        "phm_rank": phm.rank,
        // The library computes the width as `int(hidden // reduction_factor)`.
        "reduction_factor": width as f64 / layout.bottleneck as f64,
        "residual_before_ln": true,
        "scaling": layout.scale,
        "shared_W_phm": false,
        "shared_phm_rule": true,
        "stochastic_depth": 0.0,
        "use_gating": layout.gated,
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
        "use_gating": layout.gated,
    });
    let Some(rank) = unipelt else {
        return Ok(json!({"architecture": "union", "configs": [prefix, bottleneck]}));
    };
    let lora = json!({
        "alpha": rank,
        "architecture": "lora",
        "attn_matrices": ["q", "v"],
        "composition_mode": "add",
        "dropout": 0.0,
        "dtype": null,
        "init_weights": "lora",
        "init_weights_seed": null,
        "intermediate_lora": false,
        "leave_out": [],
        "output_lora": false,
        "r": rank,
        "selfattn_lora": true,
        "use_dora": false,
        "use_gating": true,
        "vera_b": null,
        "vera_d": null,
    });
    Ok(json!({"architecture": "union", "configs": [prefix, bottleneck, lora]}))
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
    if let (Some(phm), true) = (layout.phm, adapter.method == method) {
        options.extend([
            ("phm-dim", phm.dim.to_string()),
            ("phm-rank", phm.rank.to_string()),
        ]);
    }
    match (method, adapter.method) {
        ("pfeiffer" | "houlsby" | "compacter" | "compacter++", found) if found == method => {}
        ("loreft", "loreft") => {
            let reft = layout.reft.unwrap_or_default();
            options = vec![
                ("reft-prefix", reft.prefix_positions.to_string()),
                ("reft-suffix", reft.suffix_positions.to_string()),
                ("reft-rank", reft.rank.to_string()),
                ("reft-tied", reft.tied.to_string()),
                ("reft-dropout", reft.dropout.to_string()),
                ("adapter-name", adapter.name.clone()),
            ];
        }
        ("adapter-drop", "pfeiffer") if contiguous && dropped > 0 => {
            options.push(("drop-layers", dropped.to_string()));
        }
        ("parallel", "parallel") => options.push(("scale", layout.scale.to_string())),
        ("unipelt", "unipelt") => options.extend([
            ("rank", adapter.lora_rank.unwrap_or(8).to_string()),
            ("prefix-len", layout.prefix_len.to_string()),
            // The prefix arrives as the rows it computes (see `load_adapterhub`).
            ("prefix-hidden", "0".to_string()),
        ]),
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
