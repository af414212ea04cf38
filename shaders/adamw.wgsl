// AdamW on a run of the flat parameter buffer (llm.c style: parameters, gradients and both
// moments share one layout), and the clamp of logit_scale after each step (M1).

struct Params {
    offset: u32,
    len: u32,
    lr: f32,
    weight_decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    // 1 - beta^t, the bias corrections of the first and second moments.
    correction1: f32,
    correction2: f32,
    lo: f32,
    hi: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> moment1: array<f32>;
@group(0) @binding(4) var<storage, read_write> moment2: array<f32>;
// [norm, coefficient]: torch.nn.utils.clip_grad_norm_'s coefficient scales the gradients
// (`adamw_clipped` only)
@group(0) @binding(5) var<storage, read> clip: array<f32>;

const WG: u32 = 256u;

// PyTorch's AdamW on element `at` with gradient `g`: p -= lr·wd·p (decoupled), then
// p -= lr/c1 · m / (sqrt(v)/sqrt(c2) + eps).
fn adamw_update(at: u32, g: f32) {
    var p = param[at];
    p -= params.lr * params.weight_decay * p;
    let m = params.beta1 * moment1[at] + (1.0 - params.beta1) * g;
    let v = params.beta2 * moment2[at] + (1.0 - params.beta2) * g * g;
    moment1[at] = m;
    moment2[at] = v;
    let denom = sqrt(v) / sqrt(params.correction2) + params.eps;
    param[at] = p - (params.lr / params.correction1) * m / denom;
}

@compute @workgroup_size(WG)
fn adamw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len {
        adamw_update(params.offset + i, grad[params.offset + i]);
    }
}

// With the gradients clipped to a global norm.
@compute @workgroup_size(WG)
fn adamw_clipped(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len {
        adamw_update(params.offset + i, grad[params.offset + i] * clip[1]);
    }
}

@compute @workgroup_size(1)
fn clamp_value() {
    param[params.offset] = clamp(param[params.offset], params.lo, params.hi);
}
