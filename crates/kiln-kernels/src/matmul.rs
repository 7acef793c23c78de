//! Products of 2-D operands (every projection of a layer) straight into `gemm`: operands read
//! through their strides, so a transpose is never copied, and the output is written once.
//! Burn 0.22's flex matmul zero-fills its output and then copies it to realign the buffer before
//! `gemm` writes it; over a training step that was a tenth of the CPU time.

use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use gemm::{Parallelism, gemm};

use crate::flex::tensor;

/// Below this many multiply-adds one thread does the product (flex's own threshold).
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// `[rows, cols]` and the element strides of a 2-D view, transposed when asked.
fn view(tensor: &FlexTensor, transpose: bool) -> (usize, usize, isize, isize) {
    let shape = tensor.shape();
    let dims = shape.as_slice();
    assert_eq!(dims.len(), 2, "a 2-D operand, not {dims:?}");
    let strides = tensor.layout().strides();
    let (rows, cols, row_stride, col_stride) = (dims[0], dims[1], strides[0], strides[1]);
    if transpose {
        (cols, rows, col_stride, row_stride)
    } else {
        (rows, cols, row_stride, col_stride)
    }
}

/// `op(a) · op(b)`, `op` the transpose where asked: `[m, k] · [k, n] -> [m, n]`, row-major.
pub fn product(a: &FlexTensor, transpose_a: bool, b: &FlexTensor, transpose_b: bool) -> FlexTensor {
    let (m, k, a_rs, a_cs) = view(a, transpose_a);
    let (k_b, n, b_rs, b_cs) = view(b, transpose_b);
    assert_eq!(k, k_b, "matmul: inner dimensions {k} and {k_b} differ");
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    if k == 0 || m == 0 || n == 0 {
        out.resize(m * n, 0.0);
        return tensor(out, [m, n].into());
    }
    let parallelism = if m * n * k >= PARALLEL_WORK {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    let (a_values, b_values): (&[f32], &[f32]) = (a.storage(), b.storage());
    let (a_start, b_start) = (a.layout().start_offset(), b.layout().start_offset());
    assert!(a_start < a_values.len() && b_start < b_values.len());
    #[allow(unsafe_code)]
    // SAFETY: the layouts address only elements inside their storage (flex's invariant for
    // every view it hands out, strides included), the output has capacity for m * n elements,
    // and gemm with `read_dst = false` writes each of them exactly once before `set_len`.
    unsafe {
        gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
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
        out.set_len(m * n);
    }
    tensor(out, [m, n].into())
}
