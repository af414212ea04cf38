//! `clusterclip verify-openclip PREFIX`: checks this implementation against an OpenCLIP
//! reference export (features, loss, every gradient; unmasked and masked; optionally the
//! AdamW trajectory) and exits non-zero past the tolerance.

use std::path::PathBuf;

use crate::graph::Backend;
use crate::model::reference::{Check, Reference, rel_err};
use crate::model::{ClipInputs, params::ParamStore};
use crate::train::{AdamWConfig, Trainer};

use super::{CliResult, GpuArgs};

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Path prefix of PREFIX.safetensors and PREFIX.json.
    pub prefix: PathBuf,
    /// Also replay the reference's AdamW steps and compare losses and final parameters.
    #[arg(long)]
    pub trajectory: bool,
    /// Run on the CPU reference backend instead of the GPU.
    #[arg(long)]
    pub cpu: bool,
    /// Largest relative error allowed for features, loss, gradients and trajectory losses.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
    /// Largest relative error allowed for the parameters after the trajectory.
    #[arg(long, default_value_t = 1e-3)]
    pub param_tolerance: f64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

/// Every check of a verification run.
pub fn verify(
    reference: &Reference,
    backend: &Backend,
    args: &VerifyArgs,
) -> Result<Vec<Check>, String> {
    let mut checks = reference.check_forward_backward(backend, false, args.tolerance)?;
    checks.extend(reference.check_forward_backward(backend, true, args.tolerance)?);
    if args.trajectory {
        checks.extend(trajectory(reference, backend, args)?);
    }
    Ok(checks)
}

fn number(json: &serde_json::Value, path: &[&str]) -> Result<f64, String> {
    let mut cur = json;
    for key in path {
        cur = cur
            .get(*key)
            .ok_or_else(|| format!("config field {} is missing", path.join(".")))?;
    }
    cur.as_f64()
        .ok_or_else(|| format!("config field {} is not a number", path.join(".")))
}

/// Replays the reference's AdamW steps (constant lr, the loss recorded before each step).
fn trajectory(
    reference: &Reference,
    backend: &Backend,
    args: &VerifyArgs,
) -> Result<Vec<Check>, String> {
    let json = &reference.json;
    let betas = json
        .get("adamw")
        .and_then(|a| a.get("betas"))
        .and_then(|b| b.as_array())
        .ok_or("config field adamw.betas is missing")?;
    let beta = |i: usize| {
        betas
            .get(i)
            .and_then(|b| b.as_f64())
            .ok_or("config field adamw.betas needs two numbers")
    };
    let config = AdamWConfig {
        beta1: beta(0)? as f32,
        beta2: beta(1)? as f32,
        eps: number(json, &["adamw", "eps"])? as f32,
        weight_decay: number(json, &["adamw", "weight_decay"])? as f32,
        grad_clip_norm: None,
    };
    let lr = number(json, &["adamw", "lr"])? as f32;
    let file = &reference.file;
    let (_, want_losses) = file.f32("trajectory.losses")?;
    let (_, images) = file.f32("input.images")?;
    let (text_shape, tokens) = file.u32("input.text")?;
    let inputs = ClipInputs::host(&images, &tokens, text_shape[0], None);
    let mut trainer = Trainer::new(reference.model(backend)?, backend.clone(), config);
    let mut losses = Vec::new();
    for _ in 0..want_losses.len() {
        let report = trainer
            .step(std::slice::from_ref(&inputs), lr, true)
            .map_err(|e| e.to_string())?;
        losses.push(report.loss.unwrap_or(f32::NAN));
    }
    let mut checks: Vec<Check> = losses
        .iter()
        .zip(&want_losses)
        .enumerate()
        .map(|(i, (ours, want))| Check {
            name: format!("trajectory.losses[{i}]"),
            rel_err: rel_err(&[*ours], &[*want]),
            limit: args.tolerance,
        })
        .collect();
    checks.extend(param_checks(
        &trainer.clip.params,
        reference,
        backend,
        args.param_tolerance,
    )?);
    Ok(checks)
}

fn param_checks(
    params: &ParamStore,
    reference: &Reference,
    backend: &Backend,
    limit: f64,
) -> Result<Vec<Check>, String> {
    let g = crate::graph::Graph::new(backend.clone());
    params
        .to_host(&g)
        .into_iter()
        .map(|(name, _, values)| {
            let (_, want) = reference.file.f32(&format!("trajectory.param.{name}"))?;
            Ok(Check {
                name: format!("trajectory.param.{name}"),
                rel_err: rel_err(&values, &want),
                limit,
            })
        })
        .collect()
}

pub fn run(args: VerifyArgs) -> CliResult {
    let reference = Reference::load(&args.prefix)?;
    let backend = if args.cpu {
        Backend::Cpu
    } else {
        Backend::Gpu(crate::gpu::Gpu::new(&args.gpu.options()?)?)
    };
    let checks = verify(&reference, &backend, &args)?;
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.passed()).collect();
    let worst = checks.iter().map(|c| c.rel_err).fold(0.0, f64::max);
    if args.json {
        let list: Vec<serde_json::Value> = checks
            .iter()
            .map(|c| serde_json::json!({"name": c.name, "rel_err": c.rel_err, "limit": c.limit, "passed": c.passed()}))
            .collect();
        let summary = serde_json::json!({
            "backend": match &backend { Backend::Cpu => "cpu".to_string(), Backend::Gpu(gpu) => gpu.describe() },
            "checks": list, "failed": failed.len(), "max_rel_err": worst, "passed": failed.is_empty(),
        });
        println!("{summary}");
    } else {
        for c in &checks {
            println!(
                "{:<70} {:.3e} {}",
                c.name,
                c.rel_err,
                if c.passed() { "ok" } else { "FAIL" }
            );
        }
        println!(
            "{} checks, {} failed, largest relative error {worst:.3e}",
            checks.len(),
            failed.len()
        );
    }
    if !failed.is_empty() {
        return Err(format!(
            "{} of {} checks exceed their tolerance (first: {})",
            failed.len(),
            checks.len(),
            failed[0].name
        )
        .into());
    }
    Ok(())
}
