//! P-tuning (Liu et al. 2021, "GPT Understands, Too"): virtual tokens placed by a template among
//! the real ones (`before` in front of the text, `after` behind it; for GPT-2 the classifier then
//! reads the last virtual token, the position that has seen the whole prompted text), whose
//! embeddings come from a prompt encoder over trained input embeddings, peft's `PromptEncoder`
//! (`tuners/p_tuning/model.py`): two stacked bidirectional LSTMs (hidden `H` per direction) and
//! `Linear(2H, 2H) → ReLU → Linear(2H, h)`, or (the MLP type, peft's default) `h → H → H → h`
//! with ReLU between. The encoder couples the virtual tokens, which the paper found trains more
//! stably than free embeddings. The backbone is frozen.
//!
//! Defaults: template 5 before and 5 after, the LSTM encoder (the paper's), `H = h`, 2 LSTM
//! layers (peft's). Trainable parameters, `n = before + after`: with the LSTM,
//! `n·h + 2·4·(hH + H² + 2H) + 2·4·(2H·H + H² + 2H) [bi-LSTMs] + (2H·2H + 2H) + (2H·h + h) +
//! h·c + c`; with the MLP, `n·h + (hH + H) + (H² + H) + (Hh + h) + h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::{PromptEncoderShape, PromptTemplate, SequenceClassifier, TextTokenizer};

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::methods::prompt::check_len;
use crate::options::{MethodOption, parse_list, show_or};
use crate::prompts::{PromptInit, init_text_option};

/// P-tuning's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PTuningConfig {
    /// How many virtual tokens go before and after the text.
    pub template: PromptTemplate,
    /// The prompt encoder has the bi-LSTM (else the MLP only).
    pub lstm: bool,
    /// `H`, the encoder's hidden width; `None` takes the model's width (peft's default).
    #[serde(default)]
    pub encoder_hidden: Option<usize>,
    /// Stacked bi-LSTM layers.
    #[serde(default = "default_lstm_layers")]
    pub lstm_layers: usize,
    /// How the virtual tokens start.
    pub init: PromptInit,
}

impl Default for PTuningConfig {
    fn default() -> Self {
        Self {
            template: PromptTemplate {
                before: 5,
                after: 5,
                at_start: false,
            },
            lstm: true,
            encoder_hidden: None,
            lstm_layers: default_lstm_layers(),
            init: PromptInit::default(),
        }
    }
}

fn default_lstm_layers() -> usize {
    2
}

impl Registered for PTuningConfig {
    const NAME: &'static str = "p-tuning";
    const SUMMARY: &'static str = "P-tuning: virtual tokens from a prompt encoder, placed by a \
                                   template (Liu et al. 2021)";

    fn options() -> Vec<MethodOption<Self>> {
        vec![
            MethodOption::parsed(
                "template",
                "B,A",
                "p-tuning: virtual tokens before and after the text",
                |c: &Self| format!("{},{}", c.template.before, c.template.after),
                |c, text| {
                    let &[before, after] = parse_list::<usize>("template", text)?.as_slice() else {
                        return Err(TuningError::Option {
                            option: "template",
                            message: format!("takes two counts, before,after (got `{text}`)"),
                        });
                    };
                    c.template.before = before;
                    c.template.after = after;
                    Ok(())
                },
            ),
            MethodOption::parsed(
                "prompt-encoder",
                "lstm|mlp",
                "p-tuning: prompt encoder",
                |c: &Self| if c.lstm { "lstm" } else { "mlp" }.into(),
                |c, text| {
                    c.lstm = match text {
                        "lstm" => true,
                        "mlp" => false,
                        other => {
                            return Err(TuningError::Option {
                                option: "prompt-encoder",
                                message: format!("`{other}`: expected lstm or mlp"),
                            });
                        }
                    };
                    Ok(())
                },
            ),
            MethodOption::new(
                "encoder-hidden",
                "H",
                "p-tuning: the prompt encoder's hidden width",
                |c: &Self| show_or(&c.encoder_hidden, "the model's width"),
                |c, v| c.encoder_hidden = Some(v),
            ),
            MethodOption::new(
                "lstm-layers",
                "N",
                "p-tuning: stacked bi-LSTM layers of the lstm encoder",
                |c: &Self| c.lstm_layers.to_string(),
                |c, v| c.lstm_layers = v,
            ),
            init_text_option(|c: &Self| &c.init, |c| &mut c.init),
        ]
    }
}

impl Method for PTuningConfig {
    fn default_lr(&self) -> f64 {
        1e-2
    }

    fn tokenize(&mut self, tokenizer: &TextTokenizer) -> Result<()> {
        self.init.tokenize(tokenizer)
    }

    fn virtual_tokens(&self) -> usize {
        self.template.len()
    }

    fn check(&self, _model: &SequenceClassifier) -> Result<()> {
        if self.encoder_hidden == Some(0) {
            return Err(TuningError::Option {
                option: "encoder-hidden",
                message: "the prompt encoder needs a width of at least 1".into(),
            });
        }
        if self.lstm && self.lstm_layers == 0 {
            return Err(TuningError::Option {
                option: "lstm-layers",
                message: "the lstm encoder needs at least one layer (or --prompt-encoder mlp)"
                    .into(),
            });
        }
        check_len("template", self.template.len())
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let initial = self.init.embeddings(model, self.template.len())?;
        let shape = PromptEncoderShape {
            lstm: self.lstm,
            hidden: self.encoder_hidden.unwrap_or(model.hidden_size()),
            lstm_layers: self.lstm_layers,
        };
        Ok(model.add_prompt(self.template, initial, Some(shape))?)
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        vec![
            format!("{}.prompt.*", model.backbone_name()),
            "head.*".into(),
        ]
    }
}
