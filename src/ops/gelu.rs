//! Exact GELU, x·Φ(x), as `torch.nn.GELU()` (erf form; M1, the MLP of every block), and
//! QuickGELU, x·σ(1.702·x), the activation of OpenAI's CLIP weights (OpenCLIP's `-quickgelu`
//! models). Shader: `shaders/gelu.wgsl` (erfc by a fit with relative error < 1.2e-7); the CPU
//! reference uses an erf accurate to f64 rounding.

use std::sync::Arc;

use crate::graph::{Backend, Graph, Op, OpResult, Storage, Tensor};

/// Which activation: both share the shader file and the op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Gelu,
    QuickGelu,
}

impl Activation {
    fn entries(self) -> (&'static str, &'static str) {
        match self {
            Activation::Gelu => ("gelu_forward", "gelu_backward"),
            Activation::QuickGelu => ("quick_gelu_forward", "quick_gelu_backward"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct GeluOp {
    pub x: Tensor,
    pub activation: Activation,
}

impl Graph {
    /// GELU(x) = x·Φ(x) = 0.5·x·(1 + erf(x/√2)), elementwise.
    pub fn gelu(&mut self, x: Tensor) -> OpResult {
        self.activation(x, Activation::Gelu)
    }

    /// QuickGELU(x) = x·σ(1.702·x), elementwise.
    pub fn quick_gelu(&mut self, x: Tensor) -> OpResult {
        self.activation(x, Activation::QuickGelu)
    }

    /// The MLP activation `activation` of x, elementwise.
    pub fn activation(&mut self, x: Tensor, activation: Activation) -> OpResult {
        let (forward, _) = activation.entries();
        let value = run(&self.backend, forward, self.storage(x), None);
        let op = Op::Gelu(GeluOp { x, activation });
        Ok(self.push_op(value, self.shape(x).to_vec(), &[x], op))
    }
}

crate::kernel_params! {
    pub(crate) struct Params for "gelu" {
        len: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// An activation or its derivative on one f64 (the CPU reference).
type ScalarFn = fn(f64) -> f64;

/// `gelu_forward` (x) or `gelu_backward` (x, grad) on `backend`.
fn run(backend: &Backend, entry: &str, x: &Storage, grad: Option<&Storage>) -> Storage {
    match backend {
        Backend::Cpu => {
            let quick = entry.starts_with("quick");
            let (f, df): (ScalarFn, ScalarFn) = if quick {
                (cpu::quick_gelu, cpu::quick_gelu_derivative)
            } else {
                (cpu::gelu, cpu::gelu_derivative)
            };
            Storage::Cpu(Arc::new(match grad {
                None => x.cpu().iter().map(|&v| f(v as f64) as f32).collect(),
                Some(grad) => x
                    .cpu()
                    .iter()
                    .zip(grad.cpu())
                    .map(|(&v, &d)| (d as f64 * df(v as f64)) as f32)
                    .collect(),
            }))
        }
        Backend::Gpu(gpu) => {
            let out = gpu.alloc(x.len());
            let params = Params {
                len: x.len() as u32,
                ..bytemuck::Zeroable::zeroed()
            };
            let mut buffers = vec![("x", x.gpu()), ("out", &out)];
            buffers.extend(grad.map(|grad| ("grad", grad.gpu())));
            // Four values per invocation where the length allows (the shader's `*4` entries).
            let vec4 = x.len().is_multiple_of(4);
            let kernel = gpu.kernel_in_width(&crate::shader!("gelu"), entry, vec4);
            let threads = if vec4 { x.len() / 4 } else { x.len() };
            gpu.dispatch_linear(&kernel, &params, &buffers, threads);
            Storage::Gpu(out)
        }
    }
}

pub fn backward(g: &mut Graph, op: &GeluOp, grad: &Storage) {
    if g.requires_grad(op.x) {
        let (_, entry) = op.activation.entries();
        let dx = run(&g.backend, entry, g.storage(op.x), Some(grad));
        g.accumulate(op.x, dx);
    }
}

/// Plain-Rust reference in f64.
pub mod cpu {
    use std::f64::consts::{FRAC_1_SQRT_2, PI};

    /// erf(x) to f64 rounding: erf(x) = 2/√π · e^(−x²) · Σₙ (2x²)ⁿ x / (2n+1)!!, a series of
    /// positive terms (no cancellation) that converges for every x; past |x| = 6, erf = ±1
    /// within 2e-17.
    pub fn erf(x: f64) -> f64 {
        if x.abs() >= 6.0 {
            return x.signum();
        }
        let two_x2 = 2.0 * x * x;
        let (mut term, mut sum) = (x, x);
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= two_x2 / (2.0 * n + 1.0);
            sum += term;
        }
        2.0 / PI.sqrt() * (-x * x).exp() * sum
    }

    /// Φ(x), the standard normal CDF. 1 + erf cancels to absolute errors near 1e-16, far
    /// below what the f32 output of GELU resolves.
    pub fn normal_cdf(x: f64) -> f64 {
        0.5 * (1.0 + erf(x * FRAC_1_SQRT_2))
    }

    pub fn gelu(x: f64) -> f64 {
        x * normal_cdf(x)
    }

    /// Φ(x) + x·φ(x).
    pub fn gelu_derivative(x: f64) -> f64 {
        normal_cdf(x) + x * (-0.5 * x * x).exp() / (2.0 * PI).sqrt()
    }

    /// QuickGELU's 1.702 (OpenAI CLIP; OpenCLIP's `QuickGELU`).
    pub const QUICK_GELU_SCALE: f64 = 1.702;

    fn sigmoid(z: f64) -> f64 {
        1.0 / (1.0 + (-z).exp())
    }

    pub fn quick_gelu(x: f64) -> f64 {
        x * sigmoid(QUICK_GELU_SCALE * x)
    }

    /// σ(ax) + a·x·σ(ax)·(1 − σ(ax)).
    pub fn quick_gelu_derivative(x: f64) -> f64 {
        let s = sigmoid(QUICK_GELU_SCALE * x);
        s + QUICK_GELU_SCALE * x * s * (1.0 - s)
    }
}
