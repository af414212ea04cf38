//! Reshape, mul, scale, sums/means and row gather/scatter: GPU vs the CPU reference on seeded
//! random inputs (shapes that are not multiples of the workgroup), gradchecks of the CPU
//! backward, and shape errors naming the op and the shapes.

mod common;

use std::future::Future;
use std::task::{Context, Poll, Waker};

use common::*;

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

#[test]
fn reshape_shares_storage_and_passes_gradients_through() {
    let mut rng = Rng::new(10);
    let inputs = vec![(rng.vec(6 * 7), vec![6, 7])];
    // Reshape then a broadcast mul, so the gradient's layout matters.
    let w = rng.vec(14);
    let build = |g: &mut clusterclip::Graph, v: &[clusterclip::Tensor]| {
        let r = g.reshape(v[0], &[3, 14]).unwrap();
        let w = g.constant(&w, &[14]).unwrap();
        g.mul(r, w).unwrap()
    };
    // Single products in f32 on both sides: exact up to one rounding.
    compare_backends("reshape·w", &inputs, build, 1e-6);
    gradcheck("reshape·w", &inputs, build, 1e-2);
    let mut g = cpu_graph();
    let a = g.variable(&inputs[0].0, &[6, 7]).unwrap();
    let r = g.reshape(a, &[42]).unwrap();
    assert_eq!(g.shape(r), [42]);
    assert_eq!(g.to_vec(r), inputs[0].0);
    let err = g.reshape(a, &[5, 8]).unwrap_err().to_string();
    assert!(
        err.starts_with("reshape:") && err.contains("[6, 7]") && err.contains("[5, 8]"),
        "{err}"
    );
}

#[test]
fn add_mul_and_scale_gpu_match_cpu_and_gradcheck() {
    let mut rng = Rng::new(11);
    for (sa, sb) in [
        (vec![1], vec![1]),
        (vec![7, 33], vec![7, 33]),
        (vec![5, 6, 17], vec![6, 17]),
        (vec![300, 257], vec![257]),
        // Lengths in multiples of 4 take the vec4 kernels; 300 rows, the chunked column sum.
        (vec![8, 12], vec![8, 12]),
        (vec![300, 256], vec![256]),
        (vec![5, 4], vec![4]),
    ] {
        let inputs = vec![
            (rng.vec(numel(&sa)), sa.clone()),
            (rng.vec(numel(&sb)), sb.clone()),
        ];
        // One f32 product per output; the broadcast operand's gradient sums up to 300 products
        // in a different order on each backend: 1e-5 covers it.
        compare_backends(
            &format!("mul {sa:?}·{sb:?}"),
            &inputs,
            |g, v| g.mul(v[0], v[1]).unwrap(),
            1e-5,
        );
        compare_backends(
            &format!("add {sa:?}+{sb:?}"),
            &inputs,
            |g, v| g.add(v[0], v[1]).unwrap(),
            1e-5,
        );
        if numel(&sa) < 200 {
            gradcheck(
                &format!("mul {sa:?}·{sb:?}"),
                &inputs,
                |g, v| g.mul(v[0], v[1]).unwrap(),
                1e-2,
            );
        }
    }
    let inputs = vec![(rng.vec(1000), vec![10, 100])];
    compare_backends("scale", &inputs, |g, v| g.scale(v[0], -2.5).unwrap(), 1e-6);
    gradcheck(
        "scale",
        &[(rng.vec(30), vec![30])],
        |g, v| g.scale(v[0], 0.3).unwrap(),
        1e-2,
    );
    // x·x: both gradient paths land on one input and add.
    let inputs = vec![(rng.vec(37), vec![37])];
    gradcheck("x·x", &inputs, |g, v| g.mul(v[0], v[0]).unwrap(), 1e-2);
    compare_backends("x·x", &inputs, |g, v| g.mul(v[0], v[0]).unwrap(), 1e-6);
}

#[test]
fn reductions_gpu_match_cpu_and_gradcheck() {
    let mut rng = Rng::new(12);
    // Both GPU kernels: per-output invocations (short axes) and per-output workgroups (long).
    for shape in [
        vec![1],
        vec![13],
        vec![5, 7, 9],
        vec![3, 1000],
        vec![1000, 3],
        vec![2, 300, 3],
    ] {
        let inputs = vec![(rng.vec(numel(&shape)), shape.clone())];
        for axis in 0..shape.len() {
            // f32 sums of up to 1,000 values in [-1, 1) against f64: 1e-4 absolute and relative.
            compare_backends(
                &format!("sum {shape:?} axis {axis}"),
                &inputs,
                |g, v| g.sum(v[0], axis).unwrap(),
                1e-4,
            );
            compare_backends(
                &format!("mean {shape:?} axis {axis}"),
                &inputs,
                |g, v| g.mean(v[0], axis).unwrap(),
                1e-4,
            );
        }
        compare_backends(
            &format!("sum_all {shape:?}"),
            &inputs,
            |g, v| g.sum_all(v[0]).unwrap(),
            1e-4,
        );
        compare_backends(
            &format!("mean_all {shape:?}"),
            &inputs,
            |g, v| g.mean_all(v[0]).unwrap(),
            1e-4,
        );
    }
    let inputs = vec![(rng.vec(60), vec![3, 4, 5])];
    for axis in 0..3 {
        gradcheck(
            &format!("sum axis {axis}"),
            &inputs,
            |g, v| g.sum(v[0], axis).unwrap(),
            1e-2,
        );
        gradcheck(
            &format!("mean axis {axis}"),
            &inputs,
            |g, v| g.mean(v[0], axis).unwrap(),
            1e-2,
        );
    }
    gradcheck("sum_all", &inputs, |g, v| g.sum_all(v[0]).unwrap(), 1e-2);
    gradcheck("mean_all", &inputs, |g, v| g.mean_all(v[0]).unwrap(), 1e-2);
}

#[test]
fn reductions_give_the_right_shapes_and_values() {
    let mut g = cpu_graph();
    let a = g
        .variable(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])
        .unwrap();
    let s0 = g.sum(a, 0).unwrap();
    let m1 = g.mean(a, 1).unwrap();
    let all = g.mean_all(a).unwrap();
    assert_eq!((g.shape(s0), g.to_vec(s0)), (&[3][..], vec![5.0, 7.0, 9.0]));
    assert_eq!((g.shape(m1), g.to_vec(m1)), (&[2][..], vec![2.0, 5.0]));
    assert_eq!((g.shape(all), g.to_vec(all)), (&[1][..], vec![3.5]));
    let err = g.sum(a, 2).unwrap_err().to_string();
    assert!(
        err.starts_with("sum:") && err.contains("axis 2") && err.contains("[2, 3]"),
        "{err}"
    );
}

#[test]
fn gather_and_scatter_rows_gpu_match_cpu_and_gradcheck() {
    let mut rng = Rng::new(13);
    // 300 vocabulary rows of [3, 5]; 2×150 lookups with many repeats and one index past the end.
    let (rows, n) = (300usize, 300usize);
    let mut ids: Vec<u32> = (0..n).map(|_| rng.below(40) * 7).collect();
    ids[17] = rows as u32 + 5;
    let ids_gather = ids.clone();
    let inputs = vec![(rng.vec(rows * 15), vec![rows, 3, 5])];
    // Gather copies exactly; its gradient sums up to ~10 repeats per row in a different order.
    compare_backends(
        "gather_rows",
        &inputs,
        |g, v| {
            let idx = g.indices(&ids_gather, &[2, n / 2]).unwrap();
            let out = g.gather_rows(v[0], idx).unwrap();
            assert_eq!(g.shape(out), [2, n / 2, 3, 5]);
            out
        },
        1e-5,
    );
    let ids_scatter = ids.clone();
    let inputs = vec![(rng.vec(n * 15), vec![n, 15])];
    compare_backends(
        "scatter_add_rows",
        &inputs,
        |g, v| {
            let idx = g.indices(&ids_scatter, &[n]).unwrap();
            g.scatter_add_rows(v[0], idx, rows).unwrap()
        },
        1e-5,
    );
    let small: Vec<u32> = vec![2, 0, 2, 9, 1, 2];
    let inputs = vec![(rng.vec(4 * 3), vec![4, 3])];
    gradcheck(
        "gather_rows",
        &inputs,
        |g, v| {
            let idx = g.indices(&small, &[6]).unwrap();
            g.gather_rows(v[0], idx).unwrap()
        },
        1e-2,
    );
    let inputs = vec![(rng.vec(6 * 3), vec![6, 3])];
    gradcheck(
        "scatter_add_rows",
        &inputs,
        |g, v| {
            let idx = g.indices(&small, &[6]).unwrap();
            g.scatter_add_rows(v[0], idx, 4).unwrap()
        },
        1e-2,
    );
}

#[test]
fn gather_and_scatter_values_and_errors() {
    for mut g in [cpu_graph(), gpu_graph()] {
        let src = g
            .variable(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2])
            .unwrap();
        let idx = g.indices(&[2, 0, 2, 7], &[4]).unwrap();
        let out = g.gather_rows(src, idx).unwrap();
        assert_eq!(g.to_vec(out), [5.0, 6.0, 1.0, 2.0, 5.0, 6.0, 0.0, 0.0]);
        let back = g.scatter_add_rows(out, idx, 3).unwrap();
        assert_eq!(g.to_vec(back), [1.0, 2.0, 0.0, 0.0, 10.0, 12.0]);
        let err = g.gather_rows(src, src).unwrap_err().to_string();
        assert!(
            err.starts_with("gather_rows:") && err.contains("[3, 2]"),
            "{err}"
        );
        let idx3 = g.indices(&[0, 1, 2], &[3]).unwrap();
        let err = g.scatter_add_rows(out, idx3, 3).unwrap_err().to_string();
        assert!(
            err.starts_with("scatter_add_rows:") && err.contains("[3]") && err.contains("[4, 2]"),
            "{err}"
        );
    }
}

#[test]
fn softmax_gpu_matches_cpu_and_gradchecks() {
    let mut rng = Rng::new(14);
    // Rows shorter and longer than the 64-lane workgroup; causal square blocks of 77 (CLIP's
    // text context) and 5.
    for (shape, scale, causal) in [
        (vec![3, 7], 1.0, false),
        (vec![2, 4, 77, 77], 0.125, true),
        (vec![9, 301], 3.0, false),
        (vec![2, 5, 5], -0.7, true),
        // Rows in multiples of 4 take the vec4 kernels, causal ones too.
        (vec![9, 300], 3.0, false),
        (vec![3, 2, 12, 12], 0.5, true),
    ] {
        let inputs = vec![(rng.vec(numel(&shape)), shape.clone())];
        // exp and sums of up to 300 terms in f32 vs f64: 1e-5 absolute and relative.
        compare_backends(
            &format!("softmax {shape:?} scale {scale} causal {causal}"),
            &inputs,
            |g, v| g.softmax(v[0], scale, causal).unwrap(),
            1e-5,
        );
    }
    for causal in [false, true] {
        let inputs = vec![(rng.vec(2 * 4 * 4), vec![2, 4, 4])];
        gradcheck(
            &format!("softmax causal {causal}"),
            &inputs,
            |g, v| g.softmax(v[0], 1.7, causal).unwrap(),
            1e-2,
        );
    }
}

#[test]
fn softmax_rows_sum_to_one_and_mask_the_future() {
    let mut rng = Rng::new(15);
    let t = 6;
    for mut g in [cpu_graph(), gpu_graph()] {
        let x = g.variable(&rng.vec(2 * t * t), &[2, t, t]).unwrap();
        let y = g.softmax(x, 2.0, true).unwrap();
        let y = g.to_vec(y);
        for (r, row) in y.chunks(t).enumerate() {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "row {r} sums to {sum}");
            assert!(
                row[r % t + 1..].iter().all(|&p| p == 0.0),
                "row {r} sees the future: {row:?}"
            );
            assert!(row[..=r % t].iter().all(|&p| p > 0.0), "row {r}: {row:?}");
        }
        let bad = g.variable(&[0.0; 6], &[2, 3]).unwrap();
        let err = g.softmax(bad, 1.0, true).unwrap_err().to_string();
        assert!(
            err.starts_with("softmax:") && err.contains("[2, 3]"),
            "{err}"
        );
    }
}

#[test]
fn unchecked_shaders_give_the_same_results() {
    // Release builds drop wgpu's bounds checks; these kernels must guard their own indices.
    let gpu = unchecked_gpu();
    let mut rng = Rng::new(16);
    let x = rng.vec(3 * 77 * 77);
    let ids: Vec<u32> = (0..200).map(|_| rng.below(50)).collect();
    let run = |g: &mut clusterclip::Graph| -> Vec<Vec<f32>> {
        let xv = g.variable(&x, &[3, 77, 77]).unwrap();
        let idx = g.indices(&ids, &[200]).unwrap();
        let p = g.softmax(xv, 0.5, true).unwrap();
        let s = g.sum(p, 1).unwrap();
        let flat = g.reshape(xv, &[231, 77]).unwrap();
        let rows = g.gather_rows(flat, idx).unwrap();
        let back = g.scatter_add_rows(rows, idx, 50).unwrap();
        let total = g.mean_all(back).unwrap();
        let s_total = g.sum_all(s).unwrap();
        let loss = g.add(total, s_total).unwrap();
        g.backward(loss).unwrap();
        vec![
            g.to_vec(p),
            g.to_vec(back),
            g.to_vec(loss),
            g.grad_vec(xv).unwrap(),
        ]
    };
    let got = run(&mut clusterclip::Graph::new(clusterclip::Backend::Gpu(gpu)));
    let want = run(&mut cpu_graph());
    // Same kernels as the checked runs above, same tolerances (sums of ≤ 231·77 terms: 1e-4).
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("unchecked output {i}"), g, w, 1e-4, 1e-4);
    }
}

#[test]
fn scatter_add_is_bit_reproducible() {
    // Embedding gradients of padding-heavy batches: many indices share one row. The CSR fill
    // takes atomic slots in scheduling order; the segment sort makes the sums independent of
    // it, which bit-exact resume needs.
    let mut rng = Rng::new(77);
    let (n, rows, cols) = (3000usize, 40usize, 9usize);
    let idx: Vec<u32> = (0..n)
        .map(|i| {
            if i % 3 == 0 {
                0
            } else {
                rng.below(rows as u32)
            }
        })
        .collect();
    let src = rng.vec(n * cols);
    let run = || {
        let mut g = gpu_graph();
        let s = g.constant(&src, &[n, cols]).unwrap();
        let i = g.indices(&idx, &[n]).unwrap();
        let out = g.scatter_add_rows(s, i, rows).unwrap();
        g.to_vec(out)
    };
    let first = run();
    for _ in 0..5 {
        let again = run();
        let diff: Vec<(usize, f32, f32)> = first
            .iter()
            .zip(&again)
            .enumerate()
            .filter(|(_, (a, b))| a.to_bits() != b.to_bits())
            .map(|(i, (a, b))| (i, *a, *b))
            .take(4)
            .collect();
        assert!(
            diff.is_empty(),
            "scatter-add sums changed between runs: {diff:?}"
        );
    }
    let want = clusterclip::ops::gather::cpu::scatter_add_rows(&src, &idx, rows, cols);
    assert_close("scatter-add", &first, &want, 1e-4, 1e-5);
}

/// Polls a future once: native reads must need no executor.
fn first_poll<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a native GPU read was still pending after its first poll"),
    }
}

/// On native the device wait runs inside the read, so its future is ready at the first poll and
/// holds the work recorded before it (a browser's stays pending until the map callback; see the
/// unit tests in src/gpu/readback.rs).
#[test]
fn async_reads_are_ready_at_the_first_poll_on_native() {
    let mut rng = Rng::new(12);
    let x = rng.vec(1000);
    let mut g = gpu_graph();
    let t = g.constant(&x, &[1000]).unwrap();
    let y = g.scale(t, -0.5).unwrap();
    // Exact: halving and negating an f32 loses nothing.
    let want: Vec<f32> = x.iter().map(|v| v * -0.5).collect();
    assert_eq!(first_poll(g.to_vec_async(y)), want);

    let gpu = gpu();
    let words: Vec<u32> = (0..77u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
    let (all, head) = (gpu.upload_u32(&words), gpu.upload_u32(&words[..5]));
    let read = first_poll(gpu.read_many_u32_async(&[&all, &head])).unwrap();
    assert_eq!(read, vec![words.clone(), words[..5].to_vec()]);
}

/// The device twin of `vision::kept_rows` (the token rows of kept patches, M3.5) equals it on
/// random kept lists, also with no kept patch, and clamps an index past the last patch on both
/// backends alike.
#[test]
fn kept_token_rows_on_both_backends_equal_the_host_rows() {
    use clusterclip::model::vision::kept_rows;
    let mut rng = Rng::new(31);
    for (batch, patches, k) in [(3, 9, 4), (7, 196, 98), (2, 16, 0), (1, 4, 4)] {
        let kept = distinct_kept(&mut rng, batch, patches, k);
        let want = kept_rows(&kept, batch, patches).unwrap();
        assert_eq!(want.len(), batch * (1 + k));
        for mut g in [cpu_graph(), gpu_graph()] {
            let stored = g.backend.upload_u32(&kept);
            let rows = g.kept_token_rows(stored, batch, patches).unwrap();
            assert_eq!(g.shape(rows), [batch * (1 + k)]);
            assert_eq!(
                g.to_vec_u32(rows),
                want,
                "{} backend, {batch}x{k} of {patches}",
                g.backend.name()
            );
        }
    }
    // Patch 9 of 9 is past the last: the host refuses it, the device clamps it to 8. A patch
    // kept twice in one image is refused too (twice in two images is fine).
    assert!(
        kept_rows(&[2, 9], 1, 9)
            .unwrap_err()
            .to_string()
            .contains("patch index 9")
    );
    let err = kept_rows(&[2, 5, 7, 7], 2, 9).unwrap_err().to_string();
    assert!(
        err.contains("patch index 7 is kept twice in image 1"),
        "{err}"
    );
    assert!(kept_rows(&[2, 5, 5, 2], 2, 9).is_ok());
    for mut g in [cpu_graph(), gpu_graph()] {
        let stored = g.backend.upload_u32(&[2, 9]);
        let rows = g.kept_token_rows(stored, 1, 9).unwrap();
        assert_eq!(g.to_vec_u32(rows), [0, 3, 9]);
        let stored = g.backend.upload_u32(&[1, 2, 3]);
        let err = g.kept_token_rows(stored, 2, 9).unwrap_err().to_string();
        assert!(
            err.starts_with("kept_token_rows:") && err.contains("3 kept"),
            "{err}"
        );
    }
}

/// `k` distinct random patches of `patches` per image, ascending, as a mask keeps them.
fn distinct_kept(rng: &mut Rng, batch: usize, patches: usize, k: usize) -> Vec<u32> {
    (0..batch)
        .flat_map(|_| {
            let mut order: Vec<u32> = (0..patches as u32).collect();
            for i in (1..patches).rev() {
                order.swap(i, rng.below(i as u32 + 1) as usize);
            }
            let mut chosen = order[..k].to_vec();
            chosen.sort_unstable();
            chosen
        })
        .collect()
}

/// A gather whose indices name no row twice (kept tokens, pooled rows) scatters its gradient
/// back without the CSR: equal to the reference on both backends, rows of 4n values (vec4) and
/// not, with rows left out getting zero gradient.
#[test]
fn distinct_gather_matches_cpu_and_gradchecks() {
    let mut rng = Rng::new(33);
    for (rows, cols) in [(40, 12), (40, 7), (300, 64)] {
        let picked: Vec<u32> = distinct_kept(&mut rng, 1, rows, rows / 2);
        let n = picked.len();
        let inputs = vec![(rng.vec(rows * cols), vec![rows, cols])];
        compare_backends(
            &format!("gather_distinct_rows {rows}x{cols}"),
            &inputs,
            |g, v| {
                let idx = g.indices(&picked, &[n]).unwrap();
                g.gather_distinct_rows(v[0], idx).unwrap()
            },
            1e-6,
        );
    }
    let inputs = vec![(rng.vec(6 * 3), vec![6, 3])];
    gradcheck(
        "gather_distinct_rows",
        &inputs,
        |g, v| {
            let idx = g.indices(&[4, 0, 2], &[3]).unwrap();
            g.gather_distinct_rows(v[0], idx).unwrap()
        },
        1e-2,
    );
}
