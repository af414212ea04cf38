//! `clusterclip info`: every adapter the backends report, then the chosen one's limits and
//! features as the device was opened with them.

use crate::gpu::{Gpu, adapter_summaries};

use super::{CliResult, GpuArgs};

#[derive(clap::Args)]
pub struct InfoArgs {
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

/// The limits a compute-only trainer cares about, by their WebGPU names.
fn limits_table(limits: &wgpu::Limits) -> Vec<(&'static str, u64)> {
    vec![
        ("maxBufferSize", limits.max_buffer_size),
        (
            "maxStorageBufferBindingSize",
            limits.max_storage_buffer_binding_size,
        ),
        (
            "maxUniformBufferBindingSize",
            limits.max_uniform_buffer_binding_size,
        ),
        (
            "maxStorageBuffersPerShaderStage",
            limits.max_storage_buffers_per_shader_stage.into(),
        ),
        ("maxBindGroups", limits.max_bind_groups.into()),
        (
            "maxComputeWorkgroupStorageSize",
            limits.max_compute_workgroup_storage_size.into(),
        ),
        (
            "maxComputeInvocationsPerWorkgroup",
            limits.max_compute_invocations_per_workgroup.into(),
        ),
        (
            "maxComputeWorkgroupSizeX",
            limits.max_compute_workgroup_size_x.into(),
        ),
        (
            "maxComputeWorkgroupSizeY",
            limits.max_compute_workgroup_size_y.into(),
        ),
        (
            "maxComputeWorkgroupSizeZ",
            limits.max_compute_workgroup_size_z.into(),
        ),
        (
            "maxComputeWorkgroupsPerDimension",
            limits.max_compute_workgroups_per_dimension.into(),
        ),
    ]
}

pub fn run(args: InfoArgs) -> CliResult {
    let options = args.gpu.options()?;
    let adapters = adapter_summaries(options.backend);
    // No adapter at all: the one-line error of `Gpu::new` says how to get one.
    let gpu = Gpu::new(&options)?;
    let limits = limits_table(&gpu.limits);
    let features: Vec<String> = gpu
        .features
        .iter_names()
        .map(|(name, _)| name.to_string())
        .collect();
    if args.json {
        let adapters: Vec<serde_json::Value> = adapters
            .iter()
            .map(|a| {
                serde_json::json!({
                    "name": a.name,
                    "backend": a.backend,
                    "device_type": a.device_type,
                    "driver": a.driver,
                    "driver_info": a.driver_info,
                })
            })
            .collect();
        let limits: serde_json::Map<String, serde_json::Value> = limits
            .iter()
            .map(|(name, value)| (name.to_string(), (*value).into()))
            .collect();
        let value = serde_json::json!({
            "adapters": adapters,
            "chosen": {
                "name": gpu.info.name,
                "backend": format!("{:?}", gpu.info.backend),
                "device_type": format!("{:?}", gpu.info.device_type),
                "driver": gpu.info.driver,
                "driver_info": gpu.info.driver_info,
                "bounds_checks": gpu.bounds_checks,
                "matmul": if gpu.tiled_matmul() { "tiled" } else { "register" },
                "limits": limits,
                "features": features,
            },
        });
        println!("{value:#}");
        return Ok(());
    }
    println!("adapters (best first):");
    for a in &adapters {
        println!(
            "  {} ({}, {}, driver {} {})",
            a.name, a.backend, a.device_type, a.driver, a.driver_info
        );
    }
    println!("chosen: {}", gpu.describe());
    println!(
        "  shader bounds checks: {}",
        if gpu.bounds_checks { "on" } else { "off" }
    );
    println!(
        "  matmul kernels: {} (CLUSTERCLIP_MATMUL=tiled|register)",
        if gpu.tiled_matmul() {
            "tiled, workgroup memory (hardware GPUs)"
        } else {
            "register tiles (CPU drivers)"
        }
    );
    println!("  limits:");
    for (name, value) in &limits {
        println!("    {name:<36} {value}");
    }
    println!(
        "  features: {}",
        if features.is_empty() {
            "none".to_string()
        } else {
            features.join(", ")
        }
    );
    Ok(())
}
