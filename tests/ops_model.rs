//! The model ops of issue 3 (patchify, class-token prepend, LayerNorm, GELU, L2 normalisation,
//! multi-head attention): GPU vs the CPU reference on seeded inputs with awkward shapes,
//! finite-difference gradchecks of the CPU backward, direct formulas, and shape errors.

mod common;

use common::*;

/// Inputs with a [shape] each, from a seeded generator.
fn random_inputs(seed: u64, shapes: &[Vec<usize>]) -> Vec<(Vec<f32>, Vec<usize>)> {
    let mut rng = Rng::new(seed);
    shapes
        .iter()
        .map(|s| (rng.vec(s.iter().product()), s.clone()))
        .collect()
}

#[test]
fn patchify_matches_a_hand_indexed_example() {
    // images [2, 3, 4, 6], value = n·1000 + c·100 + y·10 + x, patch 2: a 2×3 grid of patches.
    let (n, c, h, w, p) = (2, 3, 4, 6, 2);
    let mut images = Vec::new();
    for ni in 0..n {
        for ci in 0..c {
            for y in 0..h {
                for x in 0..w {
                    images.push((ni * 1000 + ci * 100 + y * 10 + x) as f32);
                }
            }
        }
    }
    for mut g in [cpu_graph(), gpu_graph()] {
        let t = g.constant(&images, &[n, c, h, w]).unwrap();
        let out = g.patchify(t, p).unwrap();
        assert_eq!(g.shape(out), [n, 6, 12]);
        let got = g.to_vec(out);
        // Patch (i, j) is row i·3 + j; inside it (channel, row, col) as conv1.weight [w, 3, p, p].
        let mut want = Vec::new();
        for ni in 0..n {
            for i in 0..h / p {
                for j in 0..w / p {
                    for ci in 0..c {
                        for r in 0..p {
                            for col in 0..p {
                                let (y, x) = (i * p + r, j * p + col);
                                want.push((ni * 1000 + ci * 100 + y * 10 + x) as f32);
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(got, want, "{}", g.backend.name());
        // Spot check: image 1, patch (1, 2) = row 5, value (channel 2, row 1, col 0).
        assert_eq!(got[(6 + 5) * 12 + 2 * 4 + 2], 1000.0 + 200.0 + 30.0 + 4.0);
    }
}

#[test]
fn patchify_gpu_matches_cpu_and_gradchecks() {
    // 3 images of 2 channels, 10×15 with patch 5 (a 2×3 grid): nothing is a power of two.
    let inputs = random_inputs(11, &[vec![3, 2, 10, 15]]);
    // A permutation: exact on both backends (the smallest positive tolerance avoids 0/0).
    compare_backends(
        "patchify",
        &inputs,
        |g, v| g.patchify(v[0], 5).unwrap(),
        f32::MIN_POSITIVE,
    );
    let small = random_inputs(12, &[vec![1, 3, 4, 4]]);
    gradcheck(
        "patchify",
        &small,
        |g, v| g.patchify(v[0], 2).unwrap(),
        1e-3,
    );
}

#[test]
fn prepend_row_puts_the_row_first_and_sums_its_gradient() {
    let mut g = cpu_graph();
    let x = g
        .variable(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &[2, 2, 2])
        .unwrap();
    let row = g.variable(&[-1.0, -2.0], &[2]).unwrap();
    let out = g.prepend_row(x, row).unwrap();
    assert_eq!(g.shape(out), [2, 3, 2]);
    assert_eq!(
        g.to_vec(out),
        [
            -1.0, -2.0, 1.0, 2.0, 3.0, 4.0, -1.0, -2.0, 5.0, 6.0, 7.0, 8.0
        ]
    );
    let upstream: Vec<f32> = (0..12).map(|i| i as f32).collect();
    g.backward_from(out, &upstream).unwrap();
    assert_eq!(g.grad_vec(row).unwrap(), [0.0 + 6.0, 1.0 + 7.0]);
    assert_eq!(
        g.grad_vec(x).unwrap(),
        [2.0, 3.0, 4.0, 5.0, 8.0, 9.0, 10.0, 11.0]
    );

    let inputs = random_inputs(13, &[vec![5, 17, 33], vec![33]]);
    // Copies and one sum of 5 terms: 1e-6 covers f32 vs f64 summation.
    compare_backends(
        "prepend_row",
        &inputs,
        |g, v| g.prepend_row(v[0], v[1]).unwrap(),
        1e-6,
    );
    let small = random_inputs(14, &[vec![2, 3, 4], vec![4]]);
    gradcheck(
        "prepend_row",
        &small,
        |g, v| g.prepend_row(v[0], v[1]).unwrap(),
        1e-3,
    );
}

#[test]
fn bad_shapes_name_the_op_and_the_shapes() {
    for mut g in [cpu_graph(), gpu_graph()] {
        let images = g.variable(&[0.0; 3 * 10 * 12], &[1, 3, 10, 12]).unwrap();
        let err = g.patchify(images, 4).unwrap_err().to_string();
        assert!(
            err.starts_with("patchify:") && err.contains("[1, 3, 10, 12]") && err.contains('4'),
            "{err}"
        );
        let x = g.variable(&[0.0; 24], &[2, 3, 4]).unwrap();
        let row = g.variable(&[0.0; 5], &[5]).unwrap();
        let err = g.prepend_row(x, row).unwrap_err().to_string();
        assert!(
            err.starts_with("prepend_row:") && err.contains("[2, 3, 4]") && err.contains("[5]"),
            "{err}"
        );
        let gain = g.variable(&[0.0; 4], &[4]).unwrap();
        let err = g.layer_norm(x, gain, row, 1e-5).unwrap_err().to_string();
        let ok = err.starts_with("layer_norm:") && err.contains("[2, 3, 4]") && err.contains("[5]");
        assert!(ok, "{err}");
        let empty = g.variable(&[], &[2, 0]).unwrap();
        let err = g.l2_normalize(empty).unwrap_err().to_string();
        assert!(
            err.starts_with("l2_normalize:") && err.contains("[2, 0]"),
            "{err}"
        );
        let err = g.attention(x, 2, false).unwrap_err().to_string();
        assert!(
            err.starts_with("attention:") && err.contains("[2, 3, 4]"),
            "{err}"
        );
        let qkv = g.variable(&[0.0; 18], &[1, 2, 9]).unwrap();
        let err = g.attention(qkv, 2, false).unwrap_err().to_string();
        let ok =
            err.starts_with("attention:") && err.contains("[1, 2, 9]") && err.contains("2 heads");
        assert!(ok, "{err}");
    }
}

#[test]
fn layer_norm_matches_the_direct_formula() {
    // One row: mean 2.5, biased variance 1.25.
    let x = [1.0f32, 2.0, 3.0, 4.0];
    let (gain, bias) = ([1.0f32, 2.0, -1.0, 0.5], [0.0f32, 0.1, 0.2, 0.3]);
    let rstd = 1.0 / (1.25f64 + 1e-5).sqrt();
    let want: Vec<f32> = (0..4)
        .map(|i| ((x[i] as f64 - 2.5) * rstd * gain[i] as f64 + bias[i] as f64) as f32)
        .collect();
    for mut g in [cpu_graph(), gpu_graph()] {
        let tx = g.constant(&x, &[1, 4]).unwrap();
        let tg = g.constant(&gain, &[4]).unwrap();
        let tb = g.constant(&bias, &[4]).unwrap();
        let y = g.layer_norm(tx, tg, tb, 1e-5).unwrap();
        // f32 arithmetic on values of size ~1: a few ulps.
        assert_close("layer_norm direct", &g.to_vec(y), &want, 1e-6, 1e-6);
    }
}

#[test]
fn layer_norm_gpu_matches_cpu_and_gradchecks() {
    // Widths below, at and above the workgroup (128), rows past a param-gradient chunk (64).
    for (rows, cols) in [(1, 1), (3, 7), (70, 192), (5, 300), (130, 64)] {
        let mut inputs = random_inputs(
            20 + cols as u64,
            &[vec![rows, cols], vec![cols], vec![cols]],
        );
        // A large common offset: the two-pass variance must not cancel.
        for v in inputs[0].0.iter_mut().take(cols) {
            *v += 100.0;
        }
        // Normalised values are O(1); sums of up to 130 rows in f32 for the parameter
        // gradients, and the input gradient's cancellation of three O(1) terms: 2e-5.
        compare_backends(
            &format!("layer_norm {rows}x{cols}"),
            &inputs,
            |g, v| g.layer_norm(v[0], v[1], v[2], 1e-5).unwrap(),
            2e-5,
        );
    }
    // 3-d input; eps large enough that the finite differences stay smooth.
    let small = random_inputs(30, &[vec![2, 3, 5], vec![5], vec![5]]);
    gradcheck(
        "layer_norm",
        &small,
        |g, v| g.layer_norm(v[0], v[1], v[2], 1e-5).unwrap(),
        1e-2,
    );
}

#[test]
fn gelu_matches_known_values() {
    use clusterclip::ops::gelu::cpu;
    // erf to f64 rounding (values from the standard tables).
    for (x, want) in [
        (0.5, 0.5204998778130465),
        (2.0, 0.9953222650189527),
        (-1.0, -0.8427007929497149),
        (4.0, 0.9999999845827421),
    ] {
        assert!(
            (cpu::erf(x) - want).abs() < 1e-15,
            "erf({x}) = {}",
            cpu::erf(x)
        );
    }
    let x = [1.0f32, -0.5, 0.0, 3.0];
    let want = [0.841_344_8_f32, -0.154_268_77, 0.0, 2.995_950_2];
    for mut g in [cpu_graph(), gpu_graph()] {
        let t = g.constant(&x, &[4]).unwrap();
        let y = g.gelu(t).unwrap();
        // f32 rounding plus the shader's erfc fit (relative error < 1.2e-7).
        assert_close(
            &format!("gelu {}", g.backend.name()),
            &g.to_vec(y),
            &want,
            1e-7,
            3e-7,
        );
    }
}

#[test]
fn gelu_gpu_matches_cpu_and_gradchecks() {
    // Values across [-8, 8), including the far negative tail; 1000 is not a multiple of 256.
    let mut rng = Rng::new(40);
    let x: Vec<f32> = (0..1000).map(|_| rng.signed() * 8.0).collect();
    // erfc fit error < 1.2e-7 relative plus a few f32 roundings: 1e-6 (relative and absolute).
    // 1000 values take the vec4 kernels, 999 the scalar ones.
    for shape in [vec![10, 100], vec![27, 37]] {
        compare_backends(
            "gelu",
            &[(x[..shape[0] * shape[1]].to_vec(), shape)],
            |g, v| g.gelu(v[0]).unwrap(),
            1e-6,
        );
    }
    let small = random_inputs(41, &[vec![3, 7]]);
    let scaled: Vec<(Vec<f32>, Vec<usize>)> = small
        .into_iter()
        .map(|(v, s)| (v.iter().map(|x| x * 3.0).collect(), s))
        .collect();
    gradcheck("gelu", &scaled, |g, v| g.gelu(v[0]).unwrap(), 1e-3);
}

#[test]
fn quick_gelu_matches_known_values() {
    use clusterclip::ops::gelu::cpu;
    // x·σ(1.702x), from x / (1 + e^(−1.702x)) in f64; the derivative against a centred
    // difference of the f64 function (step 1e-5: error ~1e-10).
    for (x, want) in [
        (1.0, 0.845_795_765_932_821_2),
        (-0.5, -0.149_611_563_393_619_9),
        (3.0, 2.981_928_690_292_214),
    ] {
        assert!((cpu::quick_gelu(x) - want).abs() < 1e-15, "quick_gelu({x})");
        let h = 1e-5;
        let numeric = (cpu::quick_gelu(x + h) - cpu::quick_gelu(x - h)) / (2.0 * h);
        assert!(
            (cpu::quick_gelu_derivative(x) - numeric).abs() < 1e-9,
            "derivative at {x}"
        );
    }
    let x = [1.0f32, -0.5, 0.0, 3.0, -60.0];
    let want = [0.845_795_77_f32, -0.149_611_56, 0.0, 2.981_928_7, -0.0];
    for mut g in [cpu_graph(), gpu_graph()] {
        let t = g.constant(&x, &[5]).unwrap();
        let y = g.quick_gelu(t).unwrap();
        // One exp and a division in f32: a few roundings.
        assert_close(
            &format!("quick_gelu {}", g.backend.name()),
            &g.to_vec(y),
            &want,
            1e-7,
            5e-7,
        );
    }
}

#[test]
fn quick_gelu_gpu_matches_cpu_and_gradchecks() {
    // Values across [-40, 40): both sides of σ's saturation; 1000 is not a multiple of 256.
    let mut rng = Rng::new(42);
    let x: Vec<f32> = (0..1000).map(|_| rng.signed() * 40.0).collect();
    // exp and a division in f32 against f64: 1e-6 relative and absolute.
    // 1000 values take the vec4 kernels, 999 the scalar ones.
    for shape in [vec![10, 100], vec![27, 37]] {
        compare_backends(
            "quick_gelu",
            &[(x[..shape[0] * shape[1]].to_vec(), shape)],
            |g, v| g.quick_gelu(v[0]).unwrap(),
            1e-6,
        );
    }
    let small = random_inputs(43, &[vec![3, 7]]);
    let scaled: Vec<(Vec<f32>, Vec<usize>)> = small
        .into_iter()
        .map(|(v, s)| (v.iter().map(|x| x * 3.0).collect(), s))
        .collect();
    gradcheck(
        "quick_gelu",
        &scaled,
        |g, v| g.quick_gelu(v[0]).unwrap(),
        1e-3,
    );
}

#[test]
fn l2_normalize_gives_unit_rows_and_matches_cpu() {
    for mut g in [cpu_graph(), gpu_graph()] {
        let t = g
            .constant(&[3.0, 4.0, 0.0, 0.0, 0.0, 0.0], &[2, 3])
            .unwrap();
        let y = g.l2_normalize(t).unwrap();
        // A zero row stays zero (the norm is clamped at 1e-12), as F.normalize.
        assert_close(
            "l2 direct",
            &g.to_vec(y),
            &[0.6, 0.8, 0.0, 0.0, 0.0, 0.0],
            1e-7,
            1e-7,
        );
    }
    for (rows, cols) in [(1, 1), (7, 64), (33, 300), (4, 129)] {
        let inputs = random_inputs(50 + cols as u64, &[vec![rows, cols]]);
        // Unit-norm outputs; f32 sums of up to 300 squares: 1e-5.
        compare_backends(
            &format!("l2_normalize {rows}x{cols}"),
            &inputs,
            |g, v| g.l2_normalize(v[0]).unwrap(),
            1e-5,
        );
    }
    let small = random_inputs(60, &[vec![2, 3, 5]]);
    gradcheck(
        "l2_normalize",
        &small,
        |g, v| g.l2_normalize(v[0]).unwrap(),
        1e-2,
    );
}

/// Attention of one [B, T, 3·D] qkv by the textbook formula, head by head: Q, K, V as [T, hd]
/// matrices, S = QKᵀ/√hd with −∞ above the diagonal when causal, softmax rows, O = PV.
fn naive_attention(qkv: &[f32], b: usize, t: usize, heads: usize, causal: bool) -> Vec<f32> {
    let w = qkv.len() / (b * t * 3);
    let hd = w / heads;
    // qkv viewed as [B, T, 3, H, hd].
    let at = |bi: usize, ti: usize, part: usize, h: usize, e: usize| {
        qkv[(((bi * t + ti) * 3 + part) * heads + h) * hd + e] as f64
    };
    let mut out = vec![0f32; b * t * w];
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..t {
                let scores: Vec<f64> = (0..t)
                    .map(|j| {
                        if causal && j > i {
                            f64::NEG_INFINITY
                        } else {
                            (0..hd)
                                .map(|e| at(bi, i, 0, h, e) * at(bi, j, 1, h, e))
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        }
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for e in 0..hd {
                    let o: f64 = (0..t).map(|j| exps[j] / total * at(bi, j, 2, h, e)).sum();
                    out[(bi * t + i) * w + h * hd + e] = o as f32;
                }
            }
        }
    }
    out
}

/// qkv [B, T, 3·heads·hd] with values in [-amp, amp).
fn qkv_input(
    seed: u64,
    b: usize,
    t: usize,
    heads: usize,
    hd: usize,
    amp: f32,
) -> Vec<(Vec<f32>, Vec<usize>)> {
    let mut rng = Rng::new(seed);
    let n = b * t * 3 * heads * hd;
    vec![(
        (0..n).map(|_| rng.signed() * amp).collect(),
        vec![b, t, 3 * heads * hd],
    )]
}

#[test]
fn attention_cpu_reference_matches_the_naive_formula() {
    for (b, t, heads, hd, causal) in [
        (2, 5, 3, 4, false),
        (2, 5, 3, 4, true),
        (1, 1, 2, 8, true),
        (1, 17, 1, 32, true),
    ] {
        let inputs = qkv_input(70 + t as u64, b, t, heads, hd, 2.0);
        let mut g = cpu_graph();
        let qkv = g.constant(&inputs[0].0, &inputs[0].1).unwrap();
        let out = g.attention(qkv, heads, causal).unwrap();
        assert_eq!(g.shape(out), [b, t, heads * hd]);
        let want = naive_attention(&inputs[0].0, b, t, heads, causal);
        // Both in f64, rounded once to f32.
        assert_close(
            &format!("attention reference b{b} t{t} h{heads} causal={causal}"),
            &g.to_vec(out),
            &want,
            1e-6,
            1e-6,
        );
    }
    // T = 1: the output is v.
    let mut g = cpu_graph();
    let qkv = g
        .constant(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1, 1, 6])
        .unwrap();
    let out = g.attention(qkv, 2, false).unwrap();
    assert_eq!(g.to_vec(out), [5.0, 6.0]);
}

#[test]
fn attention_gpu_matches_cpu() {
    for (b, t, heads, hd, causal) in [
        (1, 1, 1, 32, true),
        (2, 1, 3, 32, false),
        (2, 5, 2, 32, true),
        (2, 17, 3, 32, false),
        (2, 17, 3, 64, true),
        (3, 17, 1, 64, false),
        // head_dim 6: the products leave the vec4 path.
        (2, 6, 2, 6, true),
    ] {
        let inputs = qkv_input(80 + (t * heads) as u64, b, t, heads, hd, 1.5);
        // Scores are f32 dot products of 32-64 terms of size ~1 and gradients sum over up to
        // 17 keys: 2e-5 covers the reordering of those sums.
        compare_backends(
            &format!("attention b{b} t{t} h{heads} hd{hd} causal={causal}"),
            &inputs,
            |g, v| g.attention(v[0], heads, causal).unwrap(),
            2e-5,
        );
    }
}

#[test]
fn attention_gpu_matches_cpu_at_vit_length() {
    // T = 197 (a ViT-B/16 image: 196 patches + class token), head_dim 64, 2 heads.
    let inputs = qkv_input(90, 1, 197, 2, 64, 1.5);
    // Sums over 197 keys in f32: 5e-5.
    compare_backends(
        "attention t197",
        &inputs,
        |g, v| g.attention(v[0], 2, false).unwrap(),
        5e-5,
    );
}

#[test]
fn attention_gradchecks() {
    for causal in [false, true] {
        for heads in 1..=3 {
            let inputs = qkv_input(100 + heads as u64, 2, 4, heads, 3, 1.0);
            gradcheck(
                &format!("attention h{heads} causal={causal}"),
                &inputs,
                |g, v| g.attention(v[0], heads, causal).unwrap(),
                1e-2,
            );
        }
    }
}
