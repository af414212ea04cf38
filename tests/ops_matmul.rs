//! Matmul and add: GPU vs the CPU reference on seeded random inputs (including shapes that are
//! not multiples of the tile), gradchecks of the CPU backward, and shape errors.

mod common;

use clusterclip::graph::{Graph, Tensor};
use clusterclip::ops::matmul::{MatmulDims, kernel_plan};
use common::*;

fn shape_a(m: usize, k: usize, trans: bool) -> Vec<usize> {
    if trans { vec![k, m] } else { vec![m, k] }
}

#[test]
fn matmul_gpu_matches_cpu_on_awkward_shapes() {
    let mut rng = Rng::new(1);
    for &(m, n, k) in &[(1, 1, 1), (17, 33, 65), (257, 129, 511), (64, 64, 64)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let sa = shape_a(m, k, ta);
            let sb = if tb { vec![n, k] } else { vec![k, n] };
            let inputs = vec![
                (rng.vec(m * k), sa),
                (rng.vec(k * n), sb),
                (rng.vec(n), vec![n]),
            ];
            // f32 sums of up to 511 products of values in [-1, 1): 1e-4 covers reordering.
            compare_backends(
                &format!("matmul {m}x{n}x{k} ta={ta} tb={tb}"),
                &inputs,
                |g, v| g.matmul_ext(v[0], v[1], ta, tb, Some(v[2])).unwrap(),
                1e-4,
            );
        }
    }
}

#[test]
fn batched_matmul_gpu_matches_cpu() {
    let mut rng = Rng::new(2);
    let (batch, m, n, k) = (3, 19, 23, 29);
    // Batched × batched (attention-like), transposed B.
    let inputs = vec![
        (rng.vec(batch * m * k), vec![batch, m, k]),
        (rng.vec(batch * n * k), vec![batch, n, k]),
    ];
    compare_backends(
        "batched nt",
        &inputs,
        |g, v| g.matmul_ext(v[0], v[1], false, true, None).unwrap(),
        1e-4,
    );
    // Batched × shared 2-D weight (a linear layer over [batch, tokens, width]).
    let inputs = vec![
        (rng.vec(batch * m * k), vec![batch, m, k]),
        (rng.vec(n * k), vec![n, k]),
        (rng.vec(n), vec![n]),
    ];
    compare_backends(
        "linear",
        &inputs,
        |g, v| g.linear(v[0], v[1], Some(v[2])).unwrap(),
        1e-4,
    );
}

#[test]
fn large_products_with_transposed_copies_match_cpu() {
    // At 2^24 multiply-adds and more, operands are first copied into the `_tn` layout when the
    // other side of C is at least 128 wide: both, only B (N = 64) or only A (M = 64), in every
    // layout; the backward products take the same paths.
    let mut rng = Rng::new(5);
    for (m, n, k) in [(128, 128, 1024), (256, 64, 1024), (64, 256, 1024)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let sa = shape_a(m, k, ta);
            let sb = if tb { vec![n, k] } else { vec![k, n] };
            let inputs = vec![(rng.vec(m * k), sa), (rng.vec(k * n), sb)];
            // Sums of 1024 products of values in [-1, 1): 3e-4 covers the reordering.
            compare_backends(
                &format!("matmul {m}x{n}x{k} ta={ta} tb={tb}"),
                &inputs,
                |g, v| g.matmul_ext(v[0], v[1], ta, tb, None).unwrap(),
                3e-4,
            );
        }
    }
}

#[test]
fn the_hardware_gpu_kernel_matches_cpu() {
    // `matmul_tiled` (workgroup memory, 64 x 64 blocks) is what non-CPU adapters run; lavapipe
    // runs it here on request. Shapes off the 64 x 64 x 16 blocks, every layout, batched with a
    // shared B and a bias, and the backward products.
    let tiled = fresh_gpu();
    tiled.set_tiled_matmul(true);
    let mut rng = Rng::new(6);
    for &(batch, m, n, k) in &[
        (1, 1, 1, 1),
        (1, 17, 33, 65),
        (1, 130, 67, 200),
        (3, 19, 23, 29),
    ] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let lead = |rows: usize, cols: usize| {
                if batch == 1 {
                    vec![rows, cols]
                } else {
                    vec![batch, rows, cols]
                }
            };
            let sa = if ta { lead(k, m) } else { lead(m, k) };
            let sb = if tb { lead(n, k) } else { lead(k, n) };
            let inputs = vec![
                (rng.vec(batch * m * k), sa),
                (rng.vec(batch * k * n), sb),
                (rng.vec(n), vec![n]),
            ];
            compare_backends_on(
                &tiled,
                &format!("tiled {batch}x{m}x{n}x{k} ta={ta} tb={tb}"),
                &inputs,
                |g, v| g.matmul_ext(v[0], v[1], ta, tb, Some(v[2])).unwrap(),
                1e-4,
            );
        }
    }
    let inputs = vec![
        (rng.vec(3 * 19 * 29), vec![3, 19, 29]),
        (rng.vec(23 * 29), vec![23, 29]),
        (rng.vec(23), vec![23]),
    ];
    compare_backends_on(
        &tiled,
        "tiled linear",
        &inputs,
        |g, v| g.linear(v[0], v[1], Some(v[2])).unwrap(),
        1e-4,
    );
}

#[test]
fn the_subgroup_kernel_matches_cpu() {
    // `matmul_subgroup` (lavapipe: 64 rows a workgroup, 8 columns a lane, 4 k steps a pass) on
    // shapes off its tiles, every layout, batched with a shared B and a bias, and the backward
    // products. Adapters without 8-lane subgroups (GL) run the same shapes on the other kernels.
    let gpu = gpu();
    let probe = MatmulDims {
        batch: 1,
        m: 100,
        n: 72,
        k: 36,
        trans_a: false,
        trans_b: false,
        shared_b: false,
    };
    if gpu.fixed_subgroup_size() == Some(8) {
        let plan = kernel_plan(&gpu, &probe);
        assert_eq!(plan, "matmul_subgroup::matmul_sg", "{plan}");
    }
    let mut rng = Rng::new(7);
    for &(batch, m, n, k) in &[(1, 100, 72, 36), (2, 68, 136, 20), (1, 4, 64, 4)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let lead = |rows: usize, cols: usize| {
                if batch == 1 {
                    vec![rows, cols]
                } else {
                    vec![batch, rows, cols]
                }
            };
            let sa = if ta { lead(k, m) } else { lead(m, k) };
            let sb = if tb { lead(n, k) } else { lead(k, n) };
            let inputs = vec![
                (rng.vec(batch * m * k), sa),
                (rng.vec(batch * k * n), sb),
                (rng.vec(n), vec![n]),
            ];
            // f32 sums of up to 136 products of values in [-1, 1): 1e-4 covers reordering.
            compare_backends(
                &format!("subgroup {batch}x{m}x{n}x{k} ta={ta} tb={tb}"),
                &inputs,
                |g, v| g.matmul_ext(v[0], v[1], ta, tb, Some(v[2])).unwrap(),
                1e-4,
            );
        }
    }
    // A [K, M] and B [K, N] (weight gradients, whose K is a token count that a dispatch plan
    // varies) take any K: the last pass counts its missing steps as zeros.
    for k in [1, 2, 3, 5, 35] {
        let dims = MatmulDims {
            k,
            trans_a: true,
            ..probe
        };
        if gpu.fixed_subgroup_size() == Some(8) {
            let plan = kernel_plan(&gpu, &dims);
            assert_eq!(plan, "matmul_subgroup::matmul_sg", "k = {k}: {plan}");
        }
        let inputs = vec![
            (rng.vec(k * 100), vec![k, 100]),
            (rng.vec(k * 72), vec![k, 72]),
        ];
        compare_backends(
            &format!("subgroup Aᵀ·B, k = {k}"),
            &inputs,
            |g, v| g.matmul_ext(v[0], v[1], true, false, None).unwrap(),
            1e-4,
        );
    }
    let inputs = vec![
        (rng.vec(3 * 20 * 28), vec![3, 20, 28]),
        (rng.vec(68 * 28), vec![68, 28]),
        (rng.vec(68), vec![68]),
    ];
    compare_backends(
        "subgroup linear",
        &inputs,
        |g, v| g.linear(v[0], v[1], Some(v[2])).unwrap(),
        1e-4,
    );
}

#[test]
fn many_small_batched_products_match_cpu_in_every_layout() {
    // Attention-like: a batch that is not a multiple of the workgroup's 8 lanes and N far below
    // a workgroup's row of tiles, so the lanes take batch entries (flag bit 4 of the shader);
    // N = 20 and 21 cover the vec4 and the strided kernels.
    let mut rng = Rng::new(4);
    for (batch, m, n, k) in [(19, 17, 20, 12), (11, 9, 21, 7)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let sa = if ta {
                vec![batch, k, m]
            } else {
                vec![batch, m, k]
            };
            let sb = if tb {
                vec![batch, n, k]
            } else {
                vec![batch, k, n]
            };
            let inputs = vec![(rng.vec(batch * m * k), sa), (rng.vec(batch * k * n), sb)];
            compare_backends(
                &format!("batched {batch}x{m}x{n}x{k} ta={ta} tb={tb}"),
                &inputs,
                |g, v| g.matmul_ext(v[0], v[1], ta, tb, None).unwrap(),
                1e-4,
            );
        }
    }
}

#[test]
fn matmul_cpu_gradcheck() {
    let mut rng = Rng::new(3);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let (m, n, k) = (5, 4, 3);
        let inputs = vec![
            (rng.vec(m * k), shape_a(m, k, ta)),
            (rng.vec(k * n), if tb { vec![n, k] } else { vec![k, n] }),
            (rng.vec(n), vec![n]),
        ];
        gradcheck(
            &format!("matmul ta={ta} tb={tb}"),
            &inputs,
            |g, v| g.matmul_ext(v[0], v[1], ta, tb, Some(v[2])).unwrap(),
            1e-2,
        );
    }
    let inputs = vec![
        (rng.vec(2 * 3 * 4), vec![2, 3, 4]),
        (rng.vec(2 * 4 * 5), vec![2, 4, 5]),
    ];
    gradcheck(
        "batched matmul",
        &inputs,
        |g, v| g.matmul(v[0], v[1]).unwrap(),
        1e-2,
    );
}

#[test]
fn add_gpu_matches_cpu_and_gradchecks() {
    let mut rng = Rng::new(4);
    for (sa, sb) in [
        (vec![1], vec![1]),
        (vec![7, 33], vec![7, 33]),
        (vec![5, 6, 17], vec![6, 17]),
        (vec![300, 257], vec![257]),
    ] {
        let na: usize = sa.iter().product();
        let nb: usize = sb.iter().product();
        let inputs = vec![(rng.vec(na), sa.clone()), (rng.vec(nb), sb.clone())];
        compare_backends(
            &format!("add {sa:?} + {sb:?}"),
            &inputs,
            |g, v| g.add(v[0], v[1]).unwrap(),
            1e-5,
        );
        if na < 200 {
            gradcheck(
                &format!("add {sa:?} + {sb:?}"),
                &inputs,
                |g, v| g.add(v[0], v[1]).unwrap(),
                1e-2,
            );
        }
    }
}

#[test]
fn gradients_accumulate_when_a_tensor_is_used_twice() {
    let mut rng = Rng::new(6);
    let inputs = vec![(rng.vec(12), vec![3, 4]), (rng.vec(20), vec![4, 5])];
    // x·W + x·W: dx must be twice the single-use gradient.
    let build = |g: &mut Graph, v: &[Tensor]| {
        let y1 = g.matmul(v[0], v[1]).unwrap();
        let y2 = g.matmul(v[0], v[1]).unwrap();
        g.add(y1, y2).unwrap()
    };
    gradcheck("x·W + x·W", &inputs, build, 1e-2);
    compare_backends("x·W + x·W", &inputs, build, 1e-5);
}

#[test]
fn mismatched_shapes_name_the_op_and_both_shapes() {
    for mut g in [cpu_graph(), gpu_graph()] {
        let a = g.variable(&[0.0; 6], &[2, 3]).unwrap();
        let b = g.variable(&[0.0; 20], &[4, 5]).unwrap();
        let err = g.matmul(a, b).unwrap_err().to_string();
        assert!(
            err.starts_with("matmul:") && err.contains("[2, 3]") && err.contains("[4, 5]"),
            "{err}"
        );
        let err = g.add(a, b).unwrap_err().to_string();
        assert!(
            err.starts_with("add:") && err.contains("[2, 3]") && err.contains("[4, 5]"),
            "{err}"
        );
        let c = g.variable(&[0.0; 24], &[2, 3, 4]).unwrap();
        let d = g.variable(&[0.0; 60], &[3, 4, 5]).unwrap();
        let err = g.matmul(c, d).unwrap_err().to_string();
        assert!(err.contains("batch"), "{err}");
    }
}

#[test]
fn unchecked_shaders_give_the_same_result() {
    // Release builds drop wgpu's bounds checks; the kernels must not rely on them.
    let gpu = unchecked_gpu();
    let mut rng = Rng::new(7);
    let (a, b) = (rng.vec(17 * 65), rng.vec(65 * 33));
    let mut g = clusterclip::Graph::new(clusterclip::Backend::Gpu(gpu));
    let ta = g.constant(&a, &[17, 65]).unwrap();
    let tb = g.constant(&b, &[65, 33]).unwrap();
    let out = g.matmul(ta, tb).unwrap();
    let mut c = cpu_graph();
    let ca = c.constant(&a, &[17, 65]).unwrap();
    let cb = c.constant(&b, &[65, 33]).unwrap();
    let want = c.matmul(ca, cb).unwrap();
    assert_close(
        "unchecked matmul",
        &g.to_vec(out),
        &c.to_vec(want),
        1e-5,
        1e-5,
    );
}
