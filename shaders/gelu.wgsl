// Exact GELU, x·Φ(x) = 0.5·x·erfc(−x/√2), as torch.nn.GELU() (M1: the MLP of every block).
// WGSL has no erf: erfc comes from the Chebyshev fit of Numerical Recipes (erfcc), whose
// relative error is below 1.2e-7 for every argument, so the tail x → −∞ (where 1 + erf(x/√2)
// would cancel) keeps its relative accuracy too.

struct Params {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
const FRAC_1_SQRT_2: f32 = 0.70710678118654752;
// 1/sqrt(2π)
const FRAC_1_SQRT_2PI: f32 = 0.39894228040143268;

// erfc(z) for any z (Numerical Recipes' erfcc, relative error < 1.2e-7).
fn erfc(z: f32) -> f32 {
    let a = abs(z);
    let t = 1.0 / (1.0 + 0.5 * a);
    var p = 0.17087277;
    p = fma(p, t, -0.82215223);
    p = fma(p, t, 1.48851587);
    p = fma(p, t, -1.13520398);
    p = fma(p, t, 0.27886807);
    p = fma(p, t, -0.18628806);
    p = fma(p, t, 0.09678418);
    p = fma(p, t, 0.37409196);
    p = fma(p, t, 1.00002368);
    p = fma(p, t, -1.26551223);
    let r = t * exp(p - a * a);
    return select(r, 2.0 - r, z < 0.0);
}

// Φ(x), the standard normal CDF.
fn normal_cdf(v: f32) -> f32 {
    return 0.5 * erfc(-v * FRAC_1_SQRT_2);
}

@compute @workgroup_size(WG)
fn gelu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i >= params.len {
        return;
    }
    let v = x[i];
    out[i] = v * normal_cdf(v);
}

// d gelu / dx = Φ(x) + x·φ(x).
@compute @workgroup_size(WG)
fn gelu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i >= params.len {
        return;
    }
    let v = x[i];
    let density = FRAC_1_SQRT_2PI * exp(-0.5 * v * v);
    out[i] = grad[i] * (normal_cdf(v) + v * density);
}

// QuickGELU, x·σ(1.702·x): OpenAI CLIP's activation, kept by OpenCLIP's `-quickgelu` models.
const QUICK_GELU_SCALE: f32 = 1.702;

// σ(z) without overflow: exp of a non-positive argument only.
fn sigmoid(z: f32) -> f32 {
    let e = exp(-abs(z));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), z >= 0.0);
}

@compute @workgroup_size(WG)
fn quick_gelu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i >= params.len {
        return;
    }
    let v = x[i];
    out[i] = v * sigmoid(QUICK_GELU_SCALE * v);
}

// d/dx x·σ(ax) = σ(ax) + a·x·σ(ax)·(1 − σ(ax)).
@compute @workgroup_size(WG)
fn quick_gelu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i >= params.len {
        return;
    }
    let v = x[i];
    let s = sigmoid(QUICK_GELU_SCALE * v);
    out[i] = grad[i] * (s + QUICK_GELU_SCALE * v * s * (1.0 - s));
}
