//! `kiln plan`: what one training step will cost, predicted from the model's shape, which of its
//! parameters train and the batch shape, before anything trains.
//!
//! Memory is counted in the buffers Burn 0.22's autodiff keeps for the backward pass, op by op
//! (an op keeps a tensor only when its backward needs it and something it feeds requires a
//! gradient: a matrix product keeps its input only when its weight trains, softmax its shifted
//! input and its exponentials, a layer norm its centred input and, when `γ` trains, its
//! normalised output, dropout its f32 mask, GELU its input). Layers below the lowest trained
//! parameter keep nothing. To that come the weights, the gradients of what trains, AdamW's two
//! moments, the largest transient of the backward pass and the process's own baseline.
//! FLOPs count matrix products only (2 per multiply-add): forward, the input gradients of every
//! layer the backward pass reaches, and the weight gradients of what trains.
//!
//! Covered: BERT and GPT-2 layers with LoRA deltas, bottleneck adapters, fusion, attention
//! prefixes and virtual tokens. M2-BERT's long convolutions are not modelled.

use serde::Serialize;

use kiln_models::SequenceClassifier;
use kiln_tuning::ParamReport;

use crate::error::{Result, TrainError};

/// What the process holds besides the model: binary, libraries, allocator (measured: the peak
/// resident set of a `kiln_step` training step on the two-layer test fixture, 13 MiB).
pub const BASELINE_MIB: f64 = 13.0;

/// The batch a step sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepShape {
    /// Examples per batch.
    pub batch: usize,
    /// Text tokens per example (the padded length).
    pub seq: usize,
    /// Virtual tokens the method adds to every example (prompt tuning, P-tuning).
    pub virtual_tokens: usize,
}

/// The prediction, in bytes and FLOPs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The batch the prediction is for.
    pub shape: StepShape,
    /// All parameters.
    pub params: usize,
    /// Parameters that train.
    pub trainable: usize,
    /// Bytes of the weights.
    pub weight_bytes: f64,
    /// Bytes of the gradients (trained parameters only).
    pub gradient_bytes: f64,
    /// Bytes of AdamW's two moments (trained parameters only).
    pub optimizer_bytes: f64,
    /// Bytes of the activations saved for backward.
    pub activation_bytes: f64,
    /// The largest buffers alive at once beyond the saved ones: a layer's attention scores and
    /// feed-forward states while the forward pass runs, two gradients while backward runs.
    pub transient_bytes: f64,
    /// While the checkpoint loads, its bytes and the weights made from them are both resident.
    pub load_bytes: f64,
    /// What the process holds besides the model (binary, libraries, allocator: [`BASELINE_MIB`]).
    pub baseline_bytes: f64,
    /// The predicted peak resident memory of the step.
    pub peak_bytes: f64,
    /// FLOPs of the forward pass.
    pub forward_flops: f64,
    /// FLOPs of the backward pass.
    pub backward_flops: f64,
    /// Layers the backward pass goes through.
    pub layers_in_backward: usize,
}

const F32: f64 = 4.0;

/// How one layer's projections are named (relative to the layer's path).
struct Names {
    /// Query, key, value; GPT-2 has one fused projection.
    qkv: &'static [&'static str],
    out: &'static str,
    ffn_in: &'static str,
    ffn_out: &'static str,
    norms: [&'static str; 2],
}

const BERT: Names = Names {
    qkv: &["attention.query", "attention.key", "attention.value"],
    out: "attention.output",
    ffn_in: "intermediate",
    ffn_out: "output",
    norms: ["attention_norm", "output_norm"],
};

const GPT2: Names = Names {
    qkv: &["attention.c_attn"],
    out: "attention.c_proj",
    ffn_in: "mlp.c_fc",
    ffn_out: "mlp.c_proj",
    norms: ["ln_1", "ln_2"],
};

/// Model dimensions the counts need.
struct Dims {
    width: f64,
    ffn: f64,
    heads: f64,
}

/// The report's entries, searched by path.
struct Params<'a>(&'a ParamReport);

impl Params<'_> {
    fn trains(&self, path: &str) -> bool {
        self.0.entries.iter().any(|e| e.path == path && e.trainable)
    }

    fn numel(&self, path: &str) -> Option<usize> {
        self.0
            .entries
            .iter()
            .find(|e| e.path == path)
            .map(|e| e.numel)
    }

    fn any_trains_under(&self, prefix: &str) -> bool {
        self.0
            .entries
            .iter()
            .any(|e| e.trainable && e.path.starts_with(prefix))
    }

    /// Widths `m` of the bottleneck adapters under `prefix` (their `down.bias` is `[m]`, dense
    /// or PHM).
    fn bottlenecks_under(&self, prefix: &str) -> Vec<usize> {
        self.0
            .entries
            .iter()
            .filter(|e| e.path.starts_with(prefix) && e.path.ends_with(".down.bias"))
            .map(|e| e.numel)
            .collect()
    }

    /// Adapters a fusion layer under `prefix` mixes (0 without fusion).
    fn fused_under(&self, prefix: &str) -> usize {
        let has_fusion = self
            .0
            .entries
            .iter()
            .any(|e| e.path.starts_with(prefix) && e.path.contains(".fusion."));
        if has_fusion {
            self.bottlenecks_under(prefix).len()
        } else {
            0
        }
    }

    /// Prefix rows per attention under `prefix` (key rows `[l, h]`).
    fn prefix_rows_under(&self, prefix: &str, width: usize) -> usize {
        self.0
            .entries
            .iter()
            .find(|e| e.path.starts_with(prefix) && e.path.ends_with("prefix.key"))
            .map_or(0, |e| e.numel / width.max(1))
    }
}

/// Predicts one training step of `model` (with `report` from applying its method) on `shape`.
pub fn plan(model: &SequenceClassifier, report: &ParamReport, shape: StepShape) -> Result<Plan> {
    let (names, dims) = match (&model.bert, &model.gpt2) {
        (Some(bert), _) => {
            let layer = &bert.layers[0];
            (
                &BERT,
                Dims {
                    width: bert.hidden_size() as f64,
                    ffn: layer.intermediate.d_out() as f64,
                    heads: layer.attention.heads as f64,
                },
            )
        }
        (_, Some(gpt2)) => {
            let block = &gpt2.blocks[0];
            (
                &GPT2,
                Dims {
                    width: gpt2.hidden_size() as f64,
                    ffn: block.mlp.c_fc.d_out() as f64,
                    heads: block.attention.heads as f64,
                },
            )
        }
        _ => {
            return Err(TrainError::Invalid(
                "kiln plan models BERT and GPT-2 layers; M2-BERT's long convolutions are not \
                 modelled"
                    .into(),
            ));
        }
    };
    let params = Params(report);
    let layers = model.num_layers();
    let backbone = model.backbone_name();
    let seq = (shape.seq + shape.virtual_tokens) as f64;
    let tokens = shape.batch as f64 * seq;

    // The backward pass starts below the lowest trained parameter: the embeddings (and any
    // virtual tokens) count as below layer 0.
    let embeddings_train = params.0.entries.iter().any(|e| {
        e.trainable
            && e.path.starts_with(backbone)
            && !(0..layers).any(|i| e.path.starts_with(&format!("{}.", model.layer_path(i))))
            && !model
                .top_paths()
                .iter()
                .any(|top| e.path.starts_with(top.as_str()))
    });
    let mut tracked = embeddings_train;
    let (mut activations, mut forward, mut backward) = (0.0, 0.0, 0.0);
    let mut layers_in_backward = 0;
    if tracked {
        // Embedding sum, its layer norm (centred, normalised) and dropout mask.
        activations += 3.0 * tokens * dims.width;
    }
    for i in 0..layers {
        let prefix = format!("{}.", model.layer_path(i));
        let (cost, out) = layer_cost(
            &params,
            names,
            &dims,
            &prefix,
            tokens,
            shape.batch,
            seq,
            tracked,
        );
        activations += cost.saved;
        forward += cost.forward;
        if out {
            backward += cost.backward;
            layers_in_backward += 1;
        }
        tracked = out;
    }
    // The head: its input, dropout mask and hidden layers (small), its matrix products.
    let head = report
        .entries
        .iter()
        .filter(|e| e.path.starts_with("head.") && e.path.ends_with(".weight"))
        .map(|e| e.numel as f64)
        .sum::<f64>();
    forward += 2.0 * shape.batch as f64 * head;
    backward += 4.0 * shape.batch as f64 * head;
    activations += 3.0 * shape.batch as f64 * dims.width;

    let all = report.total();
    let trainable = report.trainable();
    let scores = shape.batch as f64 * dims.heads * seq * seq;
    // Forward: scores, shifted scores, exponentials and probabilities of one layer, and its
    // feed-forward states before and after GELU. Backward: the gradient flowing down and the
    // next op's, two score- or feed-forward-sized buffers.
    let forward_transient = 4.0 * scores + 2.0 * tokens * dims.ffn;
    let backward_transient = if layers_in_backward > 0 {
        2.0 * scores.max(tokens * dims.ffn)
    } else {
        0.0
    };
    let transient = F32 * forward_transient.max(backward_transient);
    let weight_bytes = F32 * all as f64;
    let gradient_bytes = F32 * trainable as f64;
    let optimizer_bytes = 2.0 * F32 * trainable as f64;
    let activation_bytes = F32 * activations;
    let baseline_bytes = BASELINE_MIB * 1024.0 * 1024.0;
    let load_bytes = 2.0 * weight_bytes;
    let step_bytes =
        weight_bytes + optimizer_bytes + (activation_bytes + transient).max(gradient_bytes);
    let peak_bytes = baseline_bytes + step_bytes.max(load_bytes);
    Ok(Plan {
        shape,
        params: all,
        trainable,
        weight_bytes,
        gradient_bytes,
        optimizer_bytes,
        activation_bytes,
        transient_bytes: transient,
        load_bytes,
        baseline_bytes,
        peak_bytes,
        forward_flops: forward,
        backward_flops: backward,
        layers_in_backward,
    })
}

/// One layer's saved elements and FLOPs.
struct LayerCost {
    saved: f64,
    forward: f64,
    backward: f64,
}

/// One layer in the order it runs (BERT's; GPT-2 puts each norm first, which keeps the same
/// buffers): attention, output projection, norm, feed-forward, adapters, norm. `tracked_in`:
/// whether the layer's input carries a gradient. Returns the cost and whether its output does.
#[allow(clippy::too_many_arguments)]
fn layer_cost(
    params: &Params,
    names: &Names,
    dims: &Dims,
    prefix: &str,
    tokens: f64,
    batch: usize,
    seq: f64,
    tracked_in: bool,
) -> (LayerCost, bool) {
    let (h, f) = (dims.width, dims.ffn);
    let width = h as usize;
    let weight = |name: &str| params.trains(&format!("{prefix}{name}.weight"));
    let bias = |name: &str| params.trains(&format!("{prefix}{name}.bias"));
    let norm = |name: &str| {
        (
            params.trains(&format!("{prefix}{name}.beta")),
            params.trains(&format!("{prefix}{name}.gamma")),
        )
    };
    // A trained LoRA delta's rank.
    let lora = |name: &str, d_in: f64| {
        let a = format!("{prefix}{name}.lora.a");
        params
            .trains(&a)
            .then(|| params.numel(&a).unwrap_or(0) as f64 / d_in)
    };
    let adapters = |slot: &str| -> Vec<(f64, bool)> {
        params
            .0
            .entries
            .iter()
            .filter(|e| {
                e.path.starts_with(prefix) && e.path.ends_with(&format!(".{slot}.down.bias"))
            })
            .map(|e| (e.numel as f64, e.trainable))
            .collect()
    };
    // LoReFT's units after the layer: ranks `r` of their trained `U` `[r, h]`.
    let reft_ranks: Vec<f64> = params
        .0
        .entries
        .iter()
        .filter(|e| e.trainable && e.path.starts_with(prefix) && e.path.ends_with(".rotation"))
        .map(|e| e.numel as f64 / h)
        .collect();
    let prefix_rows = params.prefix_rows_under(prefix, width) as f64;
    let prefix_trains = prefix_rows > 0.0 && params.any_trains_under(&format!("{prefix}adapters"));
    let keys = seq + prefix_rows;
    let scores = batch as f64 * dims.heads * seq * keys;
    let kv_tokens = tokens * keys / seq;

    let mut cost = LayerCost {
        saved: 0.0,
        forward: 0.0,
        backward: 0.0,
    };
    // `[tokens, d_in] x [d_in, d_out]`: the input gradient always (the caller drops layers the
    // backward pass does not reach), the weight gradient and its kept input when it trains.
    let product = |cost: &mut LayerCost, name: &str, d_in: f64, d_out: f64| -> bool {
        let flops = 2.0 * tokens * d_in * d_out;
        cost.forward += flops;
        cost.backward += flops;
        let trains = weight(name);
        if trains {
            cost.backward += flops;
            cost.saved += tokens * d_in;
        }
        let mut tracked = trains || bias(name);
        if let Some(rank) = lora(name, d_in) {
            // The dropout mask and dropped input kept for `A`, the rank-r product for `B`.
            cost.saved += 2.0 * tokens * d_in + tokens * rank;
            cost.forward += 2.0 * tokens * rank * (d_in + d_out);
            cost.backward += 4.0 * tokens * rank * (d_in + d_out);
            tracked = true;
            if params.trains(&format!("{prefix}{name}.lora.magnitude")) {
                // DoRA: under dropout a second product of the dropped input with `W` (forward
                // and its input gradient), and both outputs kept for the magnitude's gradient.
                cost.forward += flops;
                cost.backward += flops;
                cost.saved += 2.0 * tokens * d_out;
            }
        }
        if !trains
            && (params.trains(&format!("{prefix}{name}.loha.u1"))
                || params.trains(&format!("{prefix}{name}.lokr.w1")))
        {
            // LoHa and LoKr add their update to the weight: its gradient is the weight's.
            cost.backward += flops;
            cost.saved += tokens * d_in;
            tracked = true;
        }
        if params.trains(&format!("{prefix}{name}.oft.weight")) {
            // OFT rotates the input in blocks: the rotated input is kept for the rotation's
            // gradient, and the rotation's products are `tokens·d_in·b` each way.
            let b = params
                .numel(&format!("{prefix}{name}.oft.weight"))
                .unwrap_or(0) as f64
                / (d_in / 2.0).max(1.0)
                + 1.0;
            cost.saved += 2.0 * tokens * d_in;
            cost.forward += 2.0 * tokens * d_in * b;
            cost.backward += 4.0 * tokens * d_in * b;
            tracked = true;
        }
        let adalora = format!("{prefix}{name}.adalora.p");
        if params.trains(&adalora) {
            // AdaLoRA runs LoRA's low-rank path (its singular values are an elementwise scale).
            let rank = params.numel(&adalora).unwrap_or(0) as f64 / d_in;
            cost.saved += 2.0 * tokens * d_in + 2.0 * tokens * rank;
            cost.forward += 2.0 * tokens * rank * (d_in + d_out);
            cost.backward += 4.0 * tokens * rank * (d_in + d_out);
            tracked = true;
        }
        let vera = format!("{prefix}{name}.vera.lambda_d");
        if params.trains(&vera) {
            // VeRA runs LoRA's low-rank path through its frozen shared pair.
            let rank = params.numel(&vera).unwrap_or(0) as f64;
            cost.saved += 2.0 * tokens * d_in + 2.0 * tokens * rank;
            cost.forward += 2.0 * tokens * rank * (d_in + d_out);
            cost.backward += 2.0 * tokens * rank * (d_in + d_out);
            tracked = true;
        }
        let ia3 = format!("{prefix}{name}.ia3.scale");
        if params.trains(&ia3) {
            // IA3 keeps what it scales (the input or the output) for its vector's gradient.
            cost.saved += tokens * params.numel(&ia3).unwrap_or(0) as f64;
            tracked = true;
        }
        tracked
    };
    // Bottleneck adapters in `slot`: the input of the down projection, the activation's input,
    // the up projection's input.
    let bottleneck = |cost: &mut LayerCost, slot: &str, tracked: bool| -> bool {
        let mut out = tracked;
        for (m, trains) in adapters(slot) {
            cost.forward += 4.0 * tokens * h * m;
            if tracked || trains {
                cost.saved += tokens * (h + 2.0 * m);
                cost.backward += 8.0 * tokens * h * m;
            }
            out |= trains;
        }
        out
    };
    // A layer norm keeps its centred input, and its normalised output when `γ` trains.
    let layer_norm = |cost: &mut LayerCost, name: &str, tracked: bool| -> bool {
        let (beta, gamma) = norm(name);
        if tracked || gamma {
            cost.saved += tokens * h;
        }
        if gamma {
            cost.saved += tokens * h;
        }
        tracked || beta || gamma
    };

    // Attention: one kept input for all its projections.
    let mut qkv_tracked = prefix_trains;
    let fused_out = 3.0 * h / names.qkv.len() as f64;
    let mut input_kept = false;
    for name in names.qkv {
        let trains = weight(name);
        qkv_tracked |= product(&mut cost, name, h, fused_out);
        if trains && input_kept {
            cost.saved -= tokens * h;
        }
        input_kept |= trains;
    }
    let attention = tracked_in || qkv_tracked;
    cost.forward += 4.0 * batch as f64 * seq * keys * h;
    if attention {
        // Query and key for the scores, softmax's shifted input and exponentials, the dropout
        // mask and the dropped probabilities, the values.
        cost.saved += tokens * h + 2.0 * kv_tokens * h + 4.0 * scores;
        cost.backward += 8.0 * batch as f64 * seq * keys * h;
    }
    let mut tracked = product(&mut cost, names.out, h, h) || attention;
    if tracked {
        cost.saved += tokens * h; // the hidden dropout's mask
    }
    tracked = bottleneck(&mut cost, "attention", tracked);
    let tracked = layer_norm(&mut cost, names.norms[0], tracked || tracked_in);

    // Feed-forward: GELU's input, the hidden dropout's mask; the adapters around it.
    let mut inner = product(&mut cost, names.ffn_in, h, f) || tracked;
    if inner {
        cost.saved += tokens * f;
    }
    inner = product(&mut cost, names.ffn_out, f, h) || inner;
    if inner {
        cost.saved += tokens * h;
    }
    inner = bottleneck(&mut cost, "feed_forward", inner);
    inner = bottleneck(&mut cost, "parallel", inner || tracked);
    let fused = params.fused_under(prefix) as f64;
    if fused > 0.0 {
        // Stacked adapter outputs, their keys and values, the query and the mixing products.
        cost.saved += (3.0 * fused + 2.0) * tokens * h;
        cost.forward += 2.0 * tokens * h * h * (1.0 + 2.0 * fused);
        cost.backward += 4.0 * tokens * h * h * (1.0 + 2.0 * fused);
        inner = true;
    }
    let mut out = layer_norm(&mut cost, names.norms[1], inner || tracked);
    for rank in reft_ranks {
        // Every position goes through `W`, `R` and `Rᵀ`; the states, the dropout mask and the
        // rank-r products are kept.
        cost.forward += 6.0 * tokens * h * rank;
        cost.backward += 12.0 * tokens * h * rank;
        cost.saved += 2.0 * tokens * h + 2.0 * tokens * rank;
        out = true;
    }
    (cost, out)
}

impl Plan {
    /// Lines of `kiln plan`'s report.
    pub fn describe(&self) -> String {
        let mib = |b: f64| b / (1024.0 * 1024.0);
        let gflop = |f: f64| f / 1e9;
        format!(
            "batch {} x {} tokens{}\n\
             parameters: {} of {} train ({:.3}%)\n\
             memory, MiB: weights {:.1}, gradients {:.1}, optimizer state {:.1}, activations {:.1}, \
             transients {:.1}, process {:.0} (loading the checkpoint: {:.1})\n\
             predicted peak: {:.0} MiB\n\
             FLOPs per step (matrix products): forward {:.1} G, backward {:.1} G ({} of the \
             layers), total {:.1} G",
            self.shape.batch,
            self.shape.seq,
            if self.shape.virtual_tokens > 0 {
                format!(" (+ {} virtual)", self.shape.virtual_tokens)
            } else {
                String::new()
            },
            self.trainable,
            self.params,
            100.0 * self.trainable as f64 / self.params.max(1) as f64,
            mib(self.weight_bytes),
            mib(self.gradient_bytes),
            mib(self.optimizer_bytes),
            mib(self.activation_bytes),
            mib(self.transient_bytes),
            mib(self.baseline_bytes),
            mib(self.load_bytes),
            mib(self.peak_bytes),
            gflop(self.forward_flops),
            gflop(self.backward_flops),
            self.layers_in_backward,
            gflop(self.forward_flops + self.backward_flops),
        )
    }
}
