//! Linear probe (M6) as CLIP_benchmark runs it (clip_benchmark/metrics/linear_probe.py):
//! multinomial logistic regression on frozen, L2-normalised image features; the weight decay is
//! searched on a held-out split of the training features over a 97-point log grid 1e-6..1e2
//! (7 coarse points, then halving steps around the peak), the probe is retrained on all training
//! features with the best one and scored on the test features.
//!
//! One departure, for the CPU: CLIP_benchmark fits with AdamW (lr 0.1, 10 epochs, batches of 64);
//! here full-batch L-BFGS minimises the L2-penalised mean cross-entropy exactly, the solver of
//! CLIP's own probe (Radford et al. 2021, A.3) and of scikit-learn, so the fit is deterministic
//! and `weight_decay` λ equals scikit-learn's `C = 1 / (λ n)`.

use std::collections::VecDeque;
use std::fmt;

use super::{ZeroShotMetrics, zero_shot};

/// log10 of the ends of CLIP_benchmark's weight-decay grid, and its number of points.
const WEIGHT_DECAY_LOG10: (f64, f64) = (-6.0, 2.0);
const WEIGHT_DECAY_POINTS: usize = 97;
/// Grid indices between the 7 coarse points; the refinement then halves the span: 8, 4, 2, 1.
const COARSE_STRIDE: usize = 16;
/// Pairs (s, y) L-BFGS keeps.
const LBFGS_MEMORY: usize = 10;
/// Armijo's sufficient-decrease constant and the most step halvings of one line search.
const ARMIJO_C1: f64 = 1e-4;
const MAX_HALVINGS: usize = 40;
/// Rows are summed in this many fixed slices, so results do not depend on the thread count.
const SLICES: usize = 8;

/// How the probe is fitted and its weight decay chosen.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Share of the training features held out to choose the weight decay.
    pub val_fraction: f64,
    /// Seed of the held-out split (the fit itself has no randomness).
    pub seed: u64,
    pub max_iterations: usize,
    /// The fit stops once no gradient component exceeds this.
    pub gradient_tolerance: f64,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            val_fraction: 0.2,
            seed: 0,
            max_iterations: 1000,
            // scikit-learn's LogisticRegression stops at 1e-4 on the same (mean) objective.
            gradient_tolerance: 1e-5,
        }
    }
}

/// Features [n, dim] with one class label in 0..classes per row.
#[derive(Clone, Copy, Debug)]
pub struct LabelledFeatures<'a> {
    pub features: &'a [f32],
    pub labels: &'a [usize],
    pub dim: usize,
    pub classes: usize,
}

/// Why a probe cannot be fitted or scored.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeError {
    /// `features.len()` is not `labels.len() * dim`.
    Shape {
        values: usize,
        rows: usize,
        dim: usize,
    },
    Empty,
    /// The held-out split needs at least one row on each side.
    TooFewToSplit(usize),
    LabelOutOfRange {
        row: usize,
        label: usize,
        classes: usize,
    },
    NonFinite {
        row: usize,
    },
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Shape { values, rows, dim } => write!(
                f,
                "{values} feature values for {rows} labels of dimension {dim}"
            ),
            ProbeError::Empty => f.write_str("no labelled features"),
            ProbeError::TooFewToSplit(n) => write!(
                f,
                "{n} training image(s): choosing the weight decay needs at least 2"
            ),
            ProbeError::LabelOutOfRange {
                row,
                label,
                classes,
            } => write!(f, "image {row}: label {label} of {classes} classes"),
            ProbeError::NonFinite { row } => {
                write!(f, "image {row}: its features are not finite")
            }
        }
    }
}

impl std::error::Error for ProbeError {}

impl LabelledFeatures<'_> {
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    /// Checks the shape, that labels are in range and that every feature is finite.
    pub fn validate(&self) -> Result<(), ProbeError> {
        let rows = self.rows();
        if self.features.len() != rows * self.dim {
            return Err(ProbeError::Shape {
                values: self.features.len(),
                rows,
                dim: self.dim,
            });
        }
        if rows == 0 || self.dim == 0 {
            return Err(ProbeError::Empty);
        }
        for (row, &label) in self.labels.iter().enumerate() {
            if label >= self.classes {
                return Err(ProbeError::LabelOutOfRange {
                    row,
                    label,
                    classes: self.classes,
                });
            }
            if self.row(row).iter().any(|x| !x.is_finite()) {
                return Err(ProbeError::NonFinite { row });
            }
        }
        Ok(())
    }

    /// The rows `indices`, copied.
    fn subset(&self, indices: &[usize]) -> (Vec<f32>, Vec<usize>) {
        let features = indices.iter().flat_map(|&i| self.row(i)).copied().collect();
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        (features, labels)
    }
}

/// A fitted probe: logits = weights · x + bias.
#[derive(Clone, Debug)]
pub struct LinearProbe {
    /// [classes, dim]
    pub weights: Vec<f64>,
    /// [classes]
    pub bias: Vec<f64>,
    pub dim: usize,
    pub weight_decay: f64,
}

/// The probe's test metrics, the weight decay it chose and the search: (weight decay,
/// held-out top-1) in the order tried.
#[derive(Clone, Debug)]
pub struct LinearProbeResult {
    pub metrics: ZeroShotMetrics,
    pub weight_decay: f64,
    pub search: Vec<(f64, f64)>,
}

impl LinearProbe {
    /// Fits weights and bias minimising mean cross-entropy + λ/2 ‖weights‖² (the bias is not
    /// penalised, as in scikit-learn) by L-BFGS from zero.
    pub fn fit(
        data: &LabelledFeatures,
        weight_decay: f64,
        options: &ProbeOptions,
    ) -> Result<LinearProbe, ProbeError> {
        data.validate()?;
        let objective = Objective { data, weight_decay };
        let theta = minimise_lbfgs(&objective, options);
        let (weights, bias) = theta.split_at(data.classes * data.dim);
        Ok(LinearProbe {
            weights: weights.to_vec(),
            bias: bias.to_vec(),
            dim: data.dim,
            weight_decay,
        })
    }

    pub fn classes(&self) -> usize {
        self.bias.len()
    }

    /// Top-1, top-5 and mean per-class recall on `data`, ranked as zero-shot ranks: the probe
    /// is a zero-shot classifier whose class vectors are [weights_c, bias_c] over [x, 1].
    pub fn evaluate(&self, data: &LabelledFeatures) -> Result<ZeroShotMetrics, ProbeError> {
        data.validate()?;
        let width = self.dim + 1;
        let augmented: Vec<f32> = (0..data.rows())
            .flat_map(|i| data.row(i).iter().copied().chain([1.0]))
            .collect();
        let class_vectors: Vec<f32> = (0..self.classes())
            .flat_map(|c| {
                self.weights[c * self.dim..(c + 1) * self.dim]
                    .iter()
                    .chain([&self.bias[c]])
                    .map(|&w| w as f32)
            })
            .collect();
        Ok(zero_shot(&augmented, data.labels, &class_vectors, width))
    }
}

/// CLIP_benchmark's weight-decay grid: 97 points, log-spaced over 1e-6..1e2.
pub fn weight_decay_grid() -> Vec<f64> {
    let (lo, hi) = WEIGHT_DECAY_LOG10;
    (0..WEIGHT_DECAY_POINTS)
        .map(|i| 10f64.powf(lo + (hi - lo) * i as f64 / (WEIGHT_DECAY_POINTS - 1) as f64))
        .collect()
}

/// A seeded split of 0..n into (fit, held out), the held-out share `fraction`, at least one
/// row on each side.
fn split_indices(
    n: usize,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), ProbeError> {
    if n < 2 {
        return Err(ProbeError::TooFewToSplit(n));
    }
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = crate::model::init::SplitMix(seed);
    for i in (1..n).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let held_out = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    let fit = order.split_off(held_out);
    Ok((fit, order))
}

/// The weight decay with the best held-out top-1, searched as CLIP_benchmark's `find_peak`:
/// the 7 coarse grid points, then the peak and its neighbours at spans 8, 4, 2, 1 (ties keep
/// the first tried). Returns it with (weight decay, held-out top-1) in the order tried.
pub fn choose_weight_decay(
    data: &LabelledFeatures,
    options: &ProbeOptions,
) -> Result<(f64, Vec<(f64, f64)>), ProbeError> {
    data.validate()?;
    let (fit_rows, held_rows) = split_indices(data.rows(), options.val_fraction, options.seed)?;
    let (fit_features, fit_labels) = data.subset(&fit_rows);
    let (held_features, held_labels) = data.subset(&held_rows);
    let fit = LabelledFeatures {
        features: &fit_features,
        labels: &fit_labels,
        ..*data
    };
    let held = LabelledFeatures {
        features: &held_features,
        labels: &held_labels,
        ..*data
    };
    let grid = weight_decay_grid();
    // Fits are deterministic, so a grid point is fitted once however often the search asks.
    let mut accuracy: Vec<Option<f64>> = vec![None; grid.len()];
    let mut search = Vec::new();
    let mut peak_among = |candidates: &[usize]| -> Result<usize, ProbeError> {
        let mut best: Option<(usize, f64)> = None;
        for &i in candidates {
            let acc1 = match accuracy[i] {
                Some(acc1) => acc1,
                None => {
                    let acc1 = LinearProbe::fit(&fit, grid[i], options)?
                        .evaluate(&held)?
                        .acc1;
                    accuracy[i] = Some(acc1);
                    search.push((grid[i], acc1));
                    acc1
                }
            };
            if best.is_none_or(|(_, b)| acc1 > b) {
                best = Some((i, acc1));
            }
        }
        Ok(best.expect("candidates are not empty").0)
    };
    let coarse: Vec<usize> = (0..grid.len()).step_by(COARSE_STRIDE).collect();
    let mut peak = peak_among(&coarse)?;
    let mut span = COARSE_STRIDE / 2;
    while span > 0 {
        let (left, right) = (peak.saturating_sub(span), (peak + span).min(grid.len() - 1));
        peak = peak_among(&[left, peak, right])?;
        span /= 2;
    }
    Ok((grid[peak], search))
}

/// The whole probe: weight decay chosen on a held-out split of `train`, refitted on all of
/// `train`, scored on `test` (which must share `train`'s classes and dimension).
pub fn linear_probe(
    train: &LabelledFeatures,
    test: &LabelledFeatures,
    options: &ProbeOptions,
) -> Result<LinearProbeResult, ProbeError> {
    let (weight_decay, search) = choose_weight_decay(train, options)?;
    let probe = LinearProbe::fit(train, weight_decay, options)?;
    Ok(LinearProbeResult {
        metrics: probe.evaluate(test)?,
        weight_decay,
        search,
    })
}

/// Mean cross-entropy of softmax(W x + b) plus λ/2 ‖W‖², over θ = [W (classes × dim), b].
struct Objective<'a, 'b> {
    data: &'a LabelledFeatures<'b>,
    weight_decay: f64,
}

impl Objective<'_, '_> {
    fn len(&self) -> usize {
        self.data.classes * (self.data.dim + 1)
    }

    /// The value at θ, with its gradient written to `grad`.
    fn value_and_gradient(&self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let (classes, dim) = (self.data.classes, self.data.dim);
        let rows = self.data.rows();
        // f32 dot products over the f32 features; sums of rows are taken in f64.
        let weights: Vec<f32> = theta[..classes * dim].iter().map(|&w| w as f32).collect();
        let bias = &theta[classes * dim..];
        let slice_rows = rows.div_ceil(SLICES);
        let slices: Vec<std::ops::Range<usize>> = (0..rows)
            .step_by(slice_rows)
            .map(|start| start..(start + slice_rows).min(rows))
            .collect();
        let partial = |range: std::ops::Range<usize>| self.slice_sums(range, &weights, bias);
        let partials: Vec<(f64, Vec<f32>)> = match worker_threads(slices.len()) {
            1 => slices.into_iter().map(partial).collect(),
            threads => std::thread::scope(|scope| {
                let chunks: Vec<Vec<std::ops::Range<usize>>> = slices
                    .chunks(slices.len().div_ceil(threads))
                    .map(<[_]>::to_vec)
                    .collect();
                let handles: Vec<_> = chunks
                    .into_iter()
                    .map(|chunk| {
                        scope.spawn(move || chunk.into_iter().map(partial).collect::<Vec<_>>())
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("a probe worker panicked"))
                    .collect()
            }),
        };
        grad.fill(0.0);
        let mut loss = 0.0;
        for (slice_loss, slice_grad) in &partials {
            loss += slice_loss;
            for (g, s) in grad.iter_mut().zip(slice_grad) {
                *g += *s as f64;
            }
        }
        let n = rows as f64;
        grad.iter_mut().for_each(|g| *g /= n);
        let mut penalty = 0.0;
        for (g, w) in grad[..classes * dim]
            .iter_mut()
            .zip(&theta[..classes * dim])
        {
            *g += self.weight_decay * w;
            penalty += w * w;
        }
        loss / n + 0.5 * self.weight_decay * penalty
    }

    /// Summed cross-entropy and its gradient [W, b] over the rows `range`.
    fn slice_sums(
        &self,
        range: std::ops::Range<usize>,
        weights: &[f32],
        bias: &[f64],
    ) -> (f64, Vec<f32>) {
        let (classes, dim) = (self.data.classes, self.data.dim);
        let mut grad = vec![0f32; classes * (dim + 1)];
        let mut logits = vec![0f64; classes];
        let mut loss = 0.0;
        for i in range {
            let x = self.data.row(i);
            for (c, logit) in logits.iter_mut().enumerate() {
                *logit = bias[c] + dot(&weights[c * dim..(c + 1) * dim], x) as f64;
            }
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = logits.iter().map(|z| (z - max).exp()).sum();
            let label = self.data.labels[i];
            loss += max + sum.ln() - logits[label];
            for (c, &logit) in logits.iter().enumerate() {
                let residual = ((logit - max).exp() / sum - f64::from(c == label)) as f32;
                axpy(residual, x, &mut grad[c * dim..(c + 1) * dim]);
                grad[classes * dim + c] += residual;
            }
        }
        (loss, grad)
    }
}

fn worker_threads(slices: usize) -> usize {
    // Where threads are unavailable (wasm32) this is an error, and the sums run inline.
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(slices)
        .max(1)
}

/// Eight partial sums, so the loop vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// y += a x.
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

fn dot64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// L-BFGS (Nocedal & Wright 2006, alg. 7.4 and 7.5) with a backtracking Armijo line search,
/// from θ = 0. Stops when no gradient component exceeds the tolerance, after
/// `max_iterations`, or when no step decreases the objective (converged to f32 precision).
fn minimise_lbfgs(objective: &Objective, options: &ProbeOptions) -> Vec<f64> {
    let len = objective.len();
    let mut theta = vec![0f64; len];
    let mut grad = vec![0f64; len];
    let mut value = objective.value_and_gradient(&theta, &mut grad);
    let mut history: VecDeque<CurvaturePair> = VecDeque::with_capacity(LBFGS_MEMORY);
    let (mut trial, mut trial_grad) = (vec![0f64; len], vec![0f64; len]);
    for _ in 0..options.max_iterations {
        if grad.iter().all(|g| g.abs() <= options.gradient_tolerance) {
            break;
        }
        let direction = lbfgs_direction(&grad, &history);
        let slope = dot64(&direction, &grad);
        // The first step has no curvature yet: scale it to a unit move.
        let mut step = if history.is_empty() {
            1.0 / dot64(&grad, &grad).sqrt().max(1.0)
        } else {
            1.0
        };
        let mut accepted = None;
        for _ in 0..MAX_HALVINGS {
            for ((t, x), d) in trial.iter_mut().zip(&theta).zip(&direction) {
                *t = x + step * d;
            }
            let trial_value = objective.value_and_gradient(&trial, &mut trial_grad);
            if trial_value <= value + ARMIJO_C1 * step * slope {
                accepted = Some(trial_value);
                break;
            }
            step *= 0.5;
        }
        let Some(trial_value) = accepted else { break };
        let s: Vec<f64> = trial.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = trial_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
        let curvature = dot64(&s, &y);
        // Only positive curvature keeps the inverse-Hessian estimate positive definite.
        if curvature > 1e-12 * dot64(&y, &y).max(f64::MIN_POSITIVE) {
            if history.len() == LBFGS_MEMORY {
                history.pop_front();
            }
            history.push_back(CurvaturePair {
                s,
                y,
                rho: 1.0 / curvature,
            });
        }
        std::mem::swap(&mut theta, &mut trial);
        std::mem::swap(&mut grad, &mut trial_grad);
        value = trial_value;
    }
    theta
}

/// One step's move s = Δθ and gradient change y = Δgrad, with rho = 1 / sᵀy.
struct CurvaturePair {
    s: Vec<f64>,
    y: Vec<f64>,
    rho: f64,
}

/// −H·grad by the two-loop recursion over the pairs, oldest first.
fn lbfgs_direction(grad: &[f64], history: &VecDeque<CurvaturePair>) -> Vec<f64> {
    let mut q: Vec<f64> = grad.iter().map(|g| -g).collect();
    let mut alphas = Vec::with_capacity(history.len());
    for CurvaturePair { s, y, rho } in history.iter().rev() {
        let alpha = rho * dot64(s, &q);
        q.iter_mut().zip(y).for_each(|(q, y)| *q -= alpha * y);
        alphas.push(alpha);
    }
    if let Some(CurvaturePair { s, y, .. }) = history.back() {
        let gamma = dot64(s, y) / dot64(y, y);
        q.iter_mut().for_each(|q| *q *= gamma);
    }
    for (CurvaturePair { s, y, rho }, alpha) in history.iter().zip(alphas.iter().rev()) {
        let beta = rho * dot64(y, &q);
        q.iter_mut()
            .zip(s)
            .for_each(|(q, s)| *q += (alpha - beta) * s);
    }
    q
}
