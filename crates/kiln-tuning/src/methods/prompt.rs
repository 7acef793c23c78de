//! Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt
//! Tuning"): `n` virtual tokens, trained embeddings in the input layer, go in front of the text
//! (after `[CLS]` for BERT, so the classifier still reads `[CLS]` there); the attention mask grows
//! by `n`. The backbone is frozen. (Not VPT, Jia et al. 2022: no path feeds image patches to
//! it; VPT comes with a ViT backbone.)
//!
//! Initialisation from the embeddings of given words (`--prompt-init-text`, repeated to fill
//! `n`) or of randomly sampled vocabulary tokens. Default `n = 20`. `--prompt-at-start` puts the
//! tokens in front of `[CLS]` as HF peft does, so that the run exports to peft's format.
//! Trainable parameters: `n·h + h·c + c`.

use serde::{Deserialize, Serialize};

use kiln_models::{PromptTemplate, SequenceClassifier, TextTokenizer};

use crate::error::{Result, TuningError};
use crate::method::{Method, Registered};
use crate::options::MethodOption;
use crate::prompts::{PromptInit, init_text_option};

/// Prompt tuning's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptTuningConfig {
    /// `n`, virtual tokens.
    pub len: usize,
    /// How the virtual tokens start.
    pub init: PromptInit,
    /// In front of BERT's `[CLS]`, as HF peft puts them (what `kiln export` needs for BERT).
    #[serde(default)]
    pub at_start: bool,
}

impl Default for PromptTuningConfig {
    fn default() -> Self {
        Self {
            len: 20,
            init: PromptInit::default(),
            at_start: false,
        }
    }
}

impl Registered for PromptTuningConfig {
    const NAME: &'static str = "prompt";
    const SUMMARY: &'static str =
        "prompt tuning: trained virtual tokens in front of the text (Lester et al. 2021)";

    fn options() -> Vec<MethodOption<Self>> {
        vec![
            MethodOption::new(
                "prompt-len",
                "N",
                "prompt: virtual tokens",
                |c: &Self| c.len.to_string(),
                |c, n| c.len = n,
            ),
            init_text_option(|c: &Self| &c.init, |c| &mut c.init),
            MethodOption::switch(
                "prompt-at-start",
                "prompt: put the virtual tokens in front of BERT's [CLS], as HF peft does",
                |c: &Self| c.at_start,
                |c, on| c.at_start = on,
            ),
        ]
    }
}

/// `--prefix-positions`: on GPT-2 the prefix takes the first positions (HF peft's layout, so
/// the run exports to peft's prefix tuning); refused for other backbones.
pub(crate) fn set_prefix_positions(model: &mut SequenceClassifier, on: bool) -> Result<()> {
    if !on {
        return Ok(());
    }
    match model.backbone_mut().set_prefix_positions(true) {
        true => Ok(()),
        false => Err(TuningError::Option {
            option: "prefix-positions",
            message: "GPT-2 only: it numbers the real tokens after the prefix, as HF GPT-2 does \
                      under peft's prefix tuning"
                .into(),
        }),
    }
}

pub(crate) fn check_len(option: &'static str, len: usize) -> Result<()> {
    if len == 0 {
        return Err(TuningError::Option {
            option,
            message: "needs at least one virtual token".into(),
        });
    }
    Ok(())
}

impl Method for PromptTuningConfig {
    fn virtual_tokens(&self) -> usize {
        self.len
    }

    // Free virtual tokens move slowly at adapter rates: Lester et al. train them at 0.3, P-tuning
    // v2 at 1e-2 and above.
    fn default_lr(&self) -> f64 {
        1e-2
    }

    fn tokenize(&mut self, tokenizer: &TextTokenizer) -> Result<()> {
        self.init.tokenize(tokenizer)
    }

    fn peft_type(&self) -> Option<&'static str> {
        Some("PROMPT_TUNING")
    }

    fn check(&self, _model: &SequenceClassifier) -> Result<()> {
        check_len("prompt-len", self.len)
    }

    fn prepare(&self, model: &mut SequenceClassifier) -> Result<()> {
        let template = PromptTemplate {
            before: self.len,
            after: 0,
            at_start: self.at_start,
        };
        let initial = self.init.embeddings(model, self.len)?;
        Ok(model.add_prompt(template, initial, None)?)
    }

    fn trainable_patterns(&self, model: &SequenceClassifier) -> Vec<String> {
        vec![
            format!("{}.prompt.*", model.backbone_name()),
            "head.*".into(),
        ]
    }
}
