//! Which projections a weight-side method (LoRA, IA3) changes, named as peft names its
//! `target_modules`: a target matches a projection whose path ends in the target's dot-separated
//! names (`query`, `attention.output`, `c_attn`), and a `*` name matches any one name, so that
//! `layers.*.output` picks BERT's feed-forward output in every layer but not `attention.output`.

use kiln_models::{SequenceClassifier, TunableLinear};

use crate::error::{Result, TuningError};

/// Whether the projection at `path` is one `target` names.
pub fn is_target(path: &str, target: &str) -> bool {
    let path: Vec<&str> = path.split('.').collect();
    let target: Vec<&str> = target.split('.').collect();
    target.len() <= path.len()
        && path[path.len() - target.len()..]
            .iter()
            .zip(&target)
            .all(|(name, wanted)| *wanted == "*" || name == wanted)
}

/// The paths of `model`'s projections that one of `targets` names; a target that names none is
/// an error under `--{option}` listing layer 0's projections.
pub fn projections_named(
    model: &mut SequenceClassifier,
    targets: &[String],
    option: &'static str,
) -> Result<Vec<String>> {
    let paths: Vec<String> = model
        .projections_mut()
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    if let Some(target) = targets
        .iter()
        .find(|t| !paths.iter().any(|p| is_target(p, t)))
    {
        let layer_zero: Vec<&str> = paths
            .iter()
            .filter(|p| p.contains(".0."))
            .map(String::as_str)
            .collect();
        return Err(TuningError::Option {
            option,
            message: format!(
                "`{target}` names no projection of this model; layer 0 has {}",
                layer_zero.join(", ")
            ),
        });
    }
    Ok(paths
        .into_iter()
        .filter(|p| targets.iter().any(|t| is_target(p, t)))
        .collect())
}

/// Calls `fill` on every projection of `model` one of `targets` names (see
/// [`projections_named`] for the error when one names none).
pub fn fill_targets(
    model: &mut SequenceClassifier,
    targets: &[String],
    option: &'static str,
    mut fill: impl FnMut(&mut TunableLinear),
) -> Result<()> {
    let paths = projections_named(model, targets, option)?;
    for (path, projection) in model.projections_mut() {
        if paths.contains(&path) {
            fill(projection);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_target;

    #[test]
    fn targets_match_trailing_names_and_wildcards() {
        assert!(is_target("bert.layers.0.attention.query", "query"));
        assert!(is_target(
            "bert.layers.0.attention.query",
            "attention.query"
        ));
        assert!(!is_target("bert.layers.0.attention.query", "ery"));
        assert!(is_target("bert.layers.3.output", "output"));
        assert!(is_target("bert.layers.3.attention.output", "output"));
        assert!(is_target("bert.layers.3.output", "layers.*.output"));
        assert!(!is_target(
            "bert.layers.3.attention.output",
            "layers.*.output"
        ));
        assert!(is_target("bert.layers.3.output", "bert.layers.3.output"));
        assert!(!is_target("layers.3.output", "bert.layers.3.output"));
    }
}
