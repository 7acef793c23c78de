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

/// The last two axes of a (possibly transposed) view: its matrix shape and element strides.
#[derive(Clone, Copy)]
pub(crate) struct Matrix {
    pub rows: usize,
    pub cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl Matrix {
    /// Batch `index`'s matrix (row-major over the leading axes) as gemm takes an operand:
    /// its first element and its row and column strides.
    pub fn at(&self, tensor: &FlexTensor, index: usize) -> (*const f32, isize, isize) {
        let values: &[f32] = tensor.storage();
        let start = batch_offset(tensor, index);
        assert!(start < values.len(), "a view inside its storage");
        (values[start..].as_ptr(), self.row_stride, self.col_stride)
    }
}

/// The matrix view of `tensor`'s last two axes, transposed when asked.
pub(crate) fn view(tensor: &FlexTensor, transpose: bool) -> Matrix {
    let shape = tensor.shape();
    let dims = shape.as_slice();
    let rank = dims.len();
    assert!(rank >= 2, "a matrix operand, not {dims:?}");
    let strides = tensor.layout().strides();
    let (rows, cols) = (dims[rank - 2], dims[rank - 1]);
    let (row_stride, col_stride) = (strides[rank - 2], strides[rank - 1]);
    if transpose {
        Matrix {
            rows: cols,
            cols: rows,
            row_stride: col_stride,
            col_stride: row_stride,
        }
    } else {
        Matrix {
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }
}

/// `dst = lhs · rhs` for an `m x k` and a `k x n` operand, each given as (first element, row
/// stride, column stride), on the calling thread unless `parallelism` says otherwise; every
/// element of `dst` is written once and none is read.
///
/// # Safety
/// Every element the strides address from each pointer must be inside one live allocation,
/// and `dst`'s must be writable and not read or written by anyone else meanwhile.
#[allow(unsafe_code)]
pub(crate) unsafe fn gemm_into(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, dst_cs): (*mut f32, isize, isize),
    (lhs, lhs_rs, lhs_cs): (*const f32, isize, isize),
    (rhs, rhs_rs, rhs_cs): (*const f32, isize, isize),
    parallelism: Parallelism,
) {
    // SAFETY: as the caller promises.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            false,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// [`gemm_into`] on the calling thread.
///
/// # Safety
/// As for [`gemm_into`].
#[allow(unsafe_code)]
pub(crate) unsafe fn single_gemm(
    sizes: (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
) {
    // SAFETY: as the caller promises.
    unsafe { gemm_into(sizes, dst, lhs, rhs, Parallelism::None) }
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
    let (a_view, b_view) = (view(a, transpose_a), view(b, transpose_b));
    let (m, k, n) = (a_view.rows, a_view.cols, b_view.cols);
    assert_eq!(
        k, b_view.rows,
        "matmul: inner dimensions {k} and {} differ",
        b_view.rows
    );
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
    let one = |batch: usize, out: *mut f32, parallelism: Parallelism| {
        #[allow(unsafe_code)]
        // SAFETY: the layouts address only elements inside their storage (flex's invariant for
        // every view it hands out, strides included) and `out` points at `size` writable
        // elements of this batch, written by this call only.
        unsafe {
            gemm_into(
                (m, n, k),
                (out, n as isize, 1),
                a_view.at(a, batch),
                b_view.at(b, batch),
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
