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
// The same bindings four values at a time, for the `*4` entries (len a multiple of 4; callers
// bind by either name): lavapipe loads a storage value with a loop over the SIMD lanes, so a
// vec4 per load is close to four times fewer loads (src/ops/gelu.rs picks these wherever the
// length allows).
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grad4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;

const WG: u32 = 256u;
const FRAC_1_SQRT_2: f32 = 0.70710678118654752;
// 1/sqrt(2π)
const FRAC_1_SQRT_2PI: f32 = 0.39894228040143268;

// The math works on four values at once; the scalar entries pass a splat and take `.x`.

// erfc(z) for any z (Numerical Recipes' erfcc, relative error < 1.2e-7).
fn erfc(z: vec4<f32>) -> vec4<f32> {
    let a = abs(z);
    let t = 1.0 / (1.0 + 0.5 * a);
    var p = vec4(0.17087277);
    p = fma(p, t, vec4(-0.82215223));
    p = fma(p, t, vec4(1.48851587));
    p = fma(p, t, vec4(-1.13520398));
    p = fma(p, t, vec4(0.27886807));
    p = fma(p, t, vec4(-0.18628806));
    p = fma(p, t, vec4(0.09678418));
    p = fma(p, t, vec4(0.37409196));
    p = fma(p, t, vec4(1.00002368));
    p = fma(p, t, vec4(-1.26551223));
    let r = t * exp(p - a * a);
    return select(r, 2.0 - r, z < vec4(0.0));
}

// Φ(x), the standard normal CDF.
fn normal_cdf(v: vec4<f32>) -> vec4<f32> {
    return 0.5 * erfc(-v * FRAC_1_SQRT_2);
}

fn gelu(v: vec4<f32>) -> vec4<f32> {
    return v * normal_cdf(v);
}

// d gelu / dx = Φ(x) + x·φ(x).
fn gelu_derivative(v: vec4<f32>) -> vec4<f32> {
    let density = FRAC_1_SQRT_2PI * exp(-0.5 * v * v);
    return normal_cdf(v) + v * density;
}

// QuickGELU, x·σ(1.702·x): OpenAI CLIP's activation, kept by OpenCLIP's `-quickgelu` models.
const QUICK_GELU_SCALE: f32 = 1.702;

// σ(z) without overflow: exp of a non-positive argument only.
fn sigmoid(z: vec4<f32>) -> vec4<f32> {
    let e = exp(-abs(z));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), z >= vec4(0.0));
}

fn quick_gelu(v: vec4<f32>) -> vec4<f32> {
    return v * sigmoid(QUICK_GELU_SCALE * v);
}

// d/dx x·σ(ax) = σ(ax) + a·x·σ(ax)·(1 − σ(ax)).
fn quick_gelu_derivative(v: vec4<f32>) -> vec4<f32> {
    let s = sigmoid(QUICK_GELU_SCALE * v);
    return s + QUICK_GELU_SCALE * v * s * (1.0 - s);
}

@compute @workgroup_size(WG)
fn gelu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len {
        out[i] = gelu(vec4(x[i])).x;
    }
}

@compute @workgroup_size(WG)
fn gelu_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len / 4u {
        out4[i] = gelu(x4[i]);
    }
}

@compute @workgroup_size(WG)
fn gelu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len {
        out[i] = grad[i] * gelu_derivative(vec4(x[i])).x;
    }
}

@compute @workgroup_size(WG)
fn gelu_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len / 4u {
        out4[i] = grad4[i] * gelu_derivative(x4[i]);
    }
}

@compute @workgroup_size(WG)
fn quick_gelu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len {
        out[i] = quick_gelu(vec4(x[i])).x;
    }
}

@compute @workgroup_size(WG)
fn quick_gelu_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len / 4u {
        out4[i] = quick_gelu(x4[i]);
    }
}

@compute @workgroup_size(WG)
fn quick_gelu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len {
        out[i] = grad[i] * quick_gelu_derivative(vec4(x[i])).x;
    }
}

@compute @workgroup_size(WG)
fn quick_gelu_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len / 4u {
        out4[i] = grad4[i] * quick_gelu_derivative(x4[i]);
    }
}
