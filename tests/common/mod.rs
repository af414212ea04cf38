//! Shared test helpers: one GPU per test binary, seeded random data, comparisons, and a
//! finite-difference gradient check of the CPU reference backend; `cli` runs the binary.
#![allow(dead_code)]

pub mod cli;
pub mod data;

use std::sync::{Arc, OnceLock};

use clusterclip::gpu::{Gpu, GpuOptions};
use clusterclip::graph::{Backend, Graph, Tensor};

/// The GPU every test of this binary shares (one device, one pipeline cache), with new
/// allocations poisoned with NaN so unwritten outputs fail. The adapter is the one the library
/// chooses (Vulkan where a driver exists, else GL); `CLUSTERCLIP_BACKEND` overrides.
pub fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(fresh_gpu).clone()
}

/// A device of its own, set up as [`gpu`]'s (for tests that change device-wide settings).
#[allow(dead_code)]
pub fn fresh_gpu() -> Arc<Gpu> {
    new_gpu(None)
}

/// A device of its own without wgpu's shader bounds checks, as release builds run.
#[allow(dead_code)]
pub fn unchecked_gpu() -> Arc<Gpu> {
    new_gpu(Some(false))
}

/// The library's adapter choice under the environment's settings, new allocations poisoned with
/// NaN; bounds checks as `bounds_checks` says, else on (release builds otherwise skip them).
fn new_gpu(bounds_checks: Option<bool>) -> Arc<Gpu> {
    let mut options = GpuOptions::from_env().expect("GPU environment variables");
    options.bounds_checks = bounds_checks.or(options.bounds_checks).or(Some(true));
    let gpu = Gpu::new(&options).unwrap_or_else(|e| {
        panic!(
            "no GPU adapter for the tests: {e}. Install a Vulkan driver (Mesa's lavapipe: \
             apt-get install mesa-vulkan-drivers) or GL (Mesa's llvmpipe: libegl-mesa0)"
        )
    });
    announce_adapter(&gpu.describe());
    gpu.set_poison(true);
    gpu
}

/// Writes the adapter a test binary uses to stderr once, past the test harness's capture (which
/// takes only the print macros), so every CI log says what the suite ran on.
pub fn announce_adapter(description: &str) {
    static ANNOUNCED: OnceLock<()> = OnceLock::new();
    ANNOUNCED.get_or_init(|| {
        use std::io::Write;
        let binary = std::env::args().next().unwrap_or_default();
        let binary = std::path::Path::new(&binary)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(std::io::stderr(), "[{binary}] adapter: {description}");
    });
}

pub fn gpu_graph() -> Graph {
    Graph::new(Backend::Gpu(gpu()))
}

pub fn cpu_graph() -> Graph {
    Graph::new(Backend::Cpu)
}

/// A small seeded generator (xorshift64*), so tests need no extra crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-1, 1).
    pub fn signed(&mut self) -> f32 {
        self.uniform() * 2.0 - 1.0
    }

    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.signed()).collect()
    }

    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

/// max |a - b| / (atol + rtol |b|) <= 1, with a message naming the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ratio = (g - w).abs() / (atol + rtol * w.abs());
        if ratio.is_nan() || ratio > 1.0 {
            // NaN lands here too.
            if ratio.is_nan() || ratio > worst.0 {
                worst = (ratio, i);
            }
        }
    }
    if worst.0 != 0.0 || got.iter().any(|x| x.is_nan()) {
        let i = worst.1;
        panic!(
            "{what}: element {i} is {} but should be {} (atol {atol}, rtol {rtol})",
            got[i], want[i]
        );
    }
}

/// Relative error ‖a − b‖ / ‖b‖ in f64.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| ((g - w) as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Checks the CPU reference backward of `build` by central finite differences.
/// `build` makes the output from the graph's variables (created from `inputs`);
/// the scalar is Σ w·out with fixed random weights w, so every output element matters.
pub fn gradcheck(
    name: &str,
    inputs: &[(Vec<f32>, Vec<usize>)],
    build: impl Fn(&mut Graph, &[Tensor]) -> Tensor,
    tol: f64,
) {
    let eval = |values: &[Vec<f32>]| -> (Graph, Vec<Tensor>, Tensor) {
        let mut g = cpu_graph();
        let vars: Vec<Tensor> = values
            .iter()
            .zip(inputs)
            .map(|(v, (_, shape))| g.variable(v, shape).unwrap())
            .collect();
        let out = build(&mut g, &vars);
        (g, vars, out)
    };
    let base: Vec<Vec<f32>> = inputs.iter().map(|(v, _)| v.clone()).collect();
    let (mut g, vars, out) = eval(&base);
    let mut rng = Rng::new(99);
    let weights = rng.vec(g.numel(out));
    g.backward_from(out, &weights).unwrap();
    let scalar = |values: &[Vec<f32>]| -> f64 {
        let (g, _, out) = eval(values);
        g.to_vec(out)
            .iter()
            .zip(&weights)
            .map(|(o, w)| *o as f64 * *w as f64)
            .sum()
    };
    for (which, var) in vars.iter().enumerate() {
        let analytic = g
            .grad_vec(*var)
            .unwrap_or_else(|| vec![0.0; base[which].len()]);
        // Probe a bounded number of elements so big inputs stay fast.
        let len = base[which].len();
        let step = (len / 24).max(1);
        for i in (0..len).step_by(step) {
            let eps = 1e-2f32.max(base[which][i].abs() * 1e-2);
            let mut plus = base.clone();
            plus[which][i] += eps;
            let mut minus = base.clone();
            minus[which][i] -= eps;
            let numeric = (scalar(&plus) - scalar(&minus)) / (2.0 * eps as f64);
            let err = (numeric - analytic[i] as f64).abs() / (1e-2 + numeric.abs());
            assert!(
                err < tol,
                "{name}: d/d input{which}[{i}]: analytic {} vs numeric {numeric} (rel err {err:.2e})",
                analytic[i]
            );
        }
    }
}

/// Runs `build` on both backends with the same inputs; compares outputs and input gradients.
pub fn compare_backends(
    name: &str,
    inputs: &[(Vec<f32>, Vec<usize>)],
    build: impl Fn(&mut Graph, &[Tensor]) -> Tensor,
    tol: f32,
) {
    compare_backends_on(&gpu(), name, inputs, build, tol);
}

/// [`compare_backends`] on a given device (e.g. one set to other kernels).
pub fn compare_backends_on(
    gpu: &Arc<Gpu>,
    name: &str,
    inputs: &[(Vec<f32>, Vec<usize>)],
    build: impl Fn(&mut Graph, &[Tensor]) -> Tensor,
    tol: f32,
) {
    let mut results = Vec::new();
    for mut g in [cpu_graph(), Graph::new(Backend::Gpu(gpu.clone()))] {
        let vars: Vec<Tensor> = inputs
            .iter()
            .map(|(v, s)| g.variable(v, s).unwrap())
            .collect();
        let out = build(&mut g, &vars);
        let weights = Rng::new(5).vec(g.numel(out));
        g.backward_from(out, &weights).unwrap();
        let grads: Vec<Vec<f32>> = vars.iter().map(|v| g.grad_vec(*v).unwrap()).collect();
        results.push((g.to_vec(out), grads));
    }
    let (cpu, gpu) = (&results[0], &results[1]);
    assert_close(&format!("{name} forward"), &gpu.0, &cpu.0, tol, tol);
    for (i, (g, c)) in gpu.1.iter().zip(&cpu.1).enumerate() {
        assert_close(&format!("{name} grad of input {i}"), g, c, tol, tol);
    }
}
