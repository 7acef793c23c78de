//! Matrix products straight into `gemm`, 2-D (every projection of a layer) and batched over
//! equal leading axes (attention's per-head products): operands are read through their strides,
//! so a transpose or a head split is never copied, and the output is written once.
//! Burn 0.22's flex matmul zero-fills its output and then copies it to realign the buffer before
//! `gemm` writes it; over a training step that was a tenth of the CPU time.

use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use crate::flex::tensor;

/// Below this many multiply-adds one thread does the product (flex's own threshold).
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// `[rows, cols]` and the element strides of the last two axes of a view, transposed when asked.
fn view(tensor: &FlexTensor, transpose: bool) -> (usize, usize, isize, isize) {
    let shape = tensor.shape();
    let dims = shape.as_slice();
    let rank = dims.len();
    assert!(rank >= 2, "a matrix operand, not {dims:?}");
    let strides = tensor.layout().strides();
    let (rows, cols) = (dims[rank - 2], dims[rank - 1]);
    let (row_stride, col_stride) = (strides[rank - 2], strides[rank - 1]);
    if transpose {
        (cols, rows, col_stride, row_stride)
    } else {
        (rows, cols, row_stride, col_stride)
    }
}

/// Whether [`product`] takes these operands: both of one rank >= 2 with the same leading axes.
pub fn supported(a: &[usize], b: &[usize]) -> bool {
    a.len() == b.len() && a.len() >= 2 && a[..a.len() - 2] == b[..b.len() - 2]
}

/// The element offset of batch `index` (row-major over the leading axes) in a view.
fn batch_offset(tensor: &FlexTensor, index: usize) -> usize {
    let shape = tensor.shape();
    let dims = shape.as_slice();
    let strides = tensor.layout().strides();
    let (mut rest, mut offset) = (index, tensor.layout().start_offset() as isize);
    for axis in (0..dims.len() - 2).rev() {
        offset += (rest % dims[axis]) as isize * strides[axis];
        rest /= dims[axis];
    }
    usize::try_from(offset).expect("a view inside its storage")
}

/// `op(a) · op(b)` over the last two axes, `op` the transpose where asked, for every index of
/// the (equal) leading axes: `[.., m, k] · [.., k, n] -> [.., m, n]`, row-major.
pub fn product(a: &FlexTensor, transpose_a: bool, b: &FlexTensor, transpose_b: bool) -> FlexTensor {
    let (a_shape, b_shape) = (a.shape(), b.shape());
    assert!(
        supported(a_shape.as_slice(), b_shape.as_slice()),
        "matmul: {a_shape:?} and {b_shape:?} differ in their leading axes"
    );
    let (m, k, a_rs, a_cs) = view(a, transpose_a);
    let (k_b, n, b_rs, b_cs) = view(b, transpose_b);
    assert_eq!(k, k_b, "matmul: inner dimensions {k} and {k_b} differ");
    let leading = &a_shape.as_slice()[..a_shape.num_dims() - 2];
    let batches: usize = leading.iter().product();
    let mut out_dims = leading.to_vec();
    out_dims.extend([m, n]);
    let size = m * n;
    let mut out: Vec<f32> = Vec::with_capacity(batches * size);
    if k == 0 || size == 0 {
        out.resize(batches * size, 0.0);
        return tensor(out, out_dims.into());
    }
    let (a_values, b_values): (&[f32], &[f32]) = (a.storage(), b.storage());
    let one = |batch: usize, out: *mut f32, parallelism: Parallelism| {
        let (a_start, b_start) = (batch_offset(a, batch), batch_offset(b, batch));
        assert!(a_start < a_values.len() && b_start < b_values.len());
        #[allow(unsafe_code)]
        // SAFETY: the layouts address only elements inside their storage (flex's invariant for
        // every view it hands out, strides included), `out` points at `size` writable elements
        // of this batch, and gemm with `read_dst = false` writes each of them exactly once.
        unsafe {
            gemm(
                m,
                n,
                k,
                out,
                1,
                n as isize,
                false,
                a_values.as_ptr().add(a_start),
                a_cs,
                a_rs,
                b_values.as_ptr().add(b_start),
                b_cs,
                b_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    let spare = out.spare_capacity_mut();
    if m * n * k >= PARALLEL_WORK || batches == 1 {
        // Large products: gemm splits each one over the threads.
        let parallelism = if m * n * k >= PARALLEL_WORK {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        };
        for (batch, chunk) in spare.chunks_mut(size).enumerate() {
            one(batch, chunk.as_mut_ptr().cast(), parallelism);
        }
    } else {
        // Many small products (attention heads): one per task.
        spare
            .par_chunks_mut(size)
            .enumerate()
            .for_each(|(batch, chunk)| one(batch, chunk.as_mut_ptr().cast(), Parallelism::None));
    }
    #[allow(unsafe_code)]
    // SAFETY: every batch's `size` elements were written above.
    unsafe {
        out.set_len(batches * size);
    }
    tensor(out, out_dims.into())
}
