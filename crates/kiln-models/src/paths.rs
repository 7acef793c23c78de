//! Parameter paths (`bert.layers.0.attention.query.weight`): the names that trainability
//! patterns, checkpoints and the HF key tables speak.
//!
//! Burn's `ModuleVisitor` and `ModuleMapper` see one module name at a time. [`visit_params`] and
//! [`map_params`] keep the stack of names and hand every float parameter over with its full path,
//! so each walk over a model is only what it does with a parameter.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// Reads every float parameter of a module, with its path.
pub trait ParamVisitor {
    /// Called with every float parameter and its path.
    fn visit<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>);
}

/// Rewrites every float parameter of a module, with its path.
pub trait ParamMapper {
    /// Called with every float parameter and its path; returns its replacement.
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>>;
}

/// Calls `visitor` on every float parameter of `module`, in module order.
pub fn visit_params<M: Module, V: ParamVisitor>(module: &M, visitor: &mut V) {
    module.visit(&mut WithPaths {
        inner: visitor,
        path: Vec::new(),
    });
}

/// Passes every float parameter of `module` through `mapper`, in module order.
pub fn map_params<M: Module, P: ParamMapper>(module: M, mapper: &mut P) -> M {
    module.map(&mut WithPaths {
        inner: mapper,
        path: Vec::new(),
    })
}

struct WithPaths<'a, T> {
    inner: &'a mut T,
    path: Vec<String>,
}

impl<T> WithPaths<'_, T> {
    fn joined(&self) -> String {
        self.path.join(".")
    }
}

impl<T: ParamVisitor> ModuleVisitor for WithPaths<'_, T> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.joined();
        self.inner.visit(&path, param);
    }
}

impl<T: ParamMapper> ModuleMapper for WithPaths<'_, T> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.joined();
        self.inner.map(&path, param)
    }
}
