//! AdaLoRA's per-step work on the whole classifier (see `crate::adalora` for the update): the
//! orthogonality regulariser for the loss, the gradients kept before the optimizer's step, and
//! the rank allocation after it, over every target at once (peft's `RankAllocator`).

use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use super::SequenceClassifier;
use crate::adalora::{SvdDelta, budget, host};

impl SequenceClassifier {
    fn svd_deltas(&mut self) -> Vec<&mut SvdDelta> {
        self.projections_mut()
            .into_iter()
            .filter_map(|(_, p)| p.adalora.as_mut())
            .collect()
    }

    /// `w·mean` of the orthogonality terms over every `P` and `Q` (peft's `AdaLoraModel.forward`);
    /// `None` without AdaLoRA or with weight 0.
    pub fn adalora_regularization(&self) -> Option<Tensor<1>> {
        let mut model = self.clone();
        let deltas = model.svd_deltas();
        let weight = deltas.first()?.orth_weight;
        if weight == 0.0 {
            return None;
        }
        let count = 2 * deltas.len();
        let sum = deltas
            .iter()
            .map(|d| d.orthogonality())
            .reduce(|a, b| a + b)?;
        Some(sum * (weight / count as f64))
    }

    /// Keeps this step's gradients of every AdaLoRA factor for [`Self::allocate_ranks`]
    /// (the optimizer consumes them).
    pub fn keep_adalora_gradients(&mut self, grads: &GradientsParams) {
        for delta in self.svd_deltas() {
            let p = grads.get::<2>(delta.p.id).map(host).unwrap_or_default();
            let lambda = grads
                .get::<1>(delta.lambda.id)
                .map(host)
                .unwrap_or_default();
            let q = grads.get::<2>(delta.q.id).map(host).unwrap_or_default();
            delta.pending = Some([p, lambda, q]);
        }
    }

    /// After the optimizer's step `step` (0-based) of `total_steps`: peft's `update_and_allocate`
    /// — the importance averages take this step's `|θ·∇θ|` until `T − tfinal`; on allocation
    /// steps the least important triplets' `λ`s are zeroed down to the budget; at `T − tfinal`
    /// the pattern is fixed, and after it re-applied every step.
    pub fn allocate_ranks(&mut self, step: usize, total_steps: usize) {
        let mut deltas = self.svd_deltas();
        let Some(first) = deltas.first() else {
            return;
        };
        let allocation = first.allocation;
        for delta in deltas.iter_mut() {
            delta.total_steps = total_steps;
        }
        let final_step = total_steps.saturating_sub(allocation.final_steps);
        if step > final_step {
            for delta in deltas.iter_mut() {
                if let Some(keep) = delta.final_keep.clone() {
                    delta.mask(&keep);
                }
            }
            return;
        }
        if step < final_step {
            let (beta1, beta2) = (allocation.beta1 as f32, allocation.beta2 as f32);
            for delta in deltas.iter_mut() {
                let Some([gp, gl, gq]) = delta.pending.take() else {
                    continue;
                };
                let values = [
                    host(delta.p.val()),
                    host(delta.lambda.val()),
                    host(delta.q.val()),
                ];
                for ((smoothed, v), g) in delta.importance.iter_mut().zip(&values).zip([gp, gl, gq])
                {
                    if g.len() == v.len() {
                        smoothed.update(v, &g, beta1, beta2);
                    }
                }
            }
        }
        let initial: usize = deltas.iter().map(|d| d.rank()).sum();
        let target = allocation.target_rank * deltas.len();
        let (budget, allocate) = budget(&allocation, initial, target, step, total_steps);
        if !(allocate || step == final_step) || budget >= initial {
            return;
        }
        // The (initial − budget)-th smallest score is the threshold; ties at it go too, as
        // peft's `kthvalue` and `<=` do.
        let scores: Vec<Vec<f32>> = deltas.iter().map(|d| d.triplet_scores()).collect();
        let mut all: Vec<f32> = scores.iter().flatten().copied().collect();
        all.sort_by(f32::total_cmp);
        let threshold = all[initial - budget - 1];
        for (delta, scores) in deltas.iter_mut().zip(scores) {
            let keep: Vec<bool> = scores.iter().map(|&s| s > threshold).collect();
            delta.mask(&keep);
            if step == final_step {
                delta.final_keep = Some(keep);
                delta.importance = Default::default();
            }
        }
    }
}
