//! Attention without stored scores, for inference on flex: `softmax(q kᵀ * scale + mask) v`
//! one (batch, head) per task, its `[queries, keys]` scores and probabilities in two buffers of
//! the task's own that stay in cache, the context written straight into `[batch, queries,
//! heads, head_dim]` order so that merging the heads afterwards copies nothing. Training keeps
//! the three-step form (its backward needs the probabilities).

use burn::backend::TensorMetadata;
use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{Bytes, DType, Shape};
use rayon::prelude::*;

use crate::flex::{MaskRows, Softmax, contiguous, softmax_rows_v};
use crate::math::KeepMask;
use crate::matmul::{single_gemm, view};

/// A pointer into the output that every task writes a disjoint part of.
struct Output(*mut f32);
// SAFETY: tasks write disjoint elements (their own batch and head) and the buffer outlives them.
#[allow(unsafe_code)]
unsafe impl Send for Output {}
#[allow(unsafe_code)]
unsafe impl Sync for Output {}

impl Output {
    /// The element at `offset` (a method, so that closures capture the `Sync` wrapper).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `[b, h, q, d]` attention context from `query [b, h, q, d]`, `key` and `value [b, h, k, d]`
/// (any strides, as split heads leave them) and an additive `mask` broadcasting to
/// `[b, h, q, k]` (first three axes full or 1).
pub fn attention(
    query: &FlexTensor,
    key: &FlexTensor,
    value: &FlexTensor,
    mask: &FlexTensor,
    scale: f32,
) -> FlexTensor {
    let (q_shape, k_shape) = (query.shape(), key.shape());
    let [batch, heads, queries, head_dim] = dims4(&q_shape);
    let keys = dims4(&k_shape)[2];
    assert_eq!(dims4(&value.shape()), [batch, heads, keys, head_dim]);
    let rows = MaskRows::new(&Shape::new([batch, heads, queries, keys]), &mask.shape());
    let mask_values = contiguous(mask);
    let softmax = Softmax {
        rows: &rows,
        mask: &mask_values,
        scale,
        keep: KeepMask::new(0.0, 0),
    };
    let mut out: Vec<f32> = Vec::with_capacity(batch * heads * queries * head_dim);
    let output = Output(out.as_mut_ptr());
    let (q_view, k_view, v_view) = (view(query, false), view(key, true), view(value, false));
    (0..batch * heads).into_par_iter().for_each_init(
        || (vec![0.0f32; queries * keys], vec![0.0f32; queries * keys]),
        |(scores, probs), task| {
            let (b, h) = (task / heads, task % heads);
            // SAFETY: the views address elements inside their storage (flex's invariant),
            // the scratch buffers hold `queries * keys` elements, and this task writes only
            // batch `b`, head `h` of the output, which has room for all of them.
            #[allow(unsafe_code)]
            unsafe {
                single_gemm(
                    (queries, keys, head_dim),
                    (scores.as_mut_ptr(), keys as isize, 1),
                    q_view.at(query, task),
                    k_view.at(key, task),
                );
                softmax_rows_v(&softmax, task * queries, probs, None, scores);
                let context = output.at((b * queries * heads + h) * head_dim);
                single_gemm(
                    (queries, head_dim, keys),
                    (context, (heads * head_dim) as isize, 1),
                    (probs.as_ptr(), keys as isize, 1),
                    v_view.at(value, task),
                );
            }
        },
    );
    #[allow(unsafe_code)]
    // SAFETY: every (batch, head) task wrote its `queries * head_dim` elements above.
    unsafe {
        out.set_len(batch * heads * queries * head_dim);
    }
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(Shape::new([batch, queries, heads, head_dim])),
        DType::F32,
    )
    .permute(&[0, 2, 1, 3])
}

fn dims4(shape: &Shape) -> [usize; 4] {
    shape
        .as_slice()
        .try_into()
        .unwrap_or_else(|_| panic!("attention takes [batch, heads, seq, head_dim], not {shape:?}"))
}
