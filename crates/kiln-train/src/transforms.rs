//! Gradient transforms: what happens to the gradients between backward and the optimizer step.
//! Clipping by global norm lives here; Child-Tuning's masks are in [`crate::child_tuning`].

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// Scales all gradients together so that their joint L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut squares = SumOfSquares {
        grads,
        on_host: 0.0,
        total: None,
        any: false,
    };
    model.visit(&mut squares);
    if !squares.any {
        return 0.0;
    }
    let on_device = squares
        .total
        .map_or(0.0, |total| f64::from(total.into_scalar::<f32>()));
    let norm = (squares.on_host + on_device).sqrt();
    if norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        model.visit(&mut Scale { grads, factor });
    }
    norm
}

/// Every gradient's sum of squares: on the CPU summed by kiln-kernels in one pass each (on the
/// host, in f64), elsewhere accumulated as a device tensor and read once.
struct SumOfSquares<'a> {
    grads: &'a GradientsParams,
    on_host: f64,
    total: Option<Tensor<1>>,
    any: bool,
}

impl ModuleVisitor for SumOfSquares<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            self.any = true;
            if let Some(square) = kiln_kernels::sum_of_squares(&grad) {
                self.on_host += square;
                return;
            }
            let square = grad.powi_scalar(2).sum();
            self.total = Some(match self.total.take() {
                Some(total) => total + square,
                None => square,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            self.grads
                .register::<D>(param.id, kiln_kernels::scale(grad, self.factor));
        }
    }
}
