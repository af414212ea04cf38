//! `CLUSTERCLIP_SHADER_DIR`: a shader file there replaces the embedded copy (kernel development
//! without rebuilding), gets the prelude like the embedded one, and its errors name its own
//! path and line. One test in this binary: it sets a process-wide environment variable.

use clusterclip::gpu::{Gpu, GpuOptions};

fn new_gpu() -> std::sync::Arc<Gpu> {
    let mut options = GpuOptions::from_env().expect("GPU environment variables");
    options.bounds_checks = Some(true);
    Gpu::new(&options).expect("a GPU adapter")
}

#[test]
fn a_swapped_shader_file_runs_with_the_prelude_and_its_errors_name_its_lines() {
    let dir = std::env::temp_dir().join(format!("clusterclip-shader-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // SAFETY: the only test of this binary; no other thread reads the environment.
    unsafe { std::env::set_var("CLUSTERCLIP_SHADER_DIR", &dir) };
    let shader = clusterclip::shader!("elementwise");

    // `add` swapped for a subtraction, still indexing through the prelude's `linear_index`.
    let swapped = shader.source.replace(
        "out[i] = a[i] + b[i % params.b_len];",
        "out[i] = a[i] - b[i % params.b_len];",
    );
    assert_ne!(swapped, shader.source, "the edit must apply");
    std::fs::write(dir.join("elementwise.wgsl"), &swapped).unwrap();
    let gpu = new_gpu();
    // Not a multiple of 4: `add` itself runs, not its four-values-per-load twin `add4`.
    let n = 301;
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| 0.25 * i as f32).collect();
    let (ga, gb) = (gpu.upload_f32(&a), gpu.upload_f32(&b));
    let sum = clusterclip::ops::elementwise::add_storage(
        &clusterclip::Backend::Gpu(gpu.clone()),
        &clusterclip::graph::Storage::Gpu(ga),
        &clusterclip::graph::Storage::Gpu(gb),
    );
    let got = gpu.read_f32(sum.gpu()).unwrap();
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
    assert_eq!(got, want);

    // A broken file: the message names the swapped file and the line in it.
    let mut lines: Vec<&str> = swapped.lines().collect();
    let line = lines.iter().position(|l| l.contains("a[i] - b")).unwrap();
    lines[line] = "    out[i] = a[i] - true;";
    std::fs::write(dir.join("elementwise.wgsl"), lines.join("\n")).unwrap();
    let error = new_gpu()
        .try_kernel(&shader, "add")
        .err()
        .expect("the broken shader is refused")
        .to_string();
    let at = format!("{}:{}:", dir.join("elementwise.wgsl").display(), line + 1);
    assert!(error.contains(&at), "{at} in {error}");
    std::fs::remove_dir_all(&dir).unwrap();
}
