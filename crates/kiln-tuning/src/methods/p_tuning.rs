//! P-tuning (Liu et al. 2021, "GPT Understands, Too"): virtual tokens placed by a template among
//! the real ones (`before` in front of the text, `after` behind it; for GPT-2 the classifier then
//! reads the last virtual token, the position that has seen the whole prompted text), whose
//! embeddings come from a prompt encoder: a bidirectional LSTM and a two-layer MLP (ReLU) over
//! trained input embeddings, or the MLP alone. The encoder couples the virtual tokens, which the
//! paper found trains more stably than free embeddings. The backbone is frozen.
//!
//! Defaults: template 5 before and 5 after, LSTM encoder (one bi-LSTM layer, hidden `h` per
//! direction; peft stacks two). Trainable parameters, `n = before + after`: with the LSTM,
//! `n·h + 2·4·(2h² + 2h) [bi-LSTM] + (2h·h + h) + (h² + h) + h·c + c`; with the MLP alone,
//! `n·h + 2(h² + h) + h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::{PromptTemplate, SequenceClassifier, TextTokenizer};

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::methods::prompt::check_len;
use crate::options::{MethodOption, parse_list};
use crate::prompts::{PromptInit, init_text_option};

/// P-tuning's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PTuningConfig {
    /// How many virtual tokens go before and after the text.
    pub template: PromptTemplate,
    /// The prompt encoder has the bi-LSTM (else the MLP only).
    pub lstm: bool,
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
            init: PromptInit::default(),
        }
    }
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
        check_len("template", self.template.len())
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let initial = self.init.embeddings(model, self.template.len())?;
        Ok(model.add_prompt(self.template, initial, Some(self.lstm))?)
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        vec![
            format!("{}.prompt.*", model.backbone_name()),
            "head.*".into(),
        ]
    }
}
