//! LoReFT's projection `R` between AdapterHub's form and kiln's. AdapterHub keeps `R` under
//! torch's orthogonal parametrisation (Householder reflections, with a stored frame): the trained
//! `original` `[r, h]` and the buffer `base` `[h, h]` give `R = (base · Q)ᵀ`, where `Q` is the
//! first `r` columns of the reflections `H_0 ⋯ H_{r-1}` read off `originalᵀ` and each column is
//! multiplied by its diagonal entry truncated to an integer (torch's `int()`). kiln trains `U`
//! with `R = GramSchmidt(U)`, and an `R` with orthonormal rows is its own `U`.

/// `R` `[r, h]` (row-major) from AdapterHub's `original` `[r, h]` and `base` `[h, h]`.
pub(super) fn rotation_from_adapterhub(
    original: &[f32],
    base: &[f32],
    rank: usize,
    width: usize,
) -> Vec<f32> {
    // x[i][j] = originalᵀ: reflection j's vector is e_j plus x's column j below the diagonal.
    let x = |i: usize, j: usize| f64::from(original[j * width + i]);
    let mut q: Vec<f64> = (0..width * rank)
        .map(|k| f64::from(u8::from(k / rank == k % rank)))
        .collect();
    for j in (0..rank).rev() {
        let v: Vec<f64> = (0..width)
            .map(|i| match i.cmp(&j) {
                std::cmp::Ordering::Less => 0.0,
                std::cmp::Ordering::Equal => 1.0,
                std::cmp::Ordering::Greater => x(i, j),
            })
            .collect();
        let tau = 2.0 / v.iter().map(|a| a * a).sum::<f64>();
        for column in 0..rank {
            let along: f64 = (0..width).map(|i| v[i] * q[i * rank + column]).sum();
            for i in 0..width {
                q[i * rank + column] -= tau * v[i] * along;
            }
        }
    }
    let mut rotation = vec![0f32; rank * width];
    for j in 0..rank {
        let sign = x(j, j).trunc();
        for a in 0..width {
            let value: f64 = (0..width)
                .map(|b| f64::from(base[a * width + b]) * q[b * rank + j])
                .sum();
            rotation[j * width + a] = (sign * value) as f32;
        }
    }
    rotation
}

/// AdapterHub's `original` `[r, h]` and `base` `[h, h]` for `R` `[r, h]` with orthonormal rows:
/// `original = −I` (reflections that cancel their signs) and a `base` whose first `r` columns are
/// `Rᵀ`, completed to an orthonormal frame from the standard basis.
pub(super) fn rotation_to_adapterhub(
    rotation: &[f32],
    rank: usize,
    width: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut original = vec![0f32; rank * width];
    for j in 0..rank {
        original[j * width + j] = -1.0;
    }
    let mut columns: Vec<Vec<f64>> = (0..rank)
        .map(|j| {
            (0..width)
                .map(|a| f64::from(rotation[j * width + a]))
                .collect()
        })
        .collect();
    for e in 0..width {
        if columns.len() == width {
            break;
        }
        let mut v: Vec<f64> = (0..width).map(|a| f64::from(u8::from(a == e))).collect();
        for column in &columns {
            let along: f64 = v.iter().zip(column).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(column).for_each(|(a, b)| *a -= along * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        // A basis vector (nearly) inside the span so far adds no direction.
        if norm > 1e-6 {
            columns.push(v.into_iter().map(|a| a / norm).collect());
        }
    }
    let mut base = vec![0f32; width * width];
    for (b, column) in columns.iter().enumerate() {
        for (a, value) in column.iter().enumerate() {
            base[a * width + b] = *value as f32;
        }
    }
    (original, base)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame written for `R` gives `R` back through torch's map.
    #[test]
    fn a_rotation_survives_the_round_trip() {
        let (rank, width) = (2, 5);
        let s = 0.5f32.sqrt();
        let rotation = [s, 0.0, s, 0.0, 0.0, 0.0, 0.6, 0.0, 0.8, 0.0];
        let (original, base) = rotation_to_adapterhub(&rotation, rank, width);
        let back = rotation_from_adapterhub(&original, &base, rank, width);
        for (a, b) in rotation.iter().zip(&back) {
            assert!((a - b).abs() < 1e-6, "{rotation:?} -> {back:?}");
        }
        // The frame is orthonormal.
        for i in 0..width {
            for j in 0..width {
                let dot: f32 = (0..width)
                    .map(|a| base[a * width + i] * base[a * width + j])
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-5, "columns {i}, {j}: {dot}");
            }
        }
    }
}
