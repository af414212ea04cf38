//! The contrastive loss (M1): GPU vs the CPU reference, both against a direct f64 formula,
//! the closed form for orthonormal identical features at logit_scale = ln(1/0.07), finite
//! differences of the CPU backward, and shape errors; the local loss of OpenCLIP's
//! `--local-loss` (a rank's own lines) on both backends and against the full loss.

mod common;

use clusterclip::graph::Graph;
use common::*;

/// `rows` random unit vectors of length `dim`.
fn unit_rows(rng: &mut Rng, rows: usize, dim: usize) -> Vec<f32> {
    let mut v = rng.vec(rows * dim);
    for row in v.chunks_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// `rows` ≤ `dim` orthonormal vectors (Gram-Schmidt in f64).
fn orthonormal_rows(rng: &mut Rng, rows: usize, dim: usize) -> Vec<f32> {
    let mut basis: Vec<Vec<f64>> = Vec::new();
    while basis.len() < rows {
        let mut v: Vec<f64> = rng.vec(dim).iter().map(|&x| x as f64).collect();
        for u in &basis {
            let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        basis.push(v.iter().map(|x| x / norm).collect());
    }
    basis.concat().iter().map(|&x| x as f32).collect()
}

/// (CE(logits, arange) + CE(logitsᵀ, arange)) / 2 straight from the definition, in f64.
fn direct_loss(img: &[f32], txt: &[f32], logit_scale: f64, b: usize, d: usize) -> f64 {
    let t = logit_scale.exp();
    let logit = |i: usize, j: usize| -> f64 {
        t * (0..d)
            .map(|k| img[i * d + k] as f64 * txt[j * d + k] as f64)
            .sum::<f64>()
    };
    let mut total = 0.0;
    for i in 0..b {
        let row: f64 = (0..b).map(|j| (logit(i, j) - logit(i, i)).exp()).sum();
        let col: f64 = (0..b).map(|j| (logit(j, i) - logit(i, i)).exp()).sum();
        total += row.ln() + col.ln();
    }
    total / (2 * b) as f64
}

fn loss_on(g: &mut Graph, img: &[f32], txt: &[f32], scale: f32, b: usize, d: usize) -> (f32, f32) {
    let i = g.variable(img, &[b, d]).unwrap();
    let t = g.variable(txt, &[b, d]).unwrap();
    let s = g.variable(&[scale], &[1]).unwrap();
    let loss = g.contrastive_loss(i, t, s).unwrap();
    g.backward(loss).unwrap();
    (g.to_vec(loss)[0], g.grad_vec(s).unwrap()[0])
}

#[test]
fn gpu_matches_cpu_on_awkward_batches() {
    let mut rng = Rng::new(20);
    // B = 1 (loss 0), below, at and above the 256-lane workgroup.
    for (b, d) in [(1, 8), (5, 16), (37, 24), (256, 32), (300, 20)] {
        let inputs = vec![
            (unit_rows(&mut rng, b, d), vec![b, d]),
            (unit_rows(&mut rng, b, d), vec![b, d]),
            (vec![(1.0f32 / 0.07).ln() + rng.signed()], vec![1]),
        ];
        // The loss is a mean of log-sum-exps of f32 dot products (≤ 32 terms, exact to ~1e-7)
        // times t ≤ 39: GPU and CPU agree to 1e-5 relative; gradients are sums of B products.
        compare_backends(
            &format!("contrastive B={b} D={d}"),
            &inputs,
            |g, v| g.contrastive_loss(v[0], v[1], v[2]).unwrap(),
            1e-5,
        );
    }
}

#[test]
fn loss_and_logit_scale_gradient_match_the_direct_formula() {
    let mut rng = Rng::new(21);
    let (b, d) = (24, 40);
    let img = unit_rows(&mut rng, b, d);
    let txt = unit_rows(&mut rng, b, d);
    // Half-aligned pairs, so the loss is neither at chance nor at zero.
    let txt: Vec<f32> = txt.iter().zip(&img).map(|(t, i)| t + 2.0 * i).collect();
    let txt = {
        let mut t = txt;
        for row in t.chunks_mut(d) {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= n);
        }
        t
    };
    let scale = 2.3f32;
    let want = direct_loss(&img, &txt, scale as f64, b, d);
    // d loss / d logit_scale by central differences of the f64 formula (smooth, h = 1e-4).
    let h = 1e-4;
    let want_ds = (direct_loss(&img, &txt, scale as f64 + h, b, d)
        - direct_loss(&img, &txt, scale as f64 - h, b, d))
        / (2.0 * h);
    for mut g in [cpu_graph(), gpu_graph()] {
        let (loss, ds) = loss_on(&mut g, &img, &txt, scale, b, d);
        let name = g.backend.name();
        // f32 storage of a value ~1: 1e-5 relative.
        assert!(
            ((loss as f64 - want) / want).abs() < 1e-5,
            "{name}: loss {loss} vs {want}"
        );
        // The difference quotient is good to ~1e-8; the op's gradient to f32 rounding.
        assert!(
            ((ds as f64 - want_ds) / want_ds).abs() < 1e-4,
            "{name}: dlogit_scale {ds} vs {want_ds}"
        );
    }
}

#[test]
fn identical_orthonormal_features_give_the_closed_form() {
    let mut rng = Rng::new(22);
    let (b, d) = (8, 64);
    let features = orthonormal_rows(&mut rng, b, d);
    let scale = (1.0f64 / 0.07).ln();
    let t = scale.exp();
    // logits = t·I: every row and column is log(1 + (B − 1) e^{−t}) ≈ 4.4e-6.
    let rest = (b - 1) as f64 * (-t).exp();
    let want = rest.ln_1p();
    let want_ds = -t * rest / (1.0 + rest);
    for mut g in [cpu_graph(), gpu_graph()] {
        let (loss, ds) = loss_on(&mut g, &features, &features, scale as f32, b, d);
        let name = g.backend.name();
        // The dot products carry ~1e-7 rounding, shifting the exponents by t·1e-7 ≈ 1.4e-6.
        assert!(
            ((loss as f64 - want) / want).abs() < 1e-5,
            "{name}: loss {loss} vs {want}"
        );
        assert!(
            ((ds as f64 - want_ds) / want_ds).abs() < 1e-5,
            "{name}: dlogit_scale {ds} vs {want_ds}"
        );
    }
}

/// Features of 4 samples in 6 dimensions and a logit scale, for finite differences.
fn gradcheck_inputs(rng: &mut Rng) -> Vec<(Vec<f32>, Vec<usize>)> {
    let (b, d) = (4, 6);
    vec![
        (unit_rows(rng, b, d), vec![b, d]),
        (unit_rows(rng, b, d), vec![b, d]),
        (vec![0.8], vec![1]),
    ]
}

#[test]
fn cpu_gradcheck() {
    let inputs = gradcheck_inputs(&mut Rng::new(23));
    gradcheck(
        "contrastive_loss",
        &inputs,
        |g, v| g.contrastive_loss(v[0], v[1], v[2]).unwrap(),
        1e-2,
    );
}

#[test]
fn local_loss_gpu_matches_cpu_and_cpu_gradcheck() {
    let mut rng = Rng::new(25);
    // Own lines at the start, middle and end, one line, and across a 256-lane workgroup.
    for (b, d, own) in [
        (8, 6, 0..4),
        (37, 24, 9..21),
        (37, 24, 36..37),
        (300, 20, 150..300),
    ] {
        let inputs = vec![
            (unit_rows(&mut rng, b, d), vec![b, d]),
            (unit_rows(&mut rng, b, d), vec![b, d]),
            (vec![(1.0f32 / 0.07).ln() + rng.signed()], vec![1]),
        ];
        let lines = own.clone();
        compare_backends(
            &format!("local contrastive B={b} own {own:?}"),
            &inputs,
            move |g, v| {
                g.local_contrastive_loss(v[0], v[1], v[2], lines.clone())
                    .unwrap()
            },
            1e-5,
        );
    }
    let inputs = gradcheck_inputs(&mut rng);
    gradcheck(
        "local contrastive_loss",
        &inputs,
        |g, v| g.local_contrastive_loss(v[0], v[1], v[2], 1..3).unwrap(),
        1e-2,
    );
}

/// Loss and gradients (image, text, logit_scale) of the loss over `own` lines.
fn local_loss_and_grads(
    g: &mut Graph,
    img: &[f32],
    txt: &[f32],
    scale: f32,
    (b, d): (usize, usize),
    own: std::ops::Range<usize>,
) -> (f32, Vec<f32>, Vec<f32>, f32) {
    let i = g.variable(img, &[b, d]).unwrap();
    let t = g.variable(txt, &[b, d]).unwrap();
    let s = g.variable(&[scale], &[1]).unwrap();
    let loss = g.local_contrastive_loss(i, t, s, own).unwrap();
    g.backward(loss).unwrap();
    let grad = |x| g.grad_vec(x).unwrap();
    (g.to_vec(loss)[0], grad(i), grad(t), grad(s)[0])
}

#[test]
fn local_losses_of_all_ranks_average_to_the_full_loss() {
    // R ranks of n lines: the mean of their losses is the full loss, and the sum of their
    // gradients is R times the full loss's (what --gather-with-grad --local-loss relies on).
    let mut rng = Rng::new(26);
    let (ranks, n, d) = (3, 5, 16);
    let b = ranks * n;
    let (img, txt) = (unit_rows(&mut rng, b, d), unit_rows(&mut rng, b, d));
    let scale = 2.1;
    for mut g in [cpu_graph(), gpu_graph()] {
        let name = g.backend.name();
        let (full, full_i, full_t, full_s) =
            local_loss_and_grads(&mut g, &img, &txt, scale, (b, d), 0..b);
        let mut mean = 0.0;
        let (mut sum_i, mut sum_t, mut sum_s) = (vec![0.0; b * d], vec![0.0; b * d], 0.0);
        for r in 0..ranks {
            let mut g = Graph::new(g.backend.clone());
            let (loss, di, dt, ds) =
                local_loss_and_grads(&mut g, &img, &txt, scale, (b, d), r * n..(r + 1) * n);
            mean += loss / ranks as f32;
            sum_i.iter_mut().zip(&di).for_each(|(a, x)| *a += x);
            sum_t.iter_mut().zip(&dt).for_each(|(a, x)| *a += x);
            sum_s += ds;
        }
        assert!(
            (mean - full).abs() < 1e-5 * full,
            "{name}: {mean} vs {full}"
        );
        assert!(
            (sum_s - ranks as f32 * full_s).abs() < 1e-4 * full_s.abs(),
            "{name}: dscale {sum_s} vs {ranks} x {full_s}"
        );
        for (sum, full) in [(&sum_i, &full_i), (&sum_t, &full_t)] {
            let largest = full.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (k, (s, f)) in sum.iter().zip(full).enumerate() {
                assert!(
                    (s - ranks as f32 * f).abs() < 1e-5 * largest * ranks as f32,
                    "{name}: element {k}: {s} vs {ranks} x {f}"
                );
            }
        }
    }
}

#[test]
fn bad_shapes_name_the_op_and_the_shapes() {
    for mut g in [cpu_graph(), gpu_graph()] {
        let a = g.variable(&[0.0; 6], &[2, 3]).unwrap();
        let b = g.variable(&[0.0; 8], &[2, 4]).unwrap();
        let s = g.variable(&[0.0], &[1]).unwrap();
        let err = g.contrastive_loss(a, b, s).unwrap_err().to_string();
        assert!(
            err.starts_with("contrastive_loss:")
                && err.contains("[2, 3]")
                && err.contains("[2, 4]"),
            "{err}"
        );
        for own in [0..0, 1..3] {
            let err = g.local_contrastive_loss(a, a, s, own).unwrap_err();
            assert!(err.to_string().contains("own lines"), "{err}");
        }
        let s2 = g.variable(&[0.0; 2], &[2]).unwrap();
        let err = g.contrastive_loss(a, a, s2).unwrap_err().to_string();
        assert!(
            err.starts_with("contrastive_loss:") && err.contains("[2]"),
            "{err}"
        );
    }
}

#[test]
fn unchecked_shaders_give_the_same_result() {
    // Release builds drop wgpu's bounds checks; the loss kernels must guard their own indices.
    let gpu = unchecked_gpu();
    let mut rng = Rng::new(24);
    let (b, d) = (259, 12);
    let (img, txt) = (unit_rows(&mut rng, b, d), unit_rows(&mut rng, b, d));
    let run = |g: &mut Graph| -> Vec<Vec<f32>> {
        let i = g.variable(&img, &[b, d]).unwrap();
        let t = g.variable(&txt, &[b, d]).unwrap();
        let s = g.variable(&[2.0], &[1]).unwrap();
        let loss = g.contrastive_loss(i, t, s).unwrap();
        g.backward(loss).unwrap();
        [loss, i, t, s]
            .iter()
            .enumerate()
            .map(|(k, &x)| {
                if k == 0 {
                    g.to_vec(x)
                } else {
                    g.grad_vec(x).unwrap()
                }
            })
            .collect()
    };
    let got = run(&mut Graph::new(clusterclip::Backend::Gpu(gpu)));
    let want = run(&mut cpu_graph());
    // As in gpu_matches_cpu_on_awkward_batches.
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("unchecked contrastive {k}"), g, w, 1e-5, 1e-5);
    }
}
