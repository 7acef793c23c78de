//! The fast bodies on Burn's flex backend: contiguous f32 buffers, rows split over rayon's
//! workers, each block compiled for the widest vector extension the CPU has (see
//! `crate::simd`), and the math of `crate::math`, which vectorises.

use burn::backend::TensorMetadata;
use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{Bytes, DType, Shape};
use rayon::prelude::*;

use crate::math::{KeepMask, MulAdd, exp_with, gelu_derivative_with, gelu_with};

/// Elements per parallel task of an element-wise kernel (64 KiB of f32).
const CHUNK: usize = 1 << 14;
/// Rows per parallel task of a row-wise kernel, at least.
const MIN_ROWS: usize = 8;

pub(crate) fn contiguous(tensor: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match tensor.as_slice::<f32>() {
        Some(values) => std::borrow::Cow::Borrowed(values),
        None => std::borrow::Cow::Owned(
            tensor
                .to_contiguous()
                .as_slice::<f32>()
                .expect("a contiguous f32 tensor")
                .to_vec(),
        ),
    }
}

pub(crate) fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// `x` as a buffer the kernel may overwrite with its output, when `x` is the only owner of a
/// contiguous buffer of exactly its elements (at inference every producer's output is consumed
/// once): no allocation and no zero-fill. `Err(x)` when the values are shared or strided.
fn sole_buffer(mut x: FlexTensor) -> Result<FlexTensor, FlexTensor> {
    let whole = x.is_contiguous()
        && x.layout().start_offset() == 0
        && x.bytes().len() == x.shape().num_elements() * std::mem::size_of::<f32>();
    if whole && x.try_storage_mut::<f32>().is_some() {
        Ok(x)
    } else {
        Err(x)
    }
}

vectorised!(dropout_span_v => dropout_span, (out: &mut [f32], x: &[f32], mask: &KeepMask, base: usize));
vectorised!(bias_gelu_rows_v => bias_gelu_rows::<MulAdd>, (out: &mut [f32], x: Option<&[f32]>, bias: &[f32]));
vectorised!(bias_gelu_backward_rows_v => bias_gelu_backward_rows::<MulAdd>, (
    dx: &mut [f32], x: &[f32], grad: &[f32], bias: &[f32], partial: &mut [f32],
));
vectorised!(pub(crate) softmax_rows_v => softmax_rows::<MulAdd>, (
    softmax: &Softmax<'_>, first: usize, out: &mut [f32], dropped: Option<&mut [f32]>, scores: &[f32],
));
vectorised!(softmax_backward_rows_v => softmax_backward_rows, (
    out: &mut [f32], probs: &[f32], grad: &[f32], keys: usize, scale: f32, keep: Option<&KeepMask>,
    base: usize,
));
vectorised!(norm_rows_v => norm_rows, (
    norm: &Norm<'_>, base: usize, out: &mut [f32], normalised: Option<&mut [f32]>,
    inverse_std: &mut [f32], x: Option<&[f32]>, residual: &[f32],
));
vectorised!(norm_backward_rows_v => norm_backward_rows, (
    out: &mut [f32], xhat: &[f32], grad: &[f32], gamma: &[f32], inverse_std: &[f32],
    partial: &mut [f32],
));

fn last_dim(shape: &Shape) -> usize {
    shape.as_slice().last().copied().unwrap_or(1).max(1)
}

/// `x` with element `i` multiplied by the mask's factor for `i`: 0 or `1 / (1 - prob)`.
pub fn dropout(x: &FlexTensor, prob: f32, seed: u64) -> FlexTensor {
    let values = contiguous(x);
    let mask = KeepMask::new(prob, seed);
    let mut out = vec![0.0f32; values.len()];
    out.par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(chunk, (out, x))| dropout_span_v(out, x, &mask, chunk * CHUNK));
    tensor(out, x.shape())
}

/// Reductions keep this many partial results, so that the adds of one lane do not wait on the
/// previous one's (floating-point adds are not reassociated by the compiler on its own).
const LANES: usize = 16;

/// `sum(a[i] * b[i])`.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..LANES {
            lanes[i] += ca[i] * cb[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `sum(a[i])`.
#[inline(always)]
fn sum(a: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..LANES {
            lanes[i] += c[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `max(a[i])` (negative infinity for an empty slice).
#[inline(always)]
fn max(a: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for i in 0..LANES {
            lanes[i] = lanes[i].max(c[i]);
        }
    }
    lanes.iter().fold(tail, |m, &x| m.max(x))
}

/// `out[i] = x[i] * factor(base + i)`.
#[inline(always)]
fn dropout_span(out: &mut [f32], x: &[f32], mask: &KeepMask, base: usize) {
    for (i, (o, &x)) in out.iter_mut().zip(x).enumerate() {
        *o = x * mask.factor(base + i);
    }
}

/// `gelu(x + bias)`, the bias broadcast over the last axis; in `x`'s own buffer when it has
/// the only one.
pub fn bias_gelu(x: FlexTensor, bias: &FlexTensor) -> FlexTensor {
    let bias_values = contiguous(bias);
    let width = bias_values.len();
    let task = (CHUNK / width).max(1) * width;
    let x = match sole_buffer(x) {
        Ok(mut x) => {
            x.storage_mut::<f32>()
                .par_chunks_mut(task)
                .for_each(|out| bias_gelu_rows_v(out, None, &bias_values));
            return x;
        }
        Err(x) => x,
    };
    let values = contiguous(&x);
    let mut out = vec![0.0f32; values.len()];
    out.par_chunks_mut(task)
        .zip(values.par_chunks(task))
        .for_each(|(out, x)| bias_gelu_rows_v(out, Some(x), &bias_values));
    tensor(out, x.shape())
}

/// `out = gelu(x + bias)` row by row; `x` `None`: `out` holds `x` on entry.
#[inline(always)]
fn bias_gelu_rows<M: MulAdd>(out: &mut [f32], x: Option<&[f32]>, bias: &[f32]) {
    let width = bias.len();
    match x {
        Some(x) => {
            for (out, x) in out.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
                for ((o, &x), &b) in out.iter_mut().zip(x).zip(bias) {
                    *o = gelu_with::<M>(x + b);
                }
            }
        }
        None => {
            for out in out.chunks_exact_mut(width) {
                for (o, &b) in out.iter_mut().zip(bias) {
                    *o = gelu_with::<M>(*o + b);
                }
            }
        }
    }
}

/// Gradients of [`bias_gelu`] for its input and its bias: `gelu'(x + b) * grad` and that summed
/// over every row.
pub fn bias_gelu_backward(
    x: &FlexTensor,
    bias: &FlexTensor,
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor) {
    let (values, bias_values, grad_values) = (contiguous(x), contiguous(bias), contiguous(grad));
    let width = bias_values.len();
    let mut dx = vec![0.0f32; values.len()];
    let rows_per_task = (CHUNK / width).max(1);
    let dbias = dx
        .par_chunks_mut(rows_per_task * width)
        .zip(values.par_chunks(rows_per_task * width))
        .zip(grad_values.par_chunks(rows_per_task * width))
        .map(|((dx, x), grad)| {
            let mut partial = vec![0.0f32; width];
            bias_gelu_backward_rows_v(dx, x, grad, &bias_values, &mut partial);
            partial
        })
        .collect::<Vec<_>>();
    let dbias = in_order(dbias, width);
    (tensor(dx, x.shape()), tensor(dbias, bias.shape()))
}

/// `dx = gelu'(x + b) * grad` row by row, and `partial += dx` (the bias gradient's share).
#[inline(always)]
fn bias_gelu_backward_rows<M: MulAdd>(
    dx: &mut [f32],
    x: &[f32],
    grad: &[f32],
    bias: &[f32],
    partial: &mut [f32],
) {
    let width = bias.len();
    for ((dx, x), grad) in dx
        .chunks_exact_mut(width)
        .zip(x.chunks_exact(width))
        .zip(grad.chunks_exact(width))
    {
        for ((((dx, &x), &g), &b), p) in dx
            .iter_mut()
            .zip(x)
            .zip(grad)
            .zip(bias)
            .zip(partial.iter_mut())
        {
            let d = gelu_derivative_with::<M>(x + b) * g;
            *dx = d;
            *p += d;
        }
    }
}

/// The tasks' partial sums added in task order: the same total whatever thread ran which task,
/// so seeded runs give bit-identical losses (a rayon `reduce` adds in the order work was split).
fn in_order(partials: Vec<Vec<f32>>, width: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; width];
    for part in partials {
        for (t, p) in total.iter_mut().zip(part) {
            *t += p;
        }
    }
    total
}

/// Where row `r` of a `[batch, heads, queries, keys]` score tensor finds its mask row, for a
/// mask whose first three axes are each full or 1 (broadcast).
pub(crate) struct MaskRows {
    heads: usize,
    queries: usize,
    strides: [usize; 3],
    keys: usize,
}

impl MaskRows {
    pub(crate) fn new(scores: &Shape, mask: &Shape) -> Self {
        let (s, m) = (scores.as_slice(), mask.as_slice());
        assert!(
            s.len() == 4 && m.len() == 4 && m[3] == s[3],
            "attention mask {m:?} does not fit scores {s:?}"
        );
        for axis in 0..3 {
            assert!(
                m[axis] == s[axis] || m[axis] == 1,
                "attention mask {m:?} does not broadcast to scores {s:?}"
            );
        }
        let keys = s[3];
        let full = |axis: usize, stride: usize| if m[axis] == 1 { 0 } else { stride };
        Self {
            heads: s[1],
            queries: s[2],
            strides: [
                full(0, m[1] * m[2] * keys),
                full(1, m[2] * keys),
                full(2, keys),
            ],
            keys,
        }
    }

    fn offset(&self, row: usize) -> usize {
        let query = row % self.queries;
        let head = (row / self.queries) % self.heads;
        let batch = row / (self.queries * self.heads);
        batch * self.strides[0] + head * self.strides[1] + query * self.strides[2]
    }
}

/// `softmax(scores * scale + mask)` over the last axis, and that with dropout when `prob > 0`:
/// `(probabilities, dropped)`; `dropped` is `None` without dropout.
pub fn attention_probs(
    scores: &FlexTensor,
    mask: &FlexTensor,
    scale: f32,
    prob: f32,
    seed: u64,
) -> (FlexTensor, Option<FlexTensor>) {
    let shape = scores.shape();
    let rows = MaskRows::new(&shape, &mask.shape());
    let (values, mask_values) = (contiguous(scores), contiguous(mask));
    let keys = rows.keys;
    let softmax = Softmax {
        rows: &rows,
        mask: &mask_values,
        scale,
        keep: KeepMask::new(prob, seed),
    };
    let mut probs = vec![0.0f32; values.len()];
    let mut dropped = (prob > 0.0).then(|| vec![0.0f32; values.len()]);
    let rows_per_task = (CHUNK / keys).max(MIN_ROWS);
    let task = rows_per_task * keys;
    match dropped.as_mut() {
        None => probs
            .par_chunks_mut(task)
            .zip(values.par_chunks(task))
            .enumerate()
            .for_each(|(t, (out, scores))| {
                softmax_rows_v(&softmax, t * rows_per_task, out, None, scores)
            }),
        Some(dropped) => probs
            .par_chunks_mut(task)
            .zip(dropped.par_chunks_mut(task))
            .zip(values.par_chunks(task))
            .enumerate()
            .for_each(|(t, ((out, dropped), scores))| {
                softmax_rows_v(&softmax, t * rows_per_task, out, Some(dropped), scores)
            }),
    }
    let dropped = dropped.map(|d| tensor(d, shape.clone()));
    (tensor(probs, shape), dropped)
}

/// One attention-probability pass's constants.
pub(crate) struct Softmax<'a> {
    pub rows: &'a MaskRows,
    pub mask: &'a [f32],
    pub scale: f32,
    pub keep: KeepMask,
}

/// Rows `first..` of the probabilities into `out` (and with dropout into `dropped`).
#[inline(always)]
fn softmax_rows<M: MulAdd>(
    softmax: &Softmax<'_>,
    first: usize,
    out: &mut [f32],
    dropped: Option<&mut [f32]>,
    scores: &[f32],
) {
    let keys = softmax.rows.keys;
    for (r, (out, scores)) in out
        .chunks_exact_mut(keys)
        .zip(scores.chunks_exact(keys))
        .enumerate()
    {
        let row = first + r;
        let mask = &softmax.mask[softmax.rows.offset(row)..][..keys];
        for ((o, &s), &m) in out.iter_mut().zip(scores).zip(mask) {
            *o = M::mul_add(s, softmax.scale, m);
        }
        let top = max(out);
        for o in out.iter_mut() {
            *o = exp_with::<M>(*o - top);
        }
        let inverse = 1.0 / sum(out);
        for o in out.iter_mut() {
            *o *= inverse;
        }
    }
    if let Some(dropped) = dropped {
        let base = first * keys;
        for (j, (d, &p)) in dropped.iter_mut().zip(out.iter()).enumerate() {
            *d = p * softmax.keep.factor(base + j);
        }
    }
}

/// The scores' gradient of [`attention_probs`] from the probabilities it returned:
/// `scale * p * (g' - sum(g' * p))` per row, with `g'` the gradient through dropout.
pub fn attention_probs_backward(
    probs: &FlexTensor,
    grad: &FlexTensor,
    scale: f32,
    prob: f32,
    seed: u64,
) -> FlexTensor {
    let shape = probs.shape();
    let keys = last_dim(&shape);
    let (probs_values, grad_values) = (contiguous(probs), contiguous(grad));
    let keep = (prob > 0.0).then(|| KeepMask::new(prob, seed));
    let mut out = vec![0.0f32; probs_values.len()];
    let rows_per_task = (CHUNK / keys).max(MIN_ROWS);
    let task = rows_per_task * keys;
    out.par_chunks_mut(task)
        .zip(
            probs_values
                .par_chunks(task)
                .zip(grad_values.par_chunks(task)),
        )
        .enumerate()
        .for_each(|(t, (out, (probs, grad)))| {
            let base = t * task;
            softmax_backward_rows_v(out, probs, grad, keys, scale, keep.as_ref(), base)
        });
    tensor(out, shape)
}

#[inline(always)]
fn softmax_backward_rows(
    out: &mut [f32],
    probs: &[f32],
    grad: &[f32],
    keys: usize,
    scale: f32,
    keep: Option<&KeepMask>,
    base: usize,
) {
    // The gradient through dropout first, over the whole span.
    match keep {
        Some(keep) => dropout_span(out, grad, keep, base),
        None => out.copy_from_slice(grad),
    }
    for (out, p) in out.chunks_exact_mut(keys).zip(probs.chunks_exact(keys)) {
        let dot = dot(out, p);
        for (o, &p) in out.iter_mut().zip(p) {
            *o = scale * p * (*o - dot);
        }
    }
}

/// What the backward pass of [`add_layer_norm`] needs: the normalised rows and their
/// reciprocal standard deviations.
#[derive(Debug, Clone)]
pub struct NormState {
    /// The normalised rows `(x - mean) / std`, before gamma and beta.
    pub normalised: FlexTensor,
    /// `1 / std` of every row, which the backward pass needs.
    pub inverse_std: Vec<f32>,
}

/// `LayerNorm(dropout(x) + residual)` over the last axis: `(output, state for backward)`; the
/// output in `x`'s own buffer when it has the only one.
#[allow(clippy::too_many_arguments)]
pub fn add_layer_norm(
    x: FlexTensor,
    residual: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    eps: f32,
    prob: f32,
    seed: u64,
    keep_state: bool,
) -> (FlexTensor, Option<NormState>) {
    let shape = x.shape();
    assert_eq!(
        shape,
        residual.shape(),
        "layer norm: input and residual differ in shape"
    );
    let (residual, gamma, beta) = (contiguous(residual), contiguous(gamma), contiguous(beta));
    let width = gamma.len();
    let elements = shape.num_elements();
    let rows = elements / width;
    let norm = Norm {
        gamma: &gamma,
        beta: &beta,
        eps,
        keep: (prob > 0.0).then(|| KeepMask::new(prob, seed)),
    };
    // In place: `out` holds x already; else a fresh buffer and x read beside it.
    let (mut out, x) = match sole_buffer(x) {
        Ok(x) => (x, None),
        Err(x) => (tensor(vec![0.0f32; elements], shape.clone()), Some(x)),
    };
    let x_values = x.as_ref().map(contiguous);
    let mut normalised = keep_state.then(|| vec![0.0f32; elements]);
    let mut inverse_std = vec![0.0f32; rows];
    let rows_per_task = (CHUNK / width).max(MIN_ROWS);
    let task = rows_per_task * width;
    let mut normalised_spans: Vec<Option<&mut [f32]>> = match normalised.as_mut() {
        Some(values) => values.chunks_mut(task).map(Some).collect(),
        None => Vec::new(),
    };
    normalised_spans.resize_with(elements.div_ceil(task), || None);
    let spans: Vec<_> = out
        .storage_mut::<f32>()
        .chunks_mut(task)
        .zip(normalised_spans)
        .zip(inverse_std.chunks_mut(rows_per_task))
        .enumerate()
        .collect();
    spans
        .into_par_iter()
        .for_each(|(t, ((out, normalised), inverse_std))| {
            let base = t * task;
            let x = x_values.as_deref().map(|x| &x[base..base + out.len()]);
            let residual = &residual[base..base + out.len()];
            norm_rows_v(&norm, base, out, normalised, inverse_std, x, residual)
        });
    let state = normalised.map(|normalised| NormState {
        normalised: tensor(normalised, shape),
        inverse_std,
    });
    (out, state)
}

/// One layer-norm pass's constants.
struct Norm<'a> {
    gamma: &'a [f32],
    beta: &'a [f32],
    eps: f32,
    keep: Option<KeepMask>,
}

/// The rows of a span starting at element `base`: `out` gets the output (`x` `None`: `out`
/// holds `x` on entry), `normalised` (when kept) the normalised rows, `inverse_std` each row's
/// 1 / std.
#[inline(always)]
fn norm_rows(
    norm: &Norm<'_>,
    base: usize,
    out: &mut [f32],
    mut normalised: Option<&mut [f32]>,
    inverse_std: &mut [f32],
    x: Option<&[f32]>,
    residual: &[f32],
) {
    let width = norm.gamma.len();
    match (&norm.keep, x) {
        (Some(keep), Some(x)) => {
            dropout_span(out, x, keep, base);
            for (o, &r) in out.iter_mut().zip(residual) {
                *o += r;
            }
        }
        (Some(keep), None) => {
            for (i, (o, &r)) in out.iter_mut().zip(residual).enumerate() {
                *o = *o * keep.factor(base + i) + r;
            }
        }
        (None, Some(x)) => {
            for ((o, &x), &r) in out.iter_mut().zip(x).zip(residual) {
                *o = x + r;
            }
        }
        (None, None) => {
            for (o, &r) in out.iter_mut().zip(residual) {
                *o += r;
            }
        }
    }
    for (r, out) in out.chunks_exact_mut(width).enumerate() {
        let mean = sum(out) / width as f32;
        for o in out.iter_mut() {
            *o -= mean;
        }
        let inverse = 1.0 / (dot(out, out) / width as f32 + norm.eps).sqrt();
        inverse_std[r] = inverse;
        if let Some(normalised) = normalised.as_deref_mut() {
            let normalised = &mut normalised[r * width..][..width];
            for (n, o) in normalised.iter_mut().zip(out.iter_mut()) {
                *n = *o * inverse;
                *o = *n;
            }
        } else {
            for o in out.iter_mut() {
                *o *= inverse;
            }
        }
        for ((o, &g), &b) in out.iter_mut().zip(norm.gamma).zip(norm.beta) {
            *o = *o * g + b;
        }
    }
}

/// Gradients of [`add_layer_norm`]: `(x, residual, gamma, beta)`.
pub fn add_layer_norm_backward(
    state: &NormState,
    gamma: &FlexTensor,
    grad: &FlexTensor,
    prob: f32,
    seed: u64,
) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
    let shape = grad.shape();
    let (normalised, gamma_values, grad_values) = (
        contiguous(&state.normalised),
        contiguous(gamma),
        contiguous(grad),
    );
    let width = gamma_values.len();
    let mut d_residual = vec![0.0f32; grad_values.len()];
    let rows_per_task = (CHUNK / width).max(MIN_ROWS);
    let task = rows_per_task * width;
    let partials = d_residual
        .par_chunks_mut(task)
        .zip(
            normalised
                .par_chunks(task)
                .zip(grad_values.par_chunks(task)),
        )
        .zip(state.inverse_std.par_chunks(rows_per_task))
        .map(|((out, (xhat, grad)), inverse_std)| {
            let mut partial = vec![0.0f32; 2 * width];
            norm_backward_rows_v(out, xhat, grad, &gamma_values, inverse_std, &mut partial);
            partial
        })
        .collect::<Vec<_>>();
    let partials = in_order(partials, 2 * width);
    let (dgamma, dbeta) = partials.split_at(width);
    let d_residual = tensor(d_residual, shape);
    let dx = if prob > 0.0 {
        dropout(&d_residual, prob, seed)
    } else {
        d_residual.clone()
    };
    (
        dx,
        d_residual,
        tensor(dgamma.to_vec(), gamma.shape()),
        tensor(dbeta.to_vec(), gamma.shape()),
    )
}

/// Per row: `dx = (g' - mean(g') - xhat * mean(g' * xhat)) / std` with `g' = grad * gamma`;
/// `partial` gathers gamma's (`grad * xhat`) and beta's (`grad`) gradients.
#[inline(always)]
fn norm_backward_rows(
    out: &mut [f32],
    xhat: &[f32],
    grad: &[f32],
    gamma: &[f32],
    inverse_std: &[f32],
    partial: &mut [f32],
) {
    let width = gamma.len();
    let (dgamma, dbeta) = partial.split_at_mut(width);
    let inverse_n = 1.0 / width as f32;
    for (r, ((out, xhat), grad)) in out
        .chunks_exact_mut(width)
        .zip(xhat.chunks_exact(width))
        .zip(grad.chunks_exact(width))
        .enumerate()
    {
        for j in 0..width {
            out[j] = grad[j] * gamma[j];
            dgamma[j] += grad[j] * xhat[j];
            dbeta[j] += grad[j];
        }
        let (mean_g, mean_gx) = (sum(out) * inverse_n, dot(out, xhat) * inverse_n);
        let inverse = inverse_std[r];
        for (o, &x) in out.iter_mut().zip(xhat) {
            *o = inverse * (*o - mean_g - x * mean_gx);
        }
    }
}
