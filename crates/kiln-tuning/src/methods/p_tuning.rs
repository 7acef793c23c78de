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

use kiln_models::{PromptTemplate, SequenceClassifier};

use crate::error::{Result, TuningError};
use crate::method::{Method, MethodOptions};
use crate::methods::prompt::check_len;
use crate::prompts::PromptInit;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PTuningConfig {
    pub template: PromptTemplate,
    /// The prompt encoder has the bi-LSTM (else the MLP only).
    pub lstm: bool,
    pub init: PromptInit,
}

impl PTuningConfig {
    pub fn with_options(options: &MethodOptions) -> Result<Self> {
        let lstm = match options.prompt_encoder.as_deref() {
            None | Some("lstm") => true,
            Some("mlp") => false,
            Some(other) => {
                return Err(TuningError::Option {
                    option: "prompt-encoder",
                    message: format!("`{other}`: expected lstm or mlp"),
                });
            }
        };
        let (before, after) = options.template.unwrap_or((5, 5));
        Ok(Self {
            template: PromptTemplate {
                before,
                after,
                at_start: false,
            },
            lstm,
            init: options.prompt_init(),
        })
    }
}

impl Method for PTuningConfig {
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
