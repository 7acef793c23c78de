//! What goes beside an exported adapter or a merged checkpoint so that nothing trained is lost:
//! kiln's task head as its own `kiln_head.safetensors` (PyTorch layouts) with `kiln_head.json`
//! (readout, layers, class names) whenever HF's classes cannot hold it, and a `README.md` that
//! says what the folder is, what was left out, and how to load it, with a short Python function
//! that reproduces kiln's logits from the folder (`scripts/make_peft_fixtures.py` runs that very
//! function and records its labels, which kiln's tests compare with `kiln predict`'s).

use std::path::Path;

use serde::{Deserialize, Serialize};

use kiln_models::weights::Layout;
use kiln_models::{Readout, SequenceClassifier};

use crate::checkpoint::{save_params_laid_out, write_atomically};
use crate::error::Result;

/// The head's tensors: `hidden.{i}.weight|bias` (`[out, in]`), `output.weight|bias`.
pub const HEAD_WEIGHTS_FILE: &str = "kiln_head.safetensors";
/// The head's description ([`HeadFile`]).
pub const HEAD_CONFIG_FILE: &str = "kiln_head.json";
/// The folder's explanation.
pub const README_FILE: &str = "README.md";

/// `kiln_head.json`: how the head reads the backbone and what its outputs mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadFile {
    /// `mean`, `cls`, `pooler` or `last`.
    pub readout: Readout,
    /// Linear layers before the output layer, each followed by exact GELU.
    pub hidden_layers: usize,
    /// The class names in output order; `None` for regression.
    pub labels: Option<Vec<String>>,
    /// The labels are a multi-label task's: each output's sigmoid is its label's probability,
    /// and the labels above `threshold` apply.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub multi_label: bool,
    /// A multi-label task's decision threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Tokens per text the run used, special tokens included.
    pub max_len: usize,
    /// Virtual tokens a prompt puts before the text (their states are not read out).
    pub virtual_tokens: usize,
}

/// What kind of folder the README describes.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// A plain transformers checkpoint (`kiln merge`) of this class.
    Merged {
        /// `BertForSequenceClassification`, `BertModel`, `GPT2Model`.
        architecture: &'static str,
    },
    /// A peft adapter (`kiln export`) for this base model.
    Peft {
        /// `LORA`, `PROMPT_TUNING`, `PREFIX_TUNING`.
        peft_type: String,
        /// `SEQ_CLS` or `FEATURE_EXTRACTION`.
        task_type: &'static str,
        /// `base_model_name_or_path`.
        base_model: String,
    },
}

impl Written {
    /// Whether the head is part of the HF format (HF's sequence classifier holds it).
    fn holds_head(&self) -> bool {
        match self {
            Written::Merged { architecture } => architecture.ends_with("ForSequenceClassification"),
            Written::Peft { task_type, .. } => *task_type == "SEQ_CLS",
        }
    }
}

/// Writes the head files where HF's format does not hold the head, and the README, into `out`.
/// Returns whether the head went into its own file.
pub fn write_beside(
    model: &SequenceClassifier,
    out: &Path,
    written: &Written,
    head: &HeadFile,
) -> Result<bool> {
    let separate = !written.holds_head();
    if separate {
        save_params_laid_out(model, &out.join(HEAD_WEIGHTS_FILE), |path| {
            let rest = path.strip_prefix("head.")?;
            let layout = if rest.ends_with(".weight") {
                Layout::Transposed
            } else {
                Layout::Same
            };
            Some((rest.to_string(), layout))
        })?;
        let text = serde_json::to_string_pretty(head)
            .map_err(|e| crate::error::TrainError::Invalid(e.to_string()))?;
        write_atomically(&out.join(HEAD_CONFIG_FILE), format!("{text}\n").as_bytes())?;
    }
    let text = readme(model, written, head, separate);
    write_atomically(&out.join(README_FILE), text.as_bytes())?;
    Ok(separate)
}

/// The folder's README: what it is, what was left out, how to load it.
pub fn readme(
    model: &SequenceClassifier,
    written: &Written,
    head: &HeadFile,
    separate: bool,
) -> String {
    let gpt2 = model.gpt2.is_some();
    let classes = match &head.labels {
        Some(labels) if head.multi_label => format!(
            "multi-label, {} labels (sigmoid outputs, threshold {}): {}",
            labels.len(),
            head.threshold.unwrap_or(0.5),
            labels.join(", ")
        ),
        Some(labels) => format!("{} classes: {}", labels.len(), labels.join(", ")),
        None => "regression (one score)".into(),
    };
    let mut text = String::from("# Fine-tuned with kiln\n\n");
    let (what, imports, load) = match written {
        Written::Merged { architecture } => (
            format!(
                "A transformers checkpoint (`{architecture}`) with the run's LoRA deltas folded \
                 into the weights; no kiln or peft code is needed to load it."
            ),
            "from transformers import AutoModel, AutoModelForSequenceClassification, \
             AutoTokenizer\n",
            format!(
                "tokenizer = AutoTokenizer.from_pretrained(FOLDER)\nmodel = {}\
                 .from_pretrained(FOLDER).eval()\n",
                if separate {
                    "AutoModel"
                } else {
                    "AutoModelForSequenceClassification"
                }
            ),
        ),
        Written::Peft {
            peft_type,
            task_type,
            base_model,
        } => (
            format!(
                "A HF peft adapter ({peft_type}, task {task_type}) for the base model \
                 `{base_model}`."
            ),
            "from peft import PeftModel\nfrom transformers import AutoModel, \
             AutoModelForSequenceClassification, AutoTokenizer\n",
            format!(
                "BASE = {base:?}\ntokenizer = AutoTokenizer.from_pretrained(BASE)\nbase = {}\n\
                 model = PeftModel.from_pretrained(base, FOLDER).eval()\n",
                if separate {
                    "AutoModel.from_pretrained(BASE)".to_string()
                } else {
                    format!(
                        "AutoModelForSequenceClassification.from_pretrained(BASE, num_labels={})",
                        head.labels.as_ref().map_or(1, Vec::len)
                    )
                },
                base = base_model,
            ),
        ),
    };
    text.push_str(&format!("{what} The task: {classes}.\n\n"));
    if separate {
        text.push_str(&format!(
            "**The task head is not part of the HF format here**: kiln's head reads the \
             backbone's token states by `{}` readout through {} linear layer{}, which no \
             transformers class expresses. It is in `{HEAD_WEIGHTS_FILE}` (PyTorch \
             `[out, in]` layouts) and described in `{HEAD_CONFIG_FILE}`. The function below \
             reproduces kiln's logits from this folder.\n\n",
            readout_name(head.readout),
            head.hidden_layers + 1,
            if head.hidden_layers == 0 {
                ""
            } else {
                "s with GELU between"
            }
        ));
    } else {
        text.push_str(
            "The task head is part of the checkpoint (`classifier`), with the class names in \
             `id2label`; nothing was left out.\n\n",
        );
    }
    text.push_str("```python\nimport torch\nfrom safetensors.torch import load_file\n");
    text.push_str(imports);
    text.push_str("\nFOLDER = \".\"  # this folder\n");
    text.push_str(&load);
    if gpt2 {
        text.push_str(
            "tokenizer.pad_token = tokenizer.eos_token  # kiln pads GPT-2 on the right\n",
        );
    }
    text.push_str(&format!(
        "LABELS = {}\nMAX_LEN = {}\n",
        python_list(head.labels.as_deref()),
        head.max_len
    ));
    if separate {
        text.push_str(&format!(
            "HEAD = load_file(f\"{{FOLDER}}/{HEAD_WEIGHTS_FILE}\")\n"
        ));
    }
    text.push_str(
        "\n\ndef kiln_logits(texts, pairs=None):\n    batch = tokenizer(texts, pairs, \
         padding=True, truncation=True, max_length=MAX_LEN, return_tensors=\"pt\")\n    with \
         torch.no_grad():\n        out = model(**batch)\n",
    );
    if separate {
        let states = if head.virtual_tokens > 0 {
            format!(
                "        # the first {} positions are the prompt's virtual tokens\n        states \
                 = out.last_hidden_state[:, {}:]\n",
                head.virtual_tokens, head.virtual_tokens
            )
        } else {
            "        states = out.last_hidden_state\n".to_string()
        };
        text.push_str(&states);
        text.push_str("        mask = batch[\"attention_mask\"]\n");
        let readout = match head.readout {
            Readout::Mean => {
                "        x = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)\n"
            }
            Readout::Cls => "        x = states[:, 0]\n",
            Readout::Pooler => "        x = out.pooler_output\n",
            Readout::Last => "        x = states[torch.arange(len(states)), mask.sum(1) - 1]\n",
        };
        text.push_str(readout);
        if head.hidden_layers > 0 {
            text.push_str(&format!(
                "        for i in range({}):\n            x = torch.nn.functional.gelu(x @ \
                 HEAD[f\"hidden.{{i}}.weight\"].T + HEAD[f\"hidden.{{i}}.bias\"])\n",
                head.hidden_layers
            ));
        }
        text.push_str("        return x @ HEAD[\"output.weight\"].T + HEAD[\"output.bias\"]\n");
    } else {
        text.push_str("        return out.logits\n");
    }
    text.push_str(
        "\n\ndef kiln_predict(texts, pairs=None):\n    logits = kiln_logits(texts, pairs)\n",
    );
    if head.multi_label {
        text.push_str(&format!(
            "    probabilities = torch.sigmoid(logits).tolist()\n    return [[label for label, \
             p in zip(LABELS, row) if p > {}] for row in probabilities]\n",
            head.threshold.unwrap_or(0.5)
        ));
    } else {
        text.push_str(
            "    if not LABELS:\n        return logits[:, 0].tolist()\n    return [LABELS[i] for \
             i in logits.argmax(-1).tolist()]\n",
        );
    }
    text.push_str(
        "```\n\nWith `FOLDER` set to this folder's path, `kiln_predict` gives the labels `kiln \
         predict --run RUN` gives.\n",
    );
    text
}

fn readout_name(readout: Readout) -> &'static str {
    match readout {
        Readout::Mean => "mean",
        Readout::Cls => "cls",
        Readout::Pooler => "pooler",
        Readout::Last => "last",
    }
}

fn python_list(labels: Option<&[String]>) -> String {
    let items: Vec<String> = labels
        .unwrap_or_default()
        .iter()
        .map(|l| serde_json::Value::String(l.clone()).to_string())
        .collect();
    format!("[{}]", items.join(", "))
}
