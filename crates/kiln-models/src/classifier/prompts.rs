//! Virtual tokens and prefixes in the classifier's backbone: the soft prompt (prompt tuning,
//! P-tuning), prefix tuning's reparameterisation, and its folding into a prefix-only adapter.

use burn::module::Param;
use burn::tensor::Tensor;

use super::SequenceClassifier;
use crate::adapter::{AdapterConfig, AttentionPrefix};
use crate::error::{ModelError, Result};
use crate::prompt::{PrefixEncoder, PromptEncoder, PromptEncoderShape, PromptTemplate, SoftPrompt};

impl SequenceClassifier {
    /// Puts virtual tokens into the input: `initial` `[n, h]` with `n` the template's length,
    /// through a prompt encoder of that shape (P-tuning) when `encoder` gives one.
    pub fn add_prompt(
        &mut self,
        template: PromptTemplate,
        initial: Tensor<2>,
        encoder: Option<PromptEncoderShape>,
    ) -> Result<()> {
        let [n, width] = initial.dims();
        if n != template.len() || n == 0 || width != self.hidden_size() {
            return Err(ModelError::InvalidInput(format!(
                "a prompt of {} virtual tokens needs [{}, {}] initial embeddings, got [{n}, {width}]",
                template.len(),
                template.len(),
                self.hidden_size()
            )));
        }
        let device = initial.device();
        let prompt = SoftPrompt {
            embedding: Param::from_tensor(initial.detach()),
            encoder: encoder.map(|shape| PromptEncoder::new(width, shape, &device)),
            template,
        };
        *self.backbone_mut().prompt_slot()? = Some(prompt);
        Ok(())
    }

    /// Puts prefix tuning's reparameterisation (`len` rows, MLP width `mid`) on every layer.
    pub fn add_prefix_encoder(&mut self, len: usize, mid: usize) -> Result<()> {
        let device = self.head.output.weight.lazy_device();
        let encoder = PrefixEncoder::new(len, self.hidden_size(), mid, self.num_layers(), &device);
        *self.backbone_mut().prefix_encoder_slot()? = Some(encoder);
        Ok(())
    }

    /// Replaces the prefix encoder by the prefixes it computes, as the prefix of the adapter
    /// called `name` (MAM's), or of a new prefix-only adapter of that name: same outputs, no MLP
    /// left, saved and loaded like any adapter.
    pub fn fold_prefix_encoder(&mut self, name: &str) -> Result<()> {
        let encoder = self
            .backbone_mut()
            .prefix_encoder_slot()
            .ok()
            .and_then(Option::take)
            .ok_or_else(|| ModelError::InvalidInput("the model has no prefix encoder".into()))?;
        let prefixes = encoder.prefixes();
        let len = prefixes.first().map_or(0, |(key, _)| key.dims()[0]);
        let index = match self.adapter_index(name) {
            Some(index) => {
                self.adapters[index].config.prefix_len = len;
                index
            }
            None => {
                self.add_adapter(name, &AdapterConfig::prefix_only(len))?;
                self.adapters.len() - 1
            }
        };
        for (slots, (key, value)) in self.layer_adapters_mut().into_iter().zip(prefixes) {
            if let Some(adapter) = slots.as_mut().map(|s| &mut s.loaded[index]) {
                adapter.prefix = Some(AttentionPrefix {
                    key: Param::from_tensor(key.detach()),
                    value: Param::from_tensor(value.detach()),
                });
            }
        }
        Ok(())
    }
}
