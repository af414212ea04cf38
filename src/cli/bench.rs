//! `clusterclip bench`: times kernels properly (warm-up, several dispatches per submit, waits for
//! the device, median over repetitions). More targets (towers, steps, masking) join the enum.

use std::time::Instant;

use crate::gpu::Gpu;
use crate::graph::Storage;
use crate::ops::matmul::{self, MatmulDims};

use super::{CliResult, GpuArgs};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// GFLOP/s of one (batched) matmul C = op(A)·op(B).
    Matmul(MatmulArgs),
    /// Forward+backward of the image and text towers: images/s and GFLOP/s.
    Tower(super::bench_model::TowerArgs),
    /// Whole training steps (mask, forward, loss, backward, AdamW): images/s by masking.
    Step(super::bench_model::StepArgs),
    /// Cluster-mask kernels against the image tower's forward+backward at the same batch.
    Mask(super::bench_model::MaskBenchArgs),
}

#[derive(clap::Args)]
pub struct MatmulArgs {
    #[arg(long, default_value_t = 1024)]
    pub m: usize,
    #[arg(long, default_value_t = 1024)]
    pub n: usize,
    #[arg(long, default_value_t = 1024)]
    pub k: usize,
    /// A stored as [K, M].
    #[arg(long)]
    pub trans_a: bool,
    /// B stored as [N, K].
    #[arg(long)]
    pub trans_b: bool,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

pub fn run(cmd: BenchCommand) -> CliResult {
    match cmd {
        BenchCommand::Matmul(args) => run_matmul(&args),
        BenchCommand::Tower(args) => super::bench_model::run_tower(args),
        BenchCommand::Step(args) => super::bench_model::run_step(args),
        BenchCommand::Mask(args) => super::bench_model::run_mask(args),
    }
}

/// One repetition should last about this long, so dispatch overhead and timer noise stay small.
const TARGET_REPETITION_SECONDS: f64 = 0.3;
/// Sampled entries of C checked against an f64 product on the host.
const CHECKED_ENTRIES: usize = 64;

/// What `bench matmul` measured.
#[derive(Clone, Debug)]
pub struct MatmulTiming {
    pub dims: MatmulDims,
    pub kernel: String,
    /// Median seconds per matmul.
    pub seconds: f64,
    pub gflops: f64,
    pub dispatches_per_submit: usize,
    /// Largest |GPU - f64 reference| over the sampled entries.
    pub max_abs_error: f64,
}

/// Times `dims` on `gpu`: a warm-up (which also compiles the kernel), then `repeats` submits of
/// enough dispatches to last ~0.3 s each, waiting for the device after each.
pub fn time_matmul(gpu: &Gpu, dims: MatmulDims, repeats: usize) -> MatmulTiming {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    };
    let b_batches = if dims.shared_b { 1 } else { dims.batch };
    let host_a = random(dims.batch * dims.m * dims.k);
    let host_b = random(b_batches * dims.k * dims.n);
    let a = Storage::Gpu(gpu.upload_f32(&host_a));
    let b = Storage::Gpu(gpu.upload_f32(&host_b));
    let c = Storage::Gpu(gpu.alloc(dims.batch * dims.m * dims.n));
    let record = |count: usize| {
        for _ in 0..count {
            matmul::dispatch(gpu, &a, &b, None, &c, dims, false);
        }
    };
    let start = Instant::now();
    record(1);
    gpu.sync();
    let warm_up = start.elapsed().as_secs_f64();
    let got = gpu.read_f32(c.gpu()).unwrap_or_default();
    let max_abs_error = sampled_error(&host_a, &host_b, &got, dims);
    // Second warm-up without compilation, to size the repetitions.
    let start = Instant::now();
    record(1);
    gpu.sync();
    let once = start.elapsed().as_secs_f64().min(warm_up).max(1e-6);
    let per_submit = ((TARGET_REPETITION_SECONDS / once).ceil() as usize).clamp(1, 100);
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            record(per_submit);
            gpu.sync();
            start.elapsed().as_secs_f64() / per_submit as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let seconds = times[times.len() / 2];
    MatmulTiming {
        dims,
        kernel: if gpu.tiled_matmul() {
            "matmul_tiled".into()
        } else {
            matmul::kernel_plan(gpu, &dims)
        },
        seconds,
        gflops: dims.flops() / seconds / 1e9,
        dispatches_per_submit: per_submit,
        max_abs_error,
    }
}

/// Largest error over a fixed sample of C's entries (corners included) against f64 sums.
fn sampled_error(a: &[f32], b: &[f32], c: &[f32], d: MatmulDims) -> f64 {
    if c.len() != d.batch * d.m * d.n {
        return f64::INFINITY;
    }
    let mut worst = 0f64;
    for s in 0..CHECKED_ENTRIES {
        let batch = s % d.batch;
        let (i, j) = match s % 4 {
            0 => (d.m - 1, d.n - 1),
            1 => (0, d.n - 1),
            _ => ((s * 7919) % d.m, (s * 104_729 + 13) % d.n),
        };
        let a = &a[batch * d.m * d.k..];
        let b = if d.shared_b {
            b
        } else {
            &b[batch * d.k * d.n..]
        };
        let want: f64 = (0..d.k)
            .map(|kk| {
                let x = if d.trans_a {
                    a[kk * d.m + i]
                } else {
                    a[i * d.k + kk]
                };
                let y = if d.trans_b {
                    b[j * d.k + kk]
                } else {
                    b[kk * d.n + j]
                };
                x as f64 * y as f64
            })
            .sum();
        let got = c[batch * d.m * d.n + i * d.n + j] as f64;
        let error = (want - got).abs();
        worst = if error.is_nan() {
            f64::INFINITY
        } else {
            worst.max(error)
        };
    }
    worst
}

/// Every benchmark reports a median, so it needs at least one timed run.
pub(super) fn check_repeats(repeats: usize) -> Result<(), String> {
    if repeats == 0 {
        return Err(
            "--repeats must be at least 1 (the median of the timed runs is reported)".into(),
        );
    }
    Ok(())
}

/// Sizes wgpu would refuse with a panic, as one line naming the flags: each operand must fit one
/// storage binding, and the batch one grid dimension (the matmul grid's z).
fn check_matmul_fits(gpu: &Gpu, dims: &MatmulDims) -> Result<(), String> {
    let max_batch = gpu.limits.max_compute_workgroups_per_dimension as usize;
    if dims.batch > max_batch {
        return Err(format!("--batch {} is outside 1..={max_batch}", dims.batch));
    }
    let limit = gpu.binding_limit_words();
    let operands = [
        ("A", "--batch x --m x --k", [dims.batch, dims.m, dims.k]),
        ("B", "--batch x --k x --n", [dims.batch, dims.k, dims.n]),
        ("C", "--batch x --m x --n", [dims.batch, dims.m, dims.n]),
    ];
    for (name, flags, sizes) in operands {
        let words = sizes.iter().try_fold(1usize, |acc, &x| acc.checked_mul(x));
        if words.is_none_or(|w| w > limit) {
            return Err(format!(
                "bench matmul: {name} ({flags} = {}) holds more than the {limit} floats ({} MiB) \
                 of this GPU's largest storage binding; use smaller sizes",
                sizes.map(|x| x.to_string()).join(" x "),
                (limit * 4) >> 20
            ));
        }
    }
    Ok(())
}

fn run_matmul(args: &MatmulArgs) -> CliResult {
    if args.m == 0 || args.n == 0 || args.k == 0 || args.batch == 0 {
        return Err("bench matmul: --m, --n, --k and --batch must be at least 1".into());
    }
    check_repeats(args.repeats)?;
    let gpu = Gpu::new(&args.gpu.options()?)?;
    let dims = MatmulDims {
        batch: args.batch,
        m: args.m,
        n: args.n,
        k: args.k,
        trans_a: args.trans_a,
        trans_b: args.trans_b,
        shared_b: false,
    };
    check_matmul_fits(&gpu, &dims)?;
    let t = time_matmul(&gpu, dims, args.repeats);
    gpu.check_errors()?;
    // Inputs in [-0.5, 0.5): f32 sums of k products stay far below this.
    let tolerance = 1e-5 * (args.k as f64).sqrt().max(1.0) * 10.0;
    if args.json {
        let value = serde_json::json!({
            "op": "matmul",
            "m": dims.m,
            "n": dims.n,
            "k": dims.k,
            "batch": dims.batch,
            "trans_a": dims.trans_a,
            "trans_b": dims.trans_b,
            "kernel": t.kernel,
            "gflops": t.gflops,
            "ms": t.seconds * 1e3,
            "repeats": args.repeats,
            "dispatches_per_submit": t.dispatches_per_submit,
            "max_abs_error": t.max_abs_error,
            "adapter": gpu.info.name,
            "backend": format!("{:?}", gpu.info.backend),
            "driver": format!("{} {}", gpu.info.driver, gpu.info.driver_info),
        });
        println!("{value}");
    } else {
        println!(
            "matmul {}x{}x{}{}{}{}: {:.2} GFLOP/s, {:.3} ms (median of {}, {} dispatches per \
             submit, kernel {}, max error {:.1e}) on {}",
            dims.m,
            dims.n,
            dims.k,
            if dims.batch > 1 {
                format!(" batch {}", dims.batch)
            } else {
                String::new()
            },
            if dims.trans_a { " Aᵀ" } else { "" },
            if dims.trans_b { " Bᵀ" } else { "" },
            t.gflops,
            t.seconds * 1e3,
            args.repeats,
            t.dispatches_per_submit,
            t.kernel,
            t.max_abs_error,
            gpu.describe()
        );
    }
    if t.max_abs_error > tolerance {
        return Err(format!(
            "bench matmul: result differs from the f64 reference by {:.2e} (tolerance {tolerance:.1e})",
            t.max_abs_error
        )
        .into());
    }
    Ok(())
}
