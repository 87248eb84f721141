//! Post-processing for classifiers: scores into probabilities and the best classes.

/// Probabilities from logits: `exp(x - max) / sum`, stable for large logits. Empty in, empty out.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The index and value of the largest score (the first of equals); `None` when empty.
/// NaN ranks below every number.
pub fn argmax(scores: &[f32]) -> Option<(usize, f32)> {
    top_k(scores, 1).into_iter().next()
}

/// The `k` largest scores with their indices, largest first (ties keep index order).
/// NaN ranks below every number.
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let rank = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let mut indexed: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    indexed.sort_by(|a, b| rank(b.1).total_cmp(&rank(a.1)).then(a.0.cmp(&b.0)));
    indexed.truncate(k);
    indexed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] < 1e-6, "{p:?}");
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[2] - 0.665_240_9).abs() < 1e-6, "{p:?}");
        assert!(softmax(&[]).is_empty());
    }

    #[test]
    fn best_classes_come_first_and_nan_last() {
        assert_eq!(argmax(&[0.1, f32::NAN, 0.7, 0.7]), Some((2, 0.7)));
        assert_eq!(argmax(&[]), None);
        let top = top_k(&[0.1, 0.5, f32::NAN, 0.3], 3);
        assert_eq!(top, [(1, 0.5), (3, 0.3), (0, 0.1)]);
        assert_eq!(top_k(&[0.1], 5).len(), 1);
    }
}
