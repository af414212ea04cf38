//! `clusterclip bench tower` and `bench step`: images/s of the image and text towers'
//! forward+backward, and of whole training steps by masking strategy, after warm-up, medians
//! of repeated runs, waiting for the device.

use std::time::Instant;

use crate::data::shapes;
use crate::graph::{Backend, Graph};
use crate::masking::{MaskFlags, MaskRng, MaskStrategy, calibrate_on_images};
use crate::model::{Clip, ClipConfig, ClipInputs, Input, text, vision};
use crate::train::mask_step::{MaskRatio, StepMask, compute_mask, compute_mask_counted};
use crate::train::{AdamWConfig, Trainer};

use super::{CliResult, GpuArgs};

#[derive(clap::Args)]
pub struct TowerArgs {
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Patches kept per image (the masked image tower); all when absent.
    #[arg(long)]
    pub keep: Option<usize>,
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

#[derive(clap::Args)]
pub struct StepArgs {
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[command(flatten)]
    pub mask: MaskFlags,
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// A second strategy timed in the same run, its steps interleaved with --mask's (A B A B …)
    /// so that a noisy machine slows both alike; the same mask flags apply. Prints both and
    /// the ratio of their medians: `--mask cluster --min-mask-ratio 0.5 --max-mask-ratio 0.5
    /// --versus random` compares the two at equal compute (M7).
    #[arg(long, value_name = "STRATEGY")]
    pub versus: Option<String>,
    /// After timing, run one more step with every kernel submitted and timed on its own and
    /// print where the step's time goes (slowest kernels first).
    #[arg(long)]
    pub profile: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Matmul FLOPs of one tower's forward on `tokens` tokens per sequence (the GEMMs dominate).
fn tower_forward_flops(batch: usize, tokens: usize, width: usize, layers: usize) -> f64 {
    let (b, t, w) = (batch as f64, tokens as f64, width as f64);
    layers as f64 * b * (24.0 * t * w * w + 4.0 * t * t * w)
}

/// Builtin-shapes images and captions: realistic structure for cluster masking.
pub(super) fn synthetic_batch(
    config: &ClipConfig,
    batch: usize,
    seed: u64,
) -> (Vec<f32>, Vec<u32>) {
    let size = config.vision.image_size;
    let tokenizer = crate::data::tokenizer::Tokenizer::shared();
    let mut images = vec![0f32; batch * 3 * size * size];
    let mut tokens = Vec::with_capacity(batch * config.text.context_length);
    for i in 0..batch {
        let sample = shapes::train_sample(seed, i as u64, size);
        let view = crate::data::image_ops::RgbView {
            rgb: &sample.rgb,
            width: size,
            height: size,
        };
        crate::data::image_ops::eval_transform(
            view,
            size,
            &mut images[i * 3 * size * size..(i + 1) * 3 * size * size],
        );
        tokens.extend(tokenizer.encode(
            &sample.caption,
            config.text.context_length,
            config.text.vocab_size,
        ));
    }
    (images, tokens)
}

/// What every model benchmark starts from: the preset's model (seed 0) on the chosen GPU and a
/// builtin-shapes batch.
pub(super) struct BenchSetup {
    pub(super) config: ClipConfig,
    pub(super) gpu: std::sync::Arc<crate::gpu::Gpu>,
    pub(super) backend: Backend,
    pub(super) clip: Clip,
    pub(super) images: Vec<f32>,
    pub(super) tokens: Vec<u32>,
}

impl BenchSetup {
    /// The preset's model and a synthetic batch on the adapter `gpu` picks (the `local_rank`-th
    /// of its kind for one of several ranks).
    pub(super) fn new(
        preset: &str,
        gpu: &GpuArgs,
        batch: usize,
        repeats: usize,
        local_rank: Option<usize>,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        super::bench::check_repeats(repeats)?;
        let config = ClipConfig::preset(preset)?;
        let mut options = gpu.options()?;
        options.local_rank = local_rank;
        let gpu = crate::gpu::Gpu::new(&options)?;
        // Before any wgpu call: a batch past the device's bindings is a validation error there.
        let max_batch = config.largest_batch_within(gpu.binding_limit_words());
        if !(1..=max_batch).contains(&batch) {
            return Err(format!(
                "--batch-size {batch} is outside 1..={max_batch} (the most that fits this GPU's \
                 largest storage binding with preset {preset})"
            )
            .into());
        }
        let backend = Backend::Gpu(gpu.clone());
        let clip = Clip::new(config.clone(), &backend, 0)?;
        let (images, tokens) = synthetic_batch(&config, batch, 0);
        Ok(BenchSetup {
            config,
            gpu,
            backend,
            clip,
            images,
            tokens,
        })
    }
}

pub fn run_tower(args: TowerArgs) -> CliResult {
    let BenchSetup {
        config,
        gpu,
        backend,
        clip,
        images,
        tokens,
    } = BenchSetup::new(&args.preset, &args.gpu, args.batch_size, args.repeats, None)?;
    let v = &config.vision;
    let patches = v.patches();
    if args.keep.is_some_and(|k| !(1..=patches).contains(&k)) {
        return Err(format!(
            "--keep {} is outside 1..={patches} (the patches of preset {})",
            args.keep.unwrap_or_default(),
            args.preset
        )
        .into());
    }
    let keep = args.keep.unwrap_or(patches);
    let kept: Vec<u32> = (0..args.batch_size).flat_map(|_| 0..keep as u32).collect();
    let image_pass = || -> Result<(), Box<dyn std::error::Error>> {
        let mut g = Graph::new(backend.clone());
        let params = clip.params.bind(&mut g);
        let x = g.constant(&images, &[args.batch_size, 3, v.image_size, v.image_size])?;
        let t = vision::embed(&mut g, &params, v, x)?;
        let f = vision::encode(
            &mut g,
            &params,
            v,
            config.activation,
            t,
            args.keep.map(|_| Input::Host(&kept)).as_ref(),
        )?;
        let ones = vec![1.0; g.numel(f)];
        g.backward_from(f, &ones)?;
        Ok(())
    };
    let text_pass = || -> Result<(), Box<dyn std::error::Error>> {
        let mut g = Graph::new(backend.clone());
        let params = clip.params.bind(&mut g);
        let f = text::encode(&mut g, &params, &config.text, config.activation, &tokens)?;
        let ones = vec![1.0; g.numel(f)];
        g.backward_from(f, &ones)?;
        Ok(())
    };
    let time = |pass: &dyn Fn() -> Result<(), Box<dyn std::error::Error>>| -> Result<f64, Box<dyn std::error::Error>> {
        pass()?;
        gpu.sync();
        let mut runs = Vec::new();
        for _ in 0..args.repeats.max(1) {
            let start = Instant::now();
            pass()?;
            gpu.sync();
            runs.push(start.elapsed().as_secs_f64());
        }
        Ok(median(runs))
    };
    let image_s = time(&image_pass)?;
    let text_s = time(&text_pass)?;
    gpu.check_errors()?;
    let image_flops = 3.0 * tower_forward_flops(args.batch_size, keep + 1, v.width, v.layers);
    let text_flops = 3.0
        * tower_forward_flops(
            args.batch_size,
            config.text.context_length,
            config.text.width,
            config.text.layers,
        );
    let b = args.batch_size as f64;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "preset": args.preset, "batch_size": args.batch_size, "kept_patches": keep,
                "adapter": gpu.info.name, "backend": format!("{:?}", gpu.info.backend),
                "image": {"seconds": image_s, "images_per_s": b / image_s, "gflops": image_flops / image_s / 1e9},
                "text": {"seconds": text_s, "texts_per_s": b / text_s, "gflops": text_flops / text_s / 1e9},
            })
        );
    } else {
        println!(
            "{} on {}: batch {}, {keep} of {patches} patches kept",
            args.preset,
            gpu.describe(),
            args.batch_size
        );
        println!(
            "  image tower fwd+bwd: {:.1} ms, {:.1} images/s, {:.1} GFLOP/s",
            image_s * 1e3,
            b / image_s,
            image_flops / image_s / 1e9
        );
        println!(
            "  text tower  fwd+bwd: {:.1} ms, {:.1} texts/s, {:.1} GFLOP/s",
            text_s * 1e3,
            b / text_s,
            text_flops / text_s / 1e9
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct MaskBenchArgs {
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[command(flatten)]
    pub mask: MaskFlags,
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

/// Cluster-mask kernels (and the read of k and the kept indices, as the training step does)
/// against the image tower's forward+backward on the same batch.
pub fn run_mask(args: MaskBenchArgs) -> CliResult {
    let BenchSetup {
        config,
        gpu,
        backend,
        clip,
        images,
        ..
    } = BenchSetup::new(&args.preset, &args.gpu, args.batch_size, args.repeats, None)?;
    let v = &config.vision;
    let strategy = bench_strategy(&args.mask, &images, &config)?;
    let mut ratio = 0.0;
    let mut mask_pass = |step: u32| -> Result<f64, Box<dyn std::error::Error>> {
        gpu.sync();
        let start = Instant::now();
        let pixels = backend.upload(&images);
        let mask = compute_mask(
            &clip,
            &backend,
            &strategy,
            &pixels,
            args.batch_size,
            MaskRng::new(0, step),
            0.0,
        )?;
        ratio = mask.and_then(|m| m.mask_ratio()).map_or(0.0, f64::from);
        Ok(start.elapsed().as_secs_f64())
    };
    mask_pass(0)?;
    let mask_s = median(
        (1..=args.repeats.max(1) as u32)
            .map(&mut mask_pass)
            .collect::<Result<_, _>>()?,
    );
    let tower_pass = || -> Result<f64, Box<dyn std::error::Error>> {
        let start = Instant::now();
        let mut g = Graph::new(backend.clone());
        let params = clip.params.bind(&mut g);
        let x = g.constant(&images, &[args.batch_size, 3, v.image_size, v.image_size])?;
        let t = vision::embed(&mut g, &params, v, x)?;
        let f = vision::encode(&mut g, &params, v, config.activation, t, None)?;
        let ones = vec![1.0; g.numel(f)];
        g.backward_from(f, &ones)?;
        gpu.sync();
        Ok(start.elapsed().as_secs_f64())
    };
    tower_pass()?;
    let tower_s = median(
        (0..args.repeats.max(1))
            .map(|_| tower_pass())
            .collect::<Result<_, _>>()?,
    );
    gpu.check_errors()?;
    let share = mask_s / tower_s;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "preset": args.preset, "batch_size": args.batch_size, "mask": strategy.name(),
                "adapter": gpu.info.name, "backend": format!("{:?}", gpu.info.backend),
                "mask_seconds": mask_s, "tower_seconds": tower_s, "mask_share": share, "mask_ratio": ratio,
            })
        );
    } else {
        println!(
            "{} batch {} on {}: {} mask {:.1} ms, image tower fwd+bwd {:.1} ms, mask = {:.2}% of the tower (mask ratio {:.3})",
            args.preset,
            args.batch_size,
            gpu.describe(),
            strategy.name(),
            mask_s * 1e3,
            tower_s * 1e3,
            share * 100.0,
            ratio
        );
    }
    Ok(())
}

/// The strategy the mask flags ask for; `--threshold auto` is calibrated on the benchmark's
/// own batch (M3.6).
pub(super) fn bench_strategy(
    flags: &MaskFlags,
    images: &[f32],
    config: &ClipConfig,
) -> Result<MaskStrategy, Box<dyn std::error::Error>> {
    let plan = flags.plan()?;
    let (Some(target), Some(cluster)) = (plan.target_mask_ratio, plan.strategy.cluster()) else {
        return Ok(plan.strategy);
    };
    let v = &config.vision;
    let geometry = (v.image_size, v.image_size, v.patch_size);
    let calibration = calibrate_on_images(&[images], geometry, cluster, target, 0)?;
    Ok(plan.strategy.with_threshold(calibration.threshold))
}

/// Medians of one strategy's timed steps.
struct StepTimes {
    name: &'static str,
    /// Whole step: mask, forward, loss, backward, AdamW, waited for.
    seconds: f64,
    /// The mask alone, up to its kept indices on the host (what the step waits for).
    mask_seconds: f64,
    mask_ratio: f64,
}

impl StepTimes {
    fn json(&self, batch: usize) -> serde_json::Value {
        serde_json::json!({
            "mask": self.name, "seconds_per_step": self.seconds,
            "images_per_s": batch as f64 / self.seconds, "mask_seconds": self.mask_seconds,
            "mask_share": self.mask_seconds / self.seconds, "mask_ratio": self.mask_ratio,
        })
    }

    fn line(&self, batch: usize) -> String {
        format!(
            "mask {}: {:.3} s/step, {:.1} images/s, mask {:.1} ms = {:.2}% of the step, realised mask ratio {:.3}",
            self.name,
            self.seconds,
            batch as f64 / self.seconds,
            self.mask_seconds * 1e3,
            100.0 * self.mask_seconds / self.seconds,
            self.mask_ratio
        )
    }
}

pub fn run_step(args: StepArgs) -> CliResult {
    args.mask.plan()?;
    let ranks = crate::train::ranks::ranks_of_launch()?;
    if ranks.size() > 1 {
        return super::bench_ranks::run_step_on_ranks(args, ranks.into());
    }
    let versus_flags = args.versus.as_ref().map(|name| MaskFlags {
        mask: name.clone(),
        ..args.mask.clone()
    });
    if let Some(flags) = &versus_flags {
        flags.plan().map_err(|e| format!("--versus: {e}"))?;
    }
    let BenchSetup {
        config,
        gpu,
        backend,
        clip,
        images,
        tokens,
        ..
    } = BenchSetup::new(&args.preset, &args.gpu, args.batch_size, args.repeats, None)?;
    let mut strategies = vec![bench_strategy(&args.mask, &images, &config)?];
    if let Some(flags) = &versus_flags {
        strategies.push(bench_strategy(flags, &images, &config)?);
    }
    let mut trainer = Trainer::new(clip, backend.clone(), AdamWConfig::default());
    // (step seconds, mask seconds, mask ratio) of one step of strategy `which`; a ratio whose
    // k stayed on the device is read after the step's counts are taken.
    let mut step =
        |which: usize, i: u32| -> Result<(f64, f64, MaskRatio), Box<dyn std::error::Error>> {
            let start = Instant::now();
            // As the training loop: the images uploaded once, for the mask and the towers.
            let pixels = backend.upload(&images);
            let mask = compute_mask_counted(
                &trainer.clip,
                &backend,
                &strategies[which],
                &pixels,
                args.batch_size,
                MaskRng::new(0, i),
                0.5,
            )?;
            let mask_seconds = start.elapsed().as_secs_f64();
            let inputs = ClipInputs {
                images: Input::Stored(pixels),
                tokens: &tokens,
                batch: args.batch_size,
                kept: mask.as_ref().map(StepMask::kept),
            };
            match mask.as_ref().and_then(StepMask::device_keep) {
                Some(keep) => trainer.step_counted(&inputs, keep, 1e-4, false)?,
                None => trainer.step(std::slice::from_ref(&inputs), 1e-4, false)?,
            };
            gpu.sync();
            let ratio = mask.as_ref().map_or(MaskRatio::NONE, StepMask::ratio);
            Ok((start.elapsed().as_secs_f64(), mask_seconds, ratio))
        };
    let resolve = |ratio: MaskRatio| -> Result<f64, Box<dyn std::error::Error>> {
        Ok(match ratio {
            MaskRatio::Known(r) => r,
            MaskRatio::OnDevice { count, patches } => {
                MaskRatio::of_count(gpu.read_u32(&count)?[0], patches)
            }
        })
    };
    let count = strategies.len();
    for which in 0..count {
        let _ = step(which, 0)?; // warm-up: kernels compiled, pool filled, plans built
    }
    let mut runs = vec![Vec::new(); count];
    // Submits and host reads of the first strategy's last timed step (uninstrumented: profiling
    // submits per kernel); the harness's closing sync is the step's one submit when nothing read
    // before it.
    let mut per_step = (0, 0, 0);
    for i in 1..=args.repeats.max(1) as u32 {
        for (which, times) in runs.iter_mut().enumerate() {
            let counts = (gpu.submit_count(), gpu.read_count(), gpu.uploaded_bytes());
            let (seconds, mask_seconds, ratio) = step(which, i)?;
            if which == 0 {
                per_step = (
                    gpu.submit_count() - counts.0,
                    gpu.read_count() - counts.1,
                    gpu.uploaded_bytes() - counts.2,
                );
            }
            times.push((seconds, mask_seconds, resolve(ratio)?));
        }
    }
    if args.profile {
        gpu.set_profiling(true);
        let _ = step(0, args.repeats as u32 + 1)?;
        let rows = gpu.profile();
        gpu.set_profiling(false);
        print_profile(&rows);
    }
    gpu.check_errors()?;
    let times: Vec<StepTimes> = runs
        .iter()
        .zip(&strategies)
        .map(|(steps, strategy)| StepTimes {
            name: strategy.name(),
            seconds: median(steps.iter().map(|s| s.0).collect()),
            mask_seconds: median(steps.iter().map(|s| s.1).collect()),
            mask_ratio: steps.iter().map(|s| s.2).sum::<f64>() / steps.len() as f64,
        })
        .collect();
    let batch = args.batch_size;
    let pool = gpu.pool_stats();
    if args.json {
        let mut out = times[0].json(batch);
        out["pool_peak_bytes"] = pool.peak_bytes.into();
        out["pool_peak_buffers"] = pool.peak_buffers.into();
        out["submits_per_step"] = per_step.0.into();
        out["host_reads_per_step"] = per_step.1.into();
        out["uploaded_bytes_per_step"] = per_step.2.into();
        out["preset"] = args.preset.clone().into();
        out["batch_size"] = batch.into();
        out["adapter"] = gpu.info.name.clone().into();
        out["backend"] = format!("{:?}", gpu.info.backend).into();
        if let Some(versus) = times.get(1) {
            out["versus"] = versus.json(batch);
            out["ratio"] = (times[0].seconds / versus.seconds).into();
        }
        println!("{out}");
    } else {
        println!(
            "{} batch {} on {}, medians of {} steps:",
            args.preset,
            batch,
            gpu.describe(),
            args.repeats
        );
        for t in &times {
            println!("  {}", t.line(batch));
        }
        for plan in trainer.plan_summaries() {
            println!("  dispatch plan (unpinned k stays on the GPU): {plan}");
        }
        if let [a, b] = &times[..] {
            println!(
                "  {} / {} step time: {:.3} (interleaved in one run)",
                a.name,
                b.name,
                a.seconds / b.seconds
            );
        }
        println!("  {}", pool_line(&pool));
        println!(
            "  per step ({}): {} submits, {} host reads, {:.1} KiB uploaded",
            times[0].name,
            per_step.0,
            per_step.1,
            per_step.2 as f64 / 1024.0
        );
    }
    Ok(())
}

/// The per-kernel table of `--profile`: total ms, share and dispatch count.
pub fn print_profile(rows: &[(String, crate::gpu::KernelTime)]) {
    let total: f64 = rows.iter().map(|(_, t)| t.seconds).sum();
    eprintln!("{:>10} {:>6} {:>6}  kernel", "ms", "share", "calls");
    for (name, time) in rows {
        eprintln!(
            "{:>10.1} {:>5.1}% {:>6}  {name}",
            time.seconds * 1e3,
            100.0 * time.seconds / total.max(1e-12),
            time.dispatches
        );
    }
    eprintln!(
        "{:>10.1} {:>6} {:>6}  total (kernels run one by one)",
        total * 1e3,
        "",
        ""
    );
}

/// The buffer pool's high-water mark, for `bench step`.
fn pool_line(pool: &crate::gpu::PoolStats) -> String {
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    format!(
        "buffer pool: peak {:.1} MiB in {} buffers (held at the end: {:.1} MiB in {}; {} created)",
        mib(pool.peak_bytes),
        pool.peak_buffers,
        mib(pool.bytes_held()),
        pool.buffers_held(),
        pool.created
    )
}
