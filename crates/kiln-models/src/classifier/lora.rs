//! LoRA on the classifier's projections: several LoRA adapters served on one base (routed per
//! batch or per example), and merging the trained delta into the base weights and back.

use super::SequenceClassifier;
use crate::error::{ModelError, Result};
use crate::low_rank::LowRankDelta;
use crate::tunable::{LoraRouting, TunableEmbedding, TunableLinear};

impl SequenceClassifier {
    /// Every backbone projection with its full path (`bert.layers.0.attention.query`).
    pub fn projections_mut(&mut self) -> Vec<(String, &mut TunableLinear)> {
        let prefix = self.backbone_name();
        self.backbone_mut()
            .projections_mut()
            .into_iter()
            .map(|(path, projection)| (format!("{prefix}.{path}"), projection))
            .collect()
    }

    /// The backbone's token embedding table with its full path (`bert.embeddings.word`,
    /// `gpt2.wte`): LoRA's other slot.
    pub fn word_embedding_mut(&mut self) -> (String, &mut TunableEmbedding) {
        let prefix = self.backbone_name();
        let (path, table) = self.backbone_mut().word_embedding_mut();
        (format!("{prefix}.{path}"), table)
    }

    /// Serves the LoRA adapter `name` on this base beside the others: `deltas` gives, by full
    /// projection path (`bert.layers.0.attention.query`), the projections it changes. It starts
    /// inactive.
    pub fn add_lora_adapter(
        &mut self,
        name: &str,
        mut deltas: Vec<(String, LowRankDelta)>,
    ) -> Result<()> {
        if self.lora_adapters.iter().any(|n| n == name) {
            return Err(ModelError::InvalidInput(format!(
                "a LoRA adapter called `{name}` is loaded already"
            )));
        }
        // Checked whole before anything is served: the adapter is all or nothing.
        let shapes: Vec<(String, usize, usize)> = self
            .projections_mut()
            .into_iter()
            .map(|(path, p)| (path, p.d_in(), p.d_out()))
            .collect();
        for (path, delta) in &deltas {
            let Some((_, d_in, d_out)) = shapes.iter().find(|(p, _, _)| p == path) else {
                return Err(ModelError::InvalidInput(format!(
                    "LoRA adapter `{name}` changes `{path}`, which this model does not have"
                )));
            };
            if delta.a.lazy_shape().dims::<2>()[0] != *d_in
                || delta.b.lazy_shape().dims::<2>()[1] != *d_out
            {
                return Err(ModelError::InvalidInput(format!(
                    "LoRA adapter `{name}`: its delta for `{path}` does not fit the projection"
                )));
            }
            if delta.magnitude.is_some() {
                // A served delta is added to the shared base's output; DoRA rescales it.
                return Err(ModelError::InvalidInput(format!(
                    "LoRA adapter `{name}` is a DoRA adapter, which rescales the base weight: \
                     it cannot be served beside others on one base (import it on its own)"
                )));
            }
        }
        for (path, projection) in self.projections_mut() {
            let delta = deltas
                .iter()
                .position(|(p, _)| *p == path)
                .map(|i| deltas.swap_remove(i).1);
            projection.served.push(delta);
        }
        self.lora_adapters.push(name.to_string());
        Ok(())
    }

    fn lora_index(&self, name: &str) -> Result<usize> {
        self.lora_adapters
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "no LoRA adapter called `{name}` (loaded: {})",
                    self.lora_adapters.join(", ")
                ))
            })
    }

    fn route(&mut self, routing: LoraRouting) {
        for (_, projection) in self.projections_mut() {
            projection.routing = routing.clone();
        }
    }

    /// Runs every example through the served adapter `name`, or through none (`None`).
    pub fn set_active_lora(&mut self, name: Option<&str>) -> Result<()> {
        let routing = match name {
            Some(name) => LoraRouting::All(self.lora_index(name)?),
            None => LoraRouting::Off,
        };
        self.route(routing);
        Ok(())
    }

    /// Runs each example of the next batches through the served adapter it names (`None`: the
    /// base): one mixed batch gives each example what its adapter alone would.
    pub fn route_lora(&mut self, per_example: &[Option<&str>]) -> Result<()> {
        let choice = per_example
            .iter()
            .map(|name| name.map(|n| self.lora_index(n)).transpose())
            .collect::<Result<Vec<_>>>()?;
        self.route(LoraRouting::PerExample(choice));
        Ok(())
    }

    /// Unloads the served adapter `name`; routing through it falls back to the base.
    pub fn delete_lora_adapter(&mut self, name: &str) -> Result<()> {
        let index = self.lora_index(name)?;
        let shift = |k: usize| match k.cmp(&index) {
            std::cmp::Ordering::Less => Some(k),
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Greater => Some(k - 1),
        };
        for (_, projection) in self.projections_mut() {
            projection.served.remove(index);
            projection.routing = match &projection.routing {
                LoraRouting::All(k) => shift(*k).map_or(LoraRouting::Off, LoraRouting::All),
                LoraRouting::PerExample(choice) => {
                    LoraRouting::PerExample(choice.iter().map(|c| c.and_then(shift)).collect())
                }
                LoraRouting::Off => LoraRouting::Off,
            };
        }
        self.lora_adapters.remove(index);
        Ok(())
    }

    /// Folds every LoRA delta (the token embedding's too) into its base weight (outputs
    /// unchanged, delta cost gone).
    pub fn merge_lora(&mut self) {
        for (_, projection) in self.projections_mut() {
            projection.merge_lora();
        }
        self.word_embedding_mut().1.merge_lora();
    }

    /// Takes merged LoRA deltas back out of the base weights.
    pub fn unmerge_lora(&mut self) {
        for (_, projection) in self.projections_mut() {
            projection.unmerge_lora();
        }
        self.word_embedding_mut().1.unmerge_lora();
    }

    /// Folds every LoHa, LoKr and VeRA update into its projection's weight.
    pub fn merge_updates(&mut self) {
        for (_, projection) in self.projections_mut() {
            projection.merge_update();
        }
    }

    /// Takes merged LoHa, LoKr and VeRA updates back out of the weights.
    pub fn unmerge_updates(&mut self) {
        for (_, projection) in self.projections_mut() {
            projection.unmerge_update();
        }
    }

    /// Folds every OFT rotation into its projection's weight.
    pub fn merge_rotations(&mut self) {
        for (_, projection) in self.projections_mut() {
            projection.merge_rotation();
        }
    }

    /// Puts back the weights merged rotations replaced.
    pub fn unmerge_rotations(&mut self) {
        for (_, projection) in self.projections_mut() {
            projection.unmerge_rotation();
        }
    }

    /// Folds every IA3 vector into its projection's weight (and bias).
    pub fn merge_ia3(&mut self) {
        for (_, projection) in self.projections_mut() {
            projection.merge_ia3();
        }
    }

    /// Divides merged IA3 vectors back out of the weights.
    pub fn unmerge_ia3(&mut self) {
        for (_, projection) in self.projections_mut() {
            projection.unmerge_ia3();
        }
    }
}
