//! The contrastive loss over ranks as OpenCLIP's `ClipLoss` computes it (issue 14), in f64 on
//! the CPU: the reference the data-parallel trainer is held to, and the derivation of what
//! reaches each rank's own features, which decides whether R ranks of batch b train as one
//! process of batch R·b.
//!
//! OpenCLIP (open_clip/loss.py, `gather_features` and `ClipLoss.get_logits`), rank r of R, each
//! with b samples, N = R·b:
//! - `gather_with_grad`: features are all-gathered with autograd (`torch.distributed.nn`), whose
//!   backward sums over ranks the gradient every rank's loss sends to a slice.
//! - otherwise they are gathered as constants; without `local_loss` the rank's own slice is put
//!   back live, so its features get the gradient of its own loss as rows and as columns; with
//!   `local_loss` the gathered columns stay constant and only the rank's rows carry gradient.
//! - `local_loss`: the rank's b rows against all N columns, labels r·b + i; otherwise all N rows
//!   against N columns.
//! - DDP then averages parameter gradients over ranks.
//!
//! Derived (and checked in tests/gather_semantics.rs) against one process on the N samples, with
//! L its loss: rank q's features receive
//! - default (neither flag): ∂L/∂f_q, so parameter gradients are 1/R of one process's, except
//!   the logit scale's, which every rank computes whole (AdamW's per-parameter normalisation
//!   makes the two runs nearly, not exactly, alike: ε does not scale);
//! - `gather_with_grad`, with or without `local_loss`: R·∂L/∂f_q, so after the average every
//!   gradient equals one process's exactly;
//! - `local_loss` alone: only the row terms of ∂L_q/∂f_q, the column terms lost: not one
//!   process's gradient at any scale.

/// OpenCLIP's `--local-loss` and `--gather-with-grad`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatherFlags {
    pub local_loss: bool,
    pub gather_with_grad: bool,
}

/// What one rank computes and receives.
#[derive(Clone, Debug)]
pub struct RankLoss {
    /// The loss this rank reports.
    pub loss: f64,
    /// Gradient reaching this rank's own image and text features [b, dim] once every rank's
    /// backward has run.
    pub d_image: Vec<f64>,
    pub d_text: Vec<f64>,
    /// This rank's gradient of the logit scale s (logits = s · features products).
    pub d_scale: f64,
}

/// Mean cross-entropy of rows `rows` of `queries` [N, dim] against all `keys` [N, dim] with
/// logits s·q·k and label = the row's own index; returns the loss and its gradients for the
/// queries, the keys and s.
fn cross_entropy(
    queries: &[f64],
    keys: &[f64],
    rows: std::ops::Range<usize>,
    dim: usize,
    scale: f64,
) -> (f64, Vec<f64>, Vec<f64>, f64) {
    let n = keys.len() / dim;
    let count = rows.len() as f64;
    let (mut loss, mut d_scale) = (0.0, 0.0);
    let mut d_queries = vec![0.0; queries.len()];
    let mut d_keys = vec![0.0; keys.len()];
    for i in rows {
        let q = &queries[i * dim..(i + 1) * dim];
        let dots: Vec<f64> = (0..n)
            .map(|j| {
                q.iter()
                    .zip(&keys[j * dim..(j + 1) * dim])
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        let max = dots
            .iter()
            .fold(f64::NEG_INFINITY, |m, &d| m.max(scale * d));
        let exp: Vec<f64> = dots.iter().map(|&d| (scale * d - max).exp()).collect();
        let total: f64 = exp.iter().sum();
        loss += (max + total.ln() - scale * dots[i]) / count;
        for j in 0..n {
            let d_logit = (exp[j] / total - f64::from(u8::from(j == i))) / count;
            d_scale += d_logit * dots[j];
            for k in 0..dim {
                d_queries[i * dim + k] += d_logit * scale * keys[j * dim + k];
                d_keys[j * dim + k] += d_logit * scale * q[k];
            }
        }
    }
    (loss, d_queries, d_keys, d_scale)
}

/// Each of `ranks` ranks' loss and the gradients reaching its features, for global features
/// `image` and `text` [ranks · b, dim] (rank r holds rows r·b..(r+1)·b) and logit scale `scale`.
pub fn rank_losses(
    image: &[f64],
    text: &[f64],
    dim: usize,
    ranks: usize,
    scale: f64,
    flags: GatherFlags,
) -> Vec<RankLoss> {
    let n = image.len() / dim;
    let b = n / ranks;
    // Per rank: loss, its gradients for all N image / text rows (as rows, as columns), d_scale.
    struct Full {
        loss: f64,
        image_rows: Vec<f64>,
        image_columns: Vec<f64>,
        text_rows: Vec<f64>,
        text_columns: Vec<f64>,
        d_scale: f64,
    }
    let full: Vec<Full> = (0..ranks)
        .map(|r| {
            let rows = if flags.local_loss {
                r * b..(r + 1) * b
            } else {
                0..n
            };
            let (l_image, image_rows, text_columns, s_image) =
                cross_entropy(image, text, rows.clone(), dim, scale);
            let (l_text, text_rows, image_columns, s_text) =
                cross_entropy(text, image, rows, dim, scale);
            let half = |v: Vec<f64>| v.into_iter().map(|x| x / 2.0).collect::<Vec<f64>>();
            Full {
                loss: (l_image + l_text) / 2.0,
                image_rows: half(image_rows),
                image_columns: half(image_columns),
                text_rows: half(text_rows),
                text_columns: half(text_columns),
                d_scale: (s_image + s_text) / 2.0,
            }
        })
        .collect();
    let slice = |v: &[f64], q: usize| v[q * b * dim..(q + 1) * b * dim].to_vec();
    let add = |a: Vec<f64>, b: Vec<f64>| a.iter().zip(&b).map(|(x, y)| x + y).collect();
    (0..ranks)
        .map(|q| {
            let reach = |rows: fn(&Full) -> &Vec<f64>, columns: fn(&Full) -> &Vec<f64>| {
                let both = |f: &Full| add(slice(rows(f), q), slice(columns(f), q));
                if flags.gather_with_grad {
                    full.iter().map(both).fold(vec![0.0; b * dim], add)
                } else if flags.local_loss {
                    slice(rows(&full[q]), q)
                } else {
                    both(&full[q])
                }
            };
            RankLoss {
                loss: full[q].loss,
                d_image: reach(|f| &f.image_rows, |f| &f.image_columns),
                d_text: reach(|f| &f.text_rows, |f| &f.text_columns),
                d_scale: full[q].d_scale,
            }
        })
        .collect()
}
