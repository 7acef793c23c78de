//! Frozen Pretrained Transformer (Lu, Grover, Abbeel, Mordatch 2021, "Pretrained Transformers as
//! Universal Computation Engines"): self-attention and feed-forward layers stay frozen; the new
//! input layer, the new output layer, every layer norm and the position embeddings train. Each
//! part can be switched, as the authors' `freeze_*` flags; `full` trains everything (their
//! `freeze_trans=False`, the fully trained baseline).
//!
//! Trainable parameters with the defaults, width `h`, `L` layers, `P` positions, output `o` per
//! token: input `d·h + h` for `d`-number patches (or `V·h` for a `V`-id vocabulary), output
//! `h·o + o`, layer norms `2h(2L + 1)` (BERT: two per layer and the embedding norm; GPT-2: two
//! per block and the final norm), positions `P·h`. For GPT-2 small (h 768, L 12, P 1024) the
//! backbone part is 824,832 of 124.4 M (0.66%), of which the norms are 38,400 (0.03%).

use serde::{Deserialize, Serialize};

use kiln_models::Fpt;

/// What trains in the Frozen Pretrained Transformer (`kiln fpt`); the paper's default: the input and output layers, layer norms and positions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FptTuningConfig {
    /// The new input layer trains.
    pub train_input: bool,
    /// The new output layer trains.
    pub train_output: bool,
    /// The backbone's layer norms train.
    pub train_norms: bool,
    /// The position embeddings train.
    pub train_positions: bool,
    /// The attention blocks train.
    pub train_attention: bool,
    /// The feed-forward blocks train.
    pub train_feed_forward: bool,
    /// Everything trains (the fully trained baseline).
    pub full: bool,
}

impl Default for FptTuningConfig {
    fn default() -> Self {
        Self {
            train_input: true,
            train_output: true,
            train_norms: true,
            train_positions: true,
            train_attention: false,
            train_feed_forward: false,
            full: false,
        }
    }
}

impl FptTuningConfig {
    /// Path patterns of what trains in `model`.
    pub fn trainable_patterns(&self, model: &Fpt) -> Vec<String> {
        if self.full {
            return vec!["*".into()];
        }
        let backbone = model.backbone();
        let under = |patterns: Vec<String>| -> Vec<String> {
            let name = backbone.name();
            patterns
                .into_iter()
                .map(|p| format!("{name}.{p}"))
                .collect()
        };
        let mut patterns: Vec<String> = Vec::new();
        if self.train_input {
            patterns.push("input_*".into());
        }
        if self.train_output {
            patterns.push("output.*".into());
        }
        if self.train_norms {
            patterns.extend(under(backbone.norm_patterns()));
        }
        if self.train_positions {
            patterns.extend(under(backbone.position_patterns()));
        }
        for i in 0..backbone.num_layers() {
            if self.train_attention {
                patterns.extend(under(backbone.attention_patterns(i)));
            }
            if self.train_feed_forward {
                patterns.extend(under(backbone.feed_forward_patterns(i)));
            }
        }
        patterns
    }
}
