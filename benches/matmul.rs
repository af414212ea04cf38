//! GFLOP/s of every matmul shape in one ViT-B/16 training step (batch 8: 8 · 197 tokens, width
//! 768, 12 heads of 64), forward and backward, timed like `clusterclip bench matmul`.
//!
//! `cargo bench --bench matmul [-- FILTER]`; the adapter follows `CLUSTERCLIP_BACKEND` /
//! `CLUSTERCLIP_ADAPTER` (use `CLUSTERCLIP_BACKEND=vulkan` for lavapipe).

use clusterclip::cli::bench::time_matmul;
use clusterclip::gpu::{Gpu, GpuOptions};
use clusterclip::ops::matmul::MatmulDims;

const IMAGES: usize = 8;
const TOKENS: usize = 197;
const WIDTH: usize = 768;
const HEADS: usize = 12;
const HEAD_DIM: usize = WIDTH / HEADS;
const MLP: usize = 4 * WIDTH;
const REPEATS: usize = 3;

fn dims(batch: usize, m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> MatmulDims {
    MatmulDims {
        batch,
        m,
        n,
        k,
        trans_a,
        trans_b,
        shared_b: false,
    }
}

/// (name, dims) of each matmul of one block's forward and backward pass.
fn vit_step_shapes() -> Vec<(String, MatmulDims)> {
    let rows = IMAGES * TOKENS;
    let heads = IMAGES * HEADS;
    let mut shapes = Vec::new();
    // Linear layers y = x · Wᵀ (W [out, in]): forward, dX = dY · W, dW = dYᵀ · X.
    for (name, inputs, outputs) in [
        ("qkv", WIDTH, 3 * WIDTH),
        ("out-proj", WIDTH, WIDTH),
        ("mlp-up", WIDTH, MLP),
        ("mlp-down", MLP, WIDTH),
    ] {
        shapes.push((
            format!("{name} forward"),
            dims(1, rows, outputs, inputs, false, true),
        ));
        shapes.push((
            format!("{name} dX"),
            dims(1, rows, inputs, outputs, false, false),
        ));
        shapes.push((
            format!("{name} dW"),
            dims(1, outputs, inputs, rows, true, false),
        ));
    }
    // Attention per head: S = Q·Kᵀ, O = P·V and their gradients.
    // The attention pads the token axis to a multiple of 4 (src/ops/attention.rs).
    let t = TOKENS.next_multiple_of(4);
    shapes.push(("attn Q·Kᵀ".into(), dims(heads, t, t, HEAD_DIM, false, true)));
    shapes.push(("attn P·V".into(), dims(heads, t, HEAD_DIM, t, false, false)));
    shapes.push((
        "attn dP=dO·Vᵀ".into(),
        dims(heads, t, t, HEAD_DIM, false, true),
    ));
    shapes.push((
        "attn dV=Pᵀ·dO".into(),
        dims(heads, t, HEAD_DIM, t, true, false),
    ));
    shapes.push((
        "attn dQ=dS·K".into(),
        dims(heads, t, HEAD_DIM, t, false, false),
    ));
    shapes.push((
        "attn dK=dSᵀ·Q".into(),
        dims(heads, t, HEAD_DIM, t, true, false),
    ));
    shapes
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let options = GpuOptions::from_env().unwrap_or_else(|e| panic!("{e}"));
    let gpu = Gpu::new(&options).unwrap_or_else(|e| panic!("{e}"));
    println!("adapter: {}", gpu.describe());
    println!(
        "{:<18} {:>5} {:>5} {:>5} {:>5} {:>2}{:>2} {:<26} {:>8} {:>9}",
        "shape", "batch", "M", "N", "K", "tA", "tB", "kernel", "GFLOP/s", "ms"
    );
    let (mut flops, mut seconds) = (0.0, 0.0);
    for (name, d) in vit_step_shapes() {
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let t = time_matmul(&gpu, d, REPEATS);
        assert!(
            t.max_abs_error < 1e-3,
            "{name}: differs from the f64 reference by {:.2e}",
            t.max_abs_error
        );
        println!(
            "{:<18} {:>5} {:>5} {:>5} {:>5} {:>2}{:>2} {:<26} {:>8.2} {:>9.3}",
            name,
            d.batch,
            d.m,
            d.n,
            d.k,
            u8::from(d.trans_a),
            u8::from(d.trans_b),
            t.kernel,
            t.gflops,
            t.seconds * 1e3
        );
        flops += d.flops();
        seconds += t.seconds;
    }
    println!(
        "all shapes: {:.1} GFLOP in {:.1} ms per block step, {:.2} GFLOP/s",
        flops / 1e9,
        seconds * 1e3,
        flops / seconds / 1e9
    );
}
