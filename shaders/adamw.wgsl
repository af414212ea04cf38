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
// The same bindings four values at a time, for the `*4` entries (offset and len multiples of
// 4; callers bind by either name): lavapipe loads a storage value with a loop over the SIMD
// lanes, so a vec4 per load is close to four times fewer loads.
@group(0) @binding(1) var<storage, read_write> param4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grad4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> moment1_4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> moment2_4: array<vec4<f32>>;

const WG: u32 = 256u;

// PyTorch's AdamW on four parameters p with gradients g and moments m, v (updated in place):
// p -= lr·wd·p (decoupled), then p -= lr/c1 · m / (sqrt(v)/sqrt(c2) + eps). The scalar
// entries pass a splat and keep `.x`.
fn adamw_update(p: ptr<function, vec4<f32>>, g: vec4<f32>, m: ptr<function, vec4<f32>>, v: ptr<function, vec4<f32>>) {
    *p -= params.lr * params.weight_decay * *p;
    *m = params.beta1 * *m + (1.0 - params.beta1) * g;
    *v = params.beta2 * *v + (1.0 - params.beta2) * g * g;
    let denom = sqrt(*v) / sqrt(params.correction2) + params.eps;
    *p -= (params.lr / params.correction1) * *m / denom;
}

// Element `at` with gradient `g`.
fn adamw_at(at: u32, g: f32) {
    var p = vec4(param[at]);
    var m = vec4(moment1[at]);
    var v = vec4(moment2[at]);
    adamw_update(&p, vec4(g), &m, &v);
    param[at] = p.x;
    moment1[at] = m.x;
    moment2[at] = v.x;
}

// Elements 4·at.. with gradients `g`.
fn adamw_at4(at: u32, g: vec4<f32>) {
    var p = param4[at];
    var m = moment1_4[at];
    var v = moment2_4[at];
    adamw_update(&p, g, &m, &v);
    param4[at] = p;
    moment1_4[at] = m;
    moment2_4[at] = v;
}

@compute @workgroup_size(WG)
fn adamw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len {
        adamw_at(params.offset + i, grad[params.offset + i]);
    }
}

// With the gradients clipped to a global norm.
@compute @workgroup_size(WG)
fn adamw_clipped(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len {
        adamw_at(params.offset + i, grad[params.offset + i] * clip[1]);
    }
}

@compute @workgroup_size(WG)
fn adamw4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len / 4u {
        let at = params.offset / 4u + i;
        adamw_at4(at, grad4[at]);
    }
}

@compute @workgroup_size(WG)
fn adamw_clipped4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len / 4u {
        let at = params.offset / 4u + i;
        adamw_at4(at, grad4[at] * clip[1]);
    }
}

@compute @workgroup_size(1)
fn clamp_value() {
    param[params.offset] = clamp(param[params.offset], params.lo, params.hi);
}
