//! The hidden activations HF configs name (`hidden_act`, `activation_function`).

use burn::tensor::Tensor;
use burn::tensor::activation::{gelu_approximate, relu, silu};
use serde::{Deserialize, Serialize};

/// A non-linearity by the names HF configs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU with erf (BERT's `gelu`).
    Gelu,
    /// The tanh approximation (GPT-2's `gelu_new`; `gelu_pytorch_tanh` is the same function).
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    /// `max(0, x)`.
    Relu,
    /// `x · sigmoid(x)` (`swish`).
    #[serde(alias = "swish")]
    Silu,
    /// `tanh(x)`.
    Tanh,
}

impl std::str::FromStr for Activation {
    type Err = String;
    /// The names HF configs and AdapterHub use: `gelu`, `gelu_new`, `relu`, `silu`/`swish`, `tanh`.
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            format!("unknown activation `{s}`: expected relu, gelu, gelu_new, silu (swish) or tanh")
        })
    }
}

impl Activation {
    /// The activation of `x`, element-wise.
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Gelu => kiln_kernels::bias_gelu(x, None),
            Activation::GeluNew => gelu_approximate(x),
            Activation::Relu => relu(x),
            Activation::Silu => silu(x),
            Activation::Tanh => x.tanh(),
        }
    }
}
