//! Dispatch plans (src/gpu/plan.rs): a recording made once at the largest count replays, with
//! the count given on the device, exactly what a recording at that count computes; the `pick`
//! kernel matches its CPU twin.

mod common;

use clusterclip::gpu::{Gpu, plan_cpu};
use clusterclip::graph::{Backend, Graph, Storage};
use common::*;

const CAP: usize = 7;
const INNER: usize = 8;

/// softmax(a · b) with a [k, INNER] and b [INNER, k] read from the front of `a` and `b`: the
/// matmul's and the softmax's shapes, grids and vec4 fit all change with k.
fn record(g: &mut Graph, a: &Storage, b: &Storage, k: usize) -> Storage {
    let view = |s: &Storage, len| Storage::Gpu(s.gpu().view(0, len));
    let a = g
        .from_storage(view(a, k * INNER), &[k, INNER], false)
        .unwrap();
    let b = g
        .from_storage(view(b, INNER * k), &[INNER, k], false)
        .unwrap();
    let scores = g.matmul(a, b).unwrap();
    let p = g.softmax(scores, 0.5, false).unwrap();
    g.storage(p).clone()
}

fn plan_for(gpu: &std::sync::Arc<Gpu>, a: &Storage, b: &Storage) -> clusterclip::gpu::DispatchPlan {
    let backend = Backend::Gpu(gpu.clone());
    gpu.build_plan(1..=CAP, |k| {
        let mut g = Graph::new(backend.clone());
        record(&mut g, a, b, k);
        Ok(())
    })
    .unwrap()
}

#[test]
fn a_plan_replays_every_count_as_a_recording_at_that_count() {
    let gpu = fresh_gpu();
    let backend = Backend::Gpu(gpu.clone());
    let mut rng = Rng::new(3);
    let a = backend.upload(&rng.vec(CAP * INNER));
    let b = backend.upload(&rng.vec(INNER * CAP));
    let plan = std::sync::Arc::new(plan_for(&gpu, &a, &b));
    assert_eq!(plan.counts, 1..=CAP);
    assert!(
        plan.dynamic_dispatches() >= 2,
        "{}",
        plan.dynamic_dispatches()
    );
    // k = 4 takes the vec4 softmax and 1..3 do not: the site is held to the scalar form.
    assert!(plan.forced_sites() >= 1);
    for k in [4, 1, CAP, 2, 5] {
        let count = gpu.upload_u32(&[k as u32]);
        gpu.begin_plan(&plan, &count);
        let mut g = Graph::new(backend.clone());
        let replayed = record(&mut g, &a, &b, CAP);
        gpu.end_plan().unwrap();
        let replayed = gpu.read_f32(replayed.gpu()).unwrap()[..k * k].to_vec();
        let mut g = Graph::new(backend.clone());
        let direct = record(&mut g, &a, &b, k);
        let direct = gpu.read_f32(direct.gpu()).unwrap();
        assert_eq!(direct.len(), k * k);
        let worst = replayed
            .iter()
            .zip(&direct)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "k = {k}: replay differs by {worst}");

        // The picked params and grids are the CPU twin's, for this count.
        let (table, entries, row_words) = plan.host_table();
        let (params, groups) = plan.read_picked(&gpu).unwrap();
        let expected = plan_cpu::pick(table, entries, row_words, (1, CAP), k);
        assert_eq!((params, groups), expected, "k = {k}");
    }
    // A count past the range is clamped to it.
    let count = gpu.upload_u32(&[99]);
    gpu.begin_plan(&plan, &count);
    let mut g = Graph::new(backend.clone());
    record(&mut g, &a, &b, CAP);
    gpu.end_plan().unwrap();
    let (table, entries, row_words) = plan.host_table();
    let picked = plan.read_picked(&gpu).unwrap();
    assert_eq!(
        picked,
        plan_cpu::pick(table, entries, row_words, (1, CAP), CAP)
    );
}

/// A recording that leaves its plan early, or records another kernel, is refused.
#[test]
fn a_recording_that_strays_from_its_plan_is_refused() {
    let gpu = fresh_gpu();
    let backend = Backend::Gpu(gpu.clone());
    let mut rng = Rng::new(4);
    let a = backend.upload(&rng.vec(CAP * INNER));
    let b = backend.upload(&rng.vec(INNER * CAP));
    let plan = std::sync::Arc::new(plan_for(&gpu, &a, &b));
    let count = gpu.upload_u32(&[3]);
    gpu.begin_plan(&plan, &count);
    let err = gpu.end_plan().unwrap_err();
    assert!(
        err.contains(&format!("0 of its plan's {}", plan.dispatches())),
        "{err}"
    );
    // A read while recording dry is a bug in the recording, not a silent wrong plan; the
    // device records normally afterwards.
    let read_in_plan = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gpu.build_plan(1..=2, |_| {
            gpu.read_f32(a.gpu()).map(drop).map_err(|e| e.to_string())
        })
    }));
    assert!(read_in_plan.is_err());
    let back = gpu.read_f32(a.gpu()).unwrap();
    assert_eq!(back.len(), CAP * INNER);
    // A count range with no count is an error, not an empty plan.
    let (first, last) = (3, 2);
    let empty = gpu.build_plan(first..=last, |_| Ok(())).err().unwrap();
    assert!(empty.contains("no count"), "{empty}");
}
