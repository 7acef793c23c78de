//! Reading HF weight files (`model.safetensors` or `pytorch_model.bin`) and moving their tensors
//! into a Burn module by parameter path.
//!
//! Every backbone has one [`KeyTable`]: kiln parameter path → HF tensor name, with `{i}`
//! standing for a layer index. Loading walks the module, looks each parameter up in the table,
//! checks the shape and replaces the value; anything missing or mis-shaped is an error naming
//! the tensor and both shapes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};

use crate::error::{ModelError, Result};
use crate::paths::{ParamMapper, map_params};

/// A float tensor read from a weight file, converted to f32.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Vec<f32>,
}

/// All float tensors of one weight file, by HF name.
#[derive(Debug)]
pub struct WeightFile {
    path: PathBuf,
    tensors: BTreeMap<String, RawTensor>,
    /// Integer and boolean tensors (position ids, attention-mask buffers): never parameters.
    non_float: BTreeSet<String>,
}

/// How an HF tensor is laid out relative to kiln's parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Same layout (embeddings, norms, biases, GPT-2 Conv1D weights which are already `[in, out]`).
    Same,
    /// PyTorch `nn.Linear` stores `[out, in]`; Burn's `Linear` stores `[in, out]`.
    Transposed,
}

/// One row of a backbone's key table.
#[derive(Debug, Clone, Copy)]
pub struct KeyMapping {
    /// kiln's parameter path (with `{i}` for the layer).
    pub kiln: &'static str,
    /// HF's tensor name.
    pub hf: &'static str,
    /// How the tensor is laid out relative to kiln's.
    pub layout: Layout,
}

/// kiln parameter path ↔ HF tensor name, one table per backbone.
pub type KeyTable = &'static [KeyMapping];

/// Looks a concrete kiln path up in `table`, substituting the layer index for `{i}`.
pub fn hf_name_for(table: KeyTable, kiln_path: &str) -> Option<(String, Layout)> {
    let (pattern, index) = generalise(kiln_path);
    table.iter().find(|row| row.kiln == pattern).map(|row| {
        let hf = match &index {
            Some(i) => row.hf.replace("{i}", i),
            None => row.hf.to_string(),
        };
        (hf, row.layout)
    })
}

/// The kiln path of a concrete HF name in `table` (the inverse of [`hf_name_for`]).
pub fn kiln_name_for(table: KeyTable, hf_name: &str) -> Option<(String, Layout)> {
    let (pattern, index) = generalise(hf_name);
    table.iter().find(|row| row.hf == pattern).map(|row| {
        let kiln = match &index {
            Some(i) => row.kiln.replace("{i}", i),
            None => row.kiln.to_string(),
        };
        (kiln, row.layout)
    })
}

/// Replaces the first all-digit path segment by `{i}` and returns it.
fn generalise(path: &str) -> (String, Option<String>) {
    let mut index = None;
    let segments: Vec<&str> = path
        .split('.')
        .map(|segment| {
            if index.is_none() && !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit())
            {
                index = Some(segment.to_string());
                "{i}"
            } else {
                segment
            }
        })
        .collect();
    (segments.join("."), index)
}

impl WeightFile {
    /// Opens the weights of a HF model directory: `model.safetensors` if present, else
    /// `pytorch_model.bin`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let safetensors = dir.join("model.safetensors");
        let pytorch = dir.join("pytorch_model.bin");
        if safetensors.is_file() {
            Self::open(&safetensors)
        } else if pytorch.is_file() {
            Self::open(&pytorch)
        } else {
            Err(ModelError::NoWeights {
                dir: dir.to_path_buf(),
            })
        }
    }

    /// Opens one weight file; the format follows the extension (`.safetensors`, else PyTorch).
    pub fn open(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|ext| ext == "safetensors") {
            read_safetensors(path)
        } else {
            read_pytorch(path)
        }
    }

    /// The weight file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of its tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Whether it holds a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.non_float.contains(name)
    }

    /// The tensor called `name`, converted to f32.
    pub fn get(&self, name: &str) -> Option<&RawTensor> {
        self.tensors.get(name)
    }

    /// Drops a prefix that task-specific HF classes put before the base model's names
    /// (`bert.` in `BertForSequenceClassification`, `transformer.` in `GPT2LMHeadModel`), so
    /// that one key table serves both. Tensors outside the prefix (task heads) are kept as is.
    pub fn strip_prefix(&mut self, prefix: &str) {
        if !self.tensors.keys().any(|name| name.starts_with(prefix)) {
            return;
        }
        let tensors = std::mem::take(&mut self.tensors);
        self.tensors = tensors
            .into_iter()
            .map(|(name, tensor)| match name.strip_prefix(prefix) {
                Some(rest) => (rest.to_string(), tensor),
                None => (name, tensor),
            })
            .collect();
        let non_float = std::mem::take(&mut self.non_float);
        self.non_float = non_float
            .into_iter()
            .map(|name| {
                name.strip_prefix(prefix)
                    .map(str::to_string)
                    .unwrap_or(name)
            })
            .collect();
    }

    /// Renames a tensor if present (for legacy aliases such as `LayerNorm.gamma`).
    pub fn rename(&mut self, from: &str, to: &str) {
        if let Some(tensor) = self.tensors.remove(from) {
            self.tensors.entry(to.to_string()).or_insert(tensor);
        }
    }

    /// Gives the matrix `name` a leading axis of one (`[a, b]` → `[1, a, b]`), if present.
    pub fn add_leading_axis(&mut self, name: &str) {
        if let Some(tensor) = self.tensors.get_mut(name).filter(|t| t.shape.len() == 2) {
            tensor.shape.insert(0, 1);
        }
    }

    /// Fills every float parameter of `module` from this file through `table`.
    ///
    /// Fails on the first parameter the table does not know, a tensor the file lacks, or a
    /// shape that differs from the one the config gave the module.
    pub fn load_into<M: Module>(&self, module: M, table: KeyTable) -> Result<M> {
        let mut loader = Loader {
            file: self,
            table,
            error: None,
        };
        let module = map_params(module, &mut loader);
        match loader.error {
            Some(error) => Err(error),
            None => Ok(module),
        }
    }
}

struct Loader<'a> {
    file: &'a WeightFile,
    table: KeyTable,
    error: Option<ModelError>,
}

impl Loader<'_> {
    fn tensor_for(&self, param_path: &str, expected: &[usize]) -> Result<TensorData> {
        let file = &self.file.path;
        let (hf, layout) = hf_name_for(self.table, param_path).ok_or_else(|| {
            ModelError::InvalidInput(format!(
                "kiln parameter `{param_path}` has no entry in the key table (a kiln bug)"
            ))
        })?;
        if self.file.non_float.contains(&hf) {
            return Err(ModelError::UnsupportedDtype {
                path: file.clone(),
                tensor: hf,
                dtype: format!(
                    "an integer or boolean type (kiln parameter `{param_path}` is float)"
                ),
            });
        }
        let raw = self
            .file
            .tensors
            .get(&hf)
            .ok_or_else(|| ModelError::MissingTensor {
                path: file.clone(),
                tensor: hf.clone(),
                param: param_path.to_string(),
            })?;
        let bad: Vec<usize> = raw
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_finite())
            .map(|(i, _)| i)
            .collect();
        if let Some(&first) = bad.first() {
            return Err(ModelError::NonFinite {
                path: file.clone(),
                tensor: hf,
                count: bad.len(),
                first,
            });
        }
        let found_as_kiln: Vec<usize> = match layout {
            Layout::Same => raw.shape.clone(),
            Layout::Transposed => raw.shape.iter().rev().copied().collect(),
        };
        if found_as_kiln != expected {
            let expected_as_hf = match layout {
                Layout::Same => expected.to_vec(),
                Layout::Transposed => expected.iter().rev().copied().collect(),
            };
            return Err(ModelError::ShapeMismatch {
                path: file.clone(),
                tensor: hf,
                expected: expected_as_hf,
                found: raw.shape.clone(),
            });
        }
        let values = match layout {
            Layout::Same => raw.values.clone(),
            Layout::Transposed => transpose(&raw.values, raw.shape[0], raw.shape[1]),
        };
        Ok(TensorData::new(values, found_as_kiln))
    }
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

impl ParamMapper for Loader<'_> {
    fn map<const D: usize>(
        &mut self,
        param_path: &str,
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let expected = param.lazy_shape().dims::<D>().to_vec();
        match self.tensor_for(param_path, &expected) {
            Ok(data) => {
                let device = param.lazy_device();
                let id = param.id;
                param.transform_for_load(Tensor::from_data(data, &device), id)
            }
            Err(error) => {
                self.error = Some(error);
                param
            }
        }
    }
}

fn read_safetensors(path: &Path) -> Result<WeightFile> {
    let bytes = std::fs::read(path).map_err(|cause| ModelError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let bad = |message: String| ModelError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut tensors = BTreeMap::new();
    let mut non_float = BTreeSet::new();
    for (name, view) in file.tensors() {
        use safetensors::Dtype;
        let bytes = view.data();
        let values = match view.dtype() {
            Dtype::F32 => decode(bytes, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Dtype::F64 => decode(bytes, 8, |b| {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }),
            Dtype::F16 => decode(bytes, 2, |b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
            Dtype::BF16 => decode(bytes, 2, |b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
            Dtype::BOOL
            | Dtype::U8
            | Dtype::I8
            | Dtype::I16
            | Dtype::U16
            | Dtype::I32
            | Dtype::U32
            | Dtype::I64
            | Dtype::U64 => {
                non_float.insert(name);
                continue;
            }
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    tensor: name,
                    dtype: format!("{other:?}"),
                });
            }
        };
        tensors.insert(
            name,
            RawTensor {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok(WeightFile {
        path: path.to_path_buf(),
        tensors,
        non_float,
    })
}

fn read_pytorch(path: &Path) -> Result<WeightFile> {
    use pytorch_reader::DType;
    let bad = |message: String| ModelError::Pytorch {
        path: path.to_path_buf(),
        message,
    };
    let reader = pytorch_reader::PytorchReader::new(path).map_err(|e| bad(e.to_string()))?;
    let mut tensors = BTreeMap::new();
    let mut non_float = BTreeSet::new();
    for (name, tensor) in reader.into_tensors() {
        let dtype = tensor.dtype();
        if !matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
            non_float.insert(name);
            continue;
        }
        let bytes = tensor.read().map_err(|e| bad(e.to_string()))?;
        // The reader returns native-endian bytes.
        let values = match dtype {
            DType::F32 => decode(&bytes, 4, |b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
            DType::F64 => decode(&bytes, 8, |b| {
                f64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }),
            DType::F16 => decode(&bytes, 2, |b| f16_to_f32(u16::from_ne_bytes([b[0], b[1]]))),
            _ => decode(&bytes, 2, |b| bf16_to_f32(u16::from_ne_bytes([b[0], b[1]]))),
        };
        tensors.insert(
            name,
            RawTensor {
                shape: tensor.shape().to_vec(),
                values,
            },
        );
    }
    Ok(WeightFile {
        path: path.to_path_buf(),
        tensors,
        non_float,
    })
}

fn decode(bytes: &[u8], width: usize, element: impl Fn(&[u8]) -> f32) -> Vec<f32> {
    bytes.chunks_exact(width).map(element).collect()
}

fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exponent = ((bits >> 10) & 0x1f) as u32;
    let mantissa = (bits & 0x3ff) as u32;
    let bits32 = match (exponent, mantissa) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal half: normalise into an f32 exponent.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_index_is_generalised_once() {
        assert_eq!(
            generalise("layers.11.attention.query.weight"),
            (
                "layers.{i}.attention.query.weight".to_string(),
                Some("11".into())
            )
        );
        assert_eq!(
            generalise("pooler.dense.bias"),
            ("pooler.dense.bias".into(), None)
        );
    }

    #[test]
    fn half_precision_decodes() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], 2, 3),
            vec![1., 4., 2., 5., 3., 6.]
        );
    }
}
