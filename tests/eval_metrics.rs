//! The evaluation metrics (M6) against brute-force counts: `rank_of`, `zero_shot` and
//! `retrieval` on seeded random features with deliberate ties and NaN, plus hand-worked cases.
//! The tie rule is pessimistic: a candidate scoring the same as the target, or incomparable with
//! it (NaN on either side), ranks ahead of it. So a broken (NaN) model scores 0, never 100%.

mod common;

use clusterclip::eval::{check_features, normalize_rows, rank_of, retrieval, zero_shot};
use common::Rng;

/// The target's 0-based position after sorting every candidate by score, highest first, with
/// the target placed after every candidate it does not beat: a NaN candidate sorts first, a NaN
/// target last (a sort, where `rank_of` counts).
fn rank_by_sorting(scores: &[f64], target: usize) -> usize {
    let key = |i: usize| match scores[i] {
        s if !s.is_nan() => s,
        _ if i == target => f64::NEG_INFINITY,
        _ => f64::INFINITY,
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        key(b)
            .total_cmp(&key(a))
            .then((a == target).cmp(&(b == target)))
    });
    order.iter().position(|&i| i == target).unwrap()
}

/// Scores on 5 levels (so ties are common) and 1 in 10 NaN.
fn tied_scores(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| match rng.below(10) {
            0 => f64::NAN,
            _ => rng.below(5) as f64 / 4.0,
        })
        .collect()
}

#[test]
fn rank_of_counts_ties_and_nan_against_the_target() {
    let scores = [0.9, 0.5, 0.5, 0.1];
    let ranks: Vec<usize> = (0..4).map(|t| rank_of(&scores, t)).collect();
    assert_eq!(ranks, [0, 2, 2, 3], "a tie puts both tied entries behind");
    // A NaN target ranks last; a NaN rival is not beaten.
    assert_eq!(rank_of(&[f64::NAN, 0.1, 0.2], 0), 2);
    assert_eq!(rank_of(&[0.5, f64::NAN, 0.1], 0), 1);
    assert_eq!(rank_of(&[f64::NAN; 5], 3), 4);
}

#[test]
fn rank_of_matches_a_sort_on_random_ties_and_nan() {
    let mut rng = Rng::new(10);
    let mut checked = 0;
    for _ in 0..200 {
        let n = 1 + rng.below(12) as usize;
        let scores = tied_scores(&mut rng, n);
        for target in 0..n {
            assert_eq!(
                rank_of(&scores, target),
                rank_by_sorting(&scores, target),
                "scores {scores:?}, target {target}"
            );
            checked += 1;
        }
    }
    assert!(checked > 1000);
}

/// Seeded unit vectors [rows, dim], with every third component rounded to a coarse grid so some
/// dot products tie exactly.
fn unit_rows(rng: &mut Rng, rows: usize, dim: usize) -> Vec<f32> {
    let mut v = rng.vec(rows * dim);
    v.iter_mut().step_by(3).for_each(|x| *x = x.round());
    normalize_rows(&mut v, dim);
    v
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

#[test]
fn zero_shot_matches_brute_force_counts() {
    let (n, classes, dim) = (60, 9, 6);
    let mut rng = Rng::new(11);
    let mut images = unit_rows(&mut rng, n, dim);
    let class_rows = unit_rows(&mut rng, classes, dim);
    // Image 0 copies class 0's embedding (its label): a top-1 hit.
    images[..dim].copy_from_slice(&class_rows[..dim]);
    // Image 5 is NaN: never a hit, not even in the top 5.
    images[5 * dim] = f32::NAN;
    let labels: Vec<usize> = (0..n)
        .map(|i| {
            if i == 0 {
                0
            } else {
                rng.below(classes as u32) as usize
            }
        })
        .collect();
    let (mut top1, mut top5) = (0, 0);
    let mut per_class = vec![(0usize, 0usize); classes];
    for (i, &label) in labels.iter().enumerate() {
        let scores: Vec<f64> = (0..classes)
            .map(|c| dot(&images[i * dim..][..dim], &class_rows[c * dim..][..dim]))
            .collect();
        let rank = rank_by_sorting(&scores, label);
        top1 += usize::from(rank == 0);
        top5 += usize::from(rank < 5);
        per_class[label].0 += usize::from(rank == 0);
        per_class[label].1 += 1;
    }
    let seen: Vec<f64> = per_class
        .iter()
        .filter(|c| c.1 > 0)
        .map(|&(hit, total)| hit as f64 / total as f64)
        .collect();
    let m = zero_shot(&images, &labels, &class_rows, dim);
    assert_eq!(m.acc1, top1 as f64 / n as f64);
    assert_eq!(m.acc5, top5 as f64 / n as f64);
    let recall = seen.iter().sum::<f64>() / seen.len() as f64;
    assert!((m.mean_per_class_recall - recall).abs() < 1e-12);
    // Not a degenerate draw: some hits, some misses.
    assert!(
        top1 > 0 && top1 < n && top5 > top1,
        "top1 {top1} top5 {top5}"
    );
}

#[test]
fn zero_shot_scores_zero_for_nan_features_and_ties() {
    let dim = 6;
    // Classes are the unit vectors e0..e5; image 0 equals e0 (a hit), image 1 lies between e0
    // and e1 (a tie: second), image 2 is NaN (last of 6, outside the top 5).
    let mut classes = vec![0.0f32; dim * dim];
    classes.iter_mut().step_by(dim + 1).for_each(|x| *x = 1.0);
    let half = std::f32::consts::FRAC_1_SQRT_2;
    let mut images = vec![0.0f32; 3 * dim];
    images[0] = 1.0;
    images[dim] = half;
    images[dim + 1] = half;
    images[2 * dim..].fill(f32::NAN);
    let m = zero_shot(&images, &[0, 0, 1], &classes, dim);
    assert_eq!(m.acc1, 1.0 / 3.0);
    assert_eq!(m.acc5, 2.0 / 3.0);
    // Class 0: 1 of 2; class 1: 0 of 1.
    assert_eq!(m.mean_per_class_recall, 0.25);
}

/// 1-based rank of the best-placed match of each query, by sorting.
fn best_ranks(
    queries: usize,
    candidates: usize,
    score: impl Fn(usize, usize) -> f64,
    matches: impl Fn(usize, usize) -> bool,
) -> Vec<f64> {
    (0..queries)
        .filter_map(|q| {
            let scores: Vec<f64> = (0..candidates).map(|c| score(q, c)).collect();
            (0..candidates)
                .filter(|&c| matches(q, c))
                .map(|c| rank_by_sorting(&scores, c) as f64 + 1.0)
                .min_by(f64::total_cmp)
        })
        .collect()
}

fn recall_at(ranks: &[f64], k: usize) -> f64 {
    ranks.iter().filter(|&&r| r <= k as f64).count() as f64 / ranks.len() as f64
}

#[test]
fn retrieval_matches_brute_force_counts() {
    // 14 images, 2 captions each (text j belongs to image j / 2), so image->text takes the best
    // of two matches; image 3 and caption 8 are NaN.
    let (n, dim) = (14, 5);
    let mut rng = Rng::new(12);
    let mut images = unit_rows(&mut rng, n, dim);
    let mut texts = unit_rows(&mut rng, 2 * n, dim);
    // Caption 2 copies image 1 (its own image): it beats every finite rival, but not the NaN
    // image 3, which the pessimistic rule puts ahead.
    texts[2 * dim..3 * dim].copy_from_slice(&images[dim..2 * dim]);
    images[3 * dim + 1] = f32::NAN;
    texts[8 * dim] = f32::NAN;
    let text_image: Vec<usize> = (0..2 * n).map(|j| j / 2).collect();
    let sim = |i: usize, j: usize| dot(&images[i * dim..][..dim], &texts[j * dim..][..dim]);
    let text_ranks = best_ranks(n, 2 * n, sim, |i, j| text_image[j] == i);
    let image_ranks = best_ranks(2 * n, n, |j, i| sim(i, j), |j, i| text_image[j] == i);
    let m = retrieval(&images, &texts, &text_image, dim);
    for (slot, k) in [1, 5, 10].into_iter().enumerate() {
        assert_eq!(m.text_retrieval_recall[slot], recall_at(&text_ranks, k));
        assert_eq!(m.image_retrieval_recall[slot], recall_at(&image_ranks, k));
    }
    let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
    assert!((m.text_retrieval_mean_rank - mean(&text_ranks)).abs() < 1e-12);
    assert!((m.image_retrieval_mean_rank - mean(&image_ranks)).abs() < 1e-12);
    // The NaN image ranks its captions last; every image ranks NaN caption 8 last.
    assert_eq!(text_ranks[3], 2.0 * n as f64);
    assert_eq!(image_ranks[8], n as f64);
    assert_eq!(image_ranks[2], 2.0);
    // One NaN row on the other side takes every top-1 place, both ways.
    assert_eq!(
        (m.text_retrieval_recall[0], m.image_retrieval_recall[0]),
        (0.0, 0.0)
    );
    assert!(m.text_retrieval_recall[2] > 0.0 && m.text_retrieval_recall[2] < 1.0);
}

#[test]
fn retrieval_of_a_nan_model_scores_zero() {
    // Before the pessimistic rule every NaN comparison lost to the target: R@1 was 100%.
    let (n, dim) = (12, 4);
    let nan = vec![f32::NAN; n * dim];
    let pairs: Vec<usize> = (0..n).collect();
    let m = retrieval(&nan, &nan, &pairs, dim);
    assert_eq!(m.text_retrieval_recall, [0.0, 0.0, 0.0]);
    assert_eq!(m.image_retrieval_recall, [0.0, 0.0, 0.0]);
    assert_eq!(m.text_retrieval_median_rank, n as f64);
    // Identical finite features tie everywhere: every rank is the last too.
    let same = vec![0.5f32; n * dim];
    let m = retrieval(&same, &same, &pairs, dim);
    assert_eq!(m.image_retrieval_recall[0], 0.0);
    assert_eq!(m.image_retrieval_mean_rank, n as f64);
}

#[test]
fn check_features_names_the_broken_rows() {
    let dim = 3;
    let mut image = vec![0.5f32; 4 * dim];
    let mut text = vec![0.5f32; 3 * dim];
    assert_eq!(check_features(&image, &text, "caption text", dim), Ok(()));
    image[2 * dim + 1] = f32::INFINITY;
    let e = check_features(&image, &text, "caption text", dim).unwrap_err();
    assert!(
        e.starts_with("1 of 4 image features hold NaN or Inf"),
        "{e}"
    );
    text[0] = f32::NAN;
    text[2 * dim + 2] = f32::NEG_INFINITY;
    let e = check_features(&image, &text, "caption text", dim).unwrap_err();
    assert!(
        e.starts_with("1 of 4 image features and 2 of 3 caption text features hold NaN or Inf"),
        "{e}"
    );
    assert!(!e.contains('\n'));
}
