//! `bench step` under `mpirun` (issue 14): one rank alone first, while the others wait asleep,
//! then every rank on its own batch as one data-parallel step. Per step: compute, time in the
//! feature all-gather and in the gradient all-reduce (waits for slower ranks included), and
//! the scaling efficiency against the rank alone at the same batch per rank (weak scaling).

use std::rc::Rc;
use std::time::Instant;

use crate::masking::MaskRng;
use crate::model::{ClipInputs, Input};
use crate::train::mask_step::{StepMask, compute_mask_on_ranks};
use crate::train::ranks::{OneProcess, Ranks};
use crate::train::step::DataParallel;
use crate::train::{AdamWConfig, Trainer};

use super::CliResult;
use super::bench_model::{BenchSetup, StepArgs, bench_strategy, median, synthetic_batch};

pub fn run_step_on_ranks(args: StepArgs, ranks: Rc<dyn Ranks>) -> CliResult {
    if args.versus.is_some() || args.profile {
        return Err("--versus and --profile time one process: run them without mpirun".into());
    }
    let (rank, size, batch) = (ranks.rank(), ranks.size(), args.batch_size);
    let setup = BenchSetup::new(
        &args.preset,
        &args.gpu,
        batch,
        args.repeats,
        Some(ranks.local_rank()),
    )?;
    let BenchSetup {
        config,
        gpu,
        backend,
        clip,
        tokens,
        ..
    } = setup;
    // Rank 0's batch is the one-process benchmark's; the others draw their own.
    let (images, _) = synthetic_batch(&config, batch, rank as u64);
    // Calibrated on rank 0's batch everywhere: one threshold for the run.
    let strategy = bench_strategy(&args.mask, &synthetic_batch(&config, batch, 0).0, &config)?;
    let mut trainer = Trainer::new(clip, backend.clone(), AdamWConfig::default());
    let step = |trainer: &mut Trainer,
                i: u32,
                ranks: &dyn Ranks|
     -> Result<f64, Box<dyn std::error::Error>> {
        let start = Instant::now();
        let rng = MaskRng::new(0, i).from_image((ranks.rank() * batch) as u32);
        let pixels = backend.upload(&images);
        let mask = compute_mask_on_ranks(
            &trainer.clip,
            &backend,
            &strategy,
            (&pixels, batch),
            rng,
            0.5,
            ranks,
        )?;
        let inputs = ClipInputs {
            images: Input::Stored(pixels),
            tokens: &tokens,
            batch,
            kept: mask.as_ref().map(StepMask::kept),
        };
        trainer.step(std::slice::from_ref(&inputs), 1e-4, false)?;
        gpu.sync();
        Ok(start.elapsed().as_secs_f64())
    };
    let repeats = args.repeats.max(1) as u32;
    // One rank alone (a warm-up step first), as one process would train.
    let mut alone = Vec::new();
    if rank == 0 {
        for i in 0..=repeats {
            let seconds = step(&mut trainer, i, &OneProcess)?;
            if i > 0 {
                alone.push(seconds);
            }
        }
    }
    ranks.barrier();
    trainer.parallel = Some(DataParallel {
        ranks: ranks.clone(),
        gather_with_grad: false,
        local_loss: false,
    });
    step(&mut trainer, 0, &*ranks)?;
    ranks.take_times();
    let (mut walls, mut gathers, mut reduces) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=repeats {
        walls.push(step(&mut trainer, i, &*ranks)?);
        let times = ranks.take_times();
        gathers.push(times.gather);
        reduces.push(times.reduce);
    }
    gpu.check_errors()?;
    if rank != 0 {
        return Ok(());
    }
    let (wall, gather, reduce, one) = (
        median(walls),
        median(gathers),
        median(reduces),
        median(alone),
    );
    let compute = wall - gather - reduce;
    let efficiency = one / wall;
    let global = batch * size;
    if args.json {
        let out = serde_json::json!({
            "preset": args.preset, "batch_size": batch, "ranks": size, "mask": strategy.name(),
            "seconds_per_step": wall, "images_per_s": global as f64 / wall,
            "compute_seconds": compute, "all_gather_seconds": gather,
            "all_reduce_seconds": reduce, "communication_share": (gather + reduce) / wall,
            "one_rank_seconds_per_step": one, "scaling_efficiency": efficiency,
            "adapter": gpu.info.name,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "{} batch {batch} per rank × {size} ranks (global {global}) on {}, mask {}, medians of {} steps:",
        args.preset,
        gpu.describe(),
        strategy.name(),
        repeats
    );
    println!(
        "  data-parallel step: {wall:.3} s ({:.1} images/s): compute {compute:.3} s, all-gather \
         {gather:.3} s, all-reduce {reduce:.3} s ({:.1}% in collectives)",
        global as f64 / wall,
        100.0 * (gather + reduce) / wall
    );
    println!(
        "  one rank alone: {one:.3} s per step of {batch} ({:.1} images/s)",
        batch as f64 / one
    );
    println!(
        "  scaling efficiency (one rank's step / the data-parallel step, same batch per rank): {:.0}%",
        100.0 * efficiency
    );
    Ok(())
}
