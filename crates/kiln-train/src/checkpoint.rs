//! Checkpoints: a model's parameters (all, or those a pattern list selects) as safetensors keyed
//! by parameter path, with each tensor's `ParamId` in the metadata so that a resumed optimizer
//! finds its state again. Every file is written to a temporary name and renamed into place, so
//! a crash leaves either the old file or the new one, never half of one.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};

use kiln_models::paths::{ParamMapper, ParamVisitor, map_params, visit_params};
use kiln_models::weights::{KeyTable, Layout, hf_name_for};
use kiln_tuning::glob_match;

use crate::error::{Result, TrainError};

const PARAM_IDS_KEY: &str = "kiln.param_ids";

/// An error unless `dir` is missing or empty, or `force` allows writing into it: exports and
/// written models never replace what is there without being asked.
pub fn ensure_fresh_output(dir: &Path, force: bool) -> Result<()> {
    if has_entries(dir) && !force {
        return Err(TrainError::Invalid(format!(
            "--out {}: the folder is not empty; choose another, or pass --force to write into \
             it",
            dir.display()
        )));
    }
    Ok(())
}

/// Whether `dir` exists and holds anything.
pub(crate) fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|e| TrainError::io(dir, e))?;
    std::io::Write::write_all(&mut temp, bytes).map_err(|e| TrainError::io(path, e))?;
    temp.as_file()
        .sync_all()
        .map_err(|e| TrainError::io(path, e))?;
    temp.persist(path)
        .map_err(|e| TrainError::io(path, e.error))?;
    Ok(())
}

/// Writes named f32 tensors (name, shape, little-endian bytes) and `metadata` as one
/// safetensors file, atomically.
pub(crate) fn write_f32_tensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [u8])>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let views = tensors
        .into_iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(Dtype::F32, shape.to_vec(), bytes)
                .map_err(|e| TrainError::Invalid(format!("tensor `{name}`: {e}")))?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| TrainError::Invalid(format!("cannot serialise {}: {e}", path.display())))?;
    write_atomically(path, &bytes)
}

/// Little-endian bytes of `values`, as safetensors stores F32.
pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The values of an F32 tensor's little-endian bytes.
pub(crate) fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Saves the parameters whose paths match one of `patterns` to `path`.
pub fn save_params<M: Module>(model: &M, patterns: &[String], path: &Path) -> Result<usize> {
    save_params_as(model, path, |param_path| {
        patterns
            .iter()
            .any(|p| glob_match(p, param_path))
            .then(|| param_path.to_string())
    })
}

/// Saves the parameters for which `key` gives a name, under that name.
pub fn save_params_as<M: Module>(
    model: &M,
    path: &Path,
    key: impl Fn(&str) -> Option<String>,
) -> Result<usize> {
    save_params_laid_out(model, path, |p| key(p).map(|name| (name, Layout::Same)))
}

/// Saves every parameter `table` names under its HF name (after `prefix`) and in HF's layout
/// (PyTorch's `[out, in]` for linear weights): a state dict transformers reads.
pub fn save_params_hf<M: Module>(
    model: &M,
    path: &Path,
    table: KeyTable,
    prefix: &str,
) -> Result<usize> {
    save_params_laid_out(model, path, |p| {
        hf_name_for(table, p).map(|(name, layout)| (format!("{prefix}{name}"), layout))
    })
}

pub(crate) fn save_params_laid_out<M: Module>(
    model: &M,
    path: &Path,
    key: impl Fn(&str) -> Option<(String, Layout)>,
) -> Result<usize> {
    let mut collector = Collector {
        key,
        tensors: Vec::new(),
    };
    visit_params(model, &mut collector);
    let ids: HashMap<&str, String> = collector
        .tensors
        .iter()
        .map(|t| (t.path.as_str(), t.id.val().to_string()))
        .collect();
    // `format: pt` is what HF transformers asks of a safetensors file it loads.
    let metadata = HashMap::from([
        (
            PARAM_IDS_KEY.to_string(),
            serde_json::to_string(&ids).map_err(|e| TrainError::Invalid(e.to_string()))?,
        ),
        ("format".to_string(), "pt".to_string()),
    ]);
    let tensors = collector
        .tensors
        .iter()
        .map(|t| (t.path.as_str(), t.shape.as_slice(), t.bytes.as_slice()));
    write_f32_tensors(path, tensors, Some(metadata))?;
    Ok(collector.tensors.len())
}

struct SavedTensor {
    path: String,
    id: ParamId,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

struct Collector<F> {
    key: F,
    tensors: Vec<SavedTensor>,
}

impl<F: Fn(&str) -> Option<(String, Layout)>> ParamVisitor for Collector<F> {
    fn visit<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
        let Some((key, layout)) = (self.key)(path) else {
            return;
        };
        let value = match layout {
            Layout::Transposed if D == 2 => param.val().swap_dims(0, 1),
            _ => param.val(),
        };
        let shape = value.dims().to_vec();
        let floats: Vec<f32> = value
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("data converted to f32 reads back as f32");
        self.tensors.push(SavedTensor {
            path: key,
            id: param.id,
            shape,
            bytes: f32_bytes(&floats),
        });
    }
}

/// Loads every tensor of the checkpoint at `path` into the parameter of the same path, keeping
/// the saved `ParamId`. Every tensor must find a parameter of the same shape. Trainability is not
/// kept: set it again after loading.
pub fn load_params<M: Module>(model: M, path: &Path) -> Result<(M, usize)> {
    load_params_as(model, path, |param_path| Some(param_path.to_string()))
}

/// Loads the tensor named `key(path)` into each parameter `path` for which it gives a name.
pub fn load_params_as<M: Module>(
    model: M,
    path: &Path,
    key: impl Fn(&str) -> Option<String>,
) -> Result<(M, usize)> {
    load_params_laid_out(model, path, |p| key(p).map(|name| (name, Layout::Same)))
}

/// Loads the tensor `key(path)` names into each parameter `path`, transposed where its layout
/// says the file holds PyTorch's `[out, in]`. Every tensor of the file must find a parameter.
pub fn load_params_laid_out<M: Module>(
    model: M,
    path: &Path,
    key: impl Fn(&str) -> Option<(String, Layout)>,
) -> Result<(M, usize)> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
    let ids: HashMap<String, String> = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(PARAM_IDS_KEY))
        .map(|json| serde_json::from_str(json))
        .transpose()
        .map_err(|e| TrainError::checkpoint(path, format!("bad {PARAM_IDS_KEY}: {e}")))?
        .unwrap_or_default();
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
    let mut loader = Loader {
        key,
        file: &file,
        ids: &ids,
        file_path: path,
        loaded: Vec::new(),
        error: None,
    };
    let model = map_params(model, &mut loader);
    if let Some(error) = loader.error {
        return Err(error);
    }
    if let Some(name) = file
        .names()
        .into_iter()
        .find(|name| !loader.loaded.iter().any(|l| l == *name))
    {
        return Err(TrainError::checkpoint(
            path,
            format!("tensor `{name}` matches no parameter of this model (other method or model?)"),
        ));
    }
    let count = loader.loaded.len();
    Ok((model, count))
}

struct Loader<'a, F> {
    key: F,
    file: &'a safetensors::SafeTensors<'a>,
    ids: &'a HashMap<String, String>,
    file_path: &'a Path,
    loaded: Vec<String>,
    error: Option<TrainError>,
}

impl<F: Fn(&str) -> Option<(String, Layout)>> ParamMapper for Loader<'_, F> {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some((key, layout)) = (self.key)(path) else {
            return param;
        };
        let Ok(view) = self.file.tensor(&key) else {
            return param;
        };
        let expected = param.lazy_shape().dims::<D>().to_vec();
        let transposed = matches!(layout, Layout::Transposed) && D == 2;
        let stored: Vec<usize> = if transposed {
            expected.iter().rev().copied().collect()
        } else {
            expected.clone()
        };
        if view.shape() != stored.as_slice() || view.dtype() != Dtype::F32 {
            self.error.get_or_insert(TrainError::checkpoint(
                self.file_path,
                format!(
                    "tensor `{key}` is {:?} {:?}, the model's `{path}` expects F32 {stored:?}",
                    view.dtype(),
                    view.shape()
                ),
            ));
            return param;
        }
        let values = f32_values(view.data());
        let device = param.lazy_device();
        let id = match self.ids.get(&key).and_then(|id| id.parse::<u64>().ok()) {
            Some(id) => ParamId::from(id),
            None => param.id,
        };
        self.loaded.push(key);
        let tensor = Tensor::<D>::from_data(TensorData::new(values, stored), &device);
        let tensor = if transposed {
            tensor.swap_dims(0, 1)
        } else {
            tensor
        };
        Param::initialized(id, tensor)
    }
}
