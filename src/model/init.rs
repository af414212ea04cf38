//! Parameter declarations and OpenCLIP's initialisation (open_clip `CLIP.init_parameters`,
//! `VisionTransformer`, PyTorch defaults for modules OpenCLIP leaves alone).

use super::config::{ClipConfig, LOGIT_SCALE_INIT, MLP_RATIO};
use super::params::{ParamSpec, layout};

/// How one parameter is initialised.
#[derive(Clone, Copy, Debug)]
enum Init {
    Zeros,
    Ones,
    Normal(f32),
    /// U(-b, b).
    Uniform(f32),
    Constant(f32),
}

fn block_specs(
    prefix: &str,
    width: usize,
    text_init: Option<(f32, f32, f32)>,
) -> Vec<(ParamSpec, Init)> {
    let hidden = width * MLP_RATIO;
    let p = |name: &str, shape: Vec<usize>, init: Init| {
        (
            ParamSpec {
                name: format!("{prefix}{name}"),
                shape,
            },
            init,
        )
    };
    // PyTorch defaults (nn.Linear: U(±1/sqrt(fan_in)) for weight and bias; nn.MultiheadAttention:
    // xavier-uniform in_proj, zero biases) unless CLIP.init_parameters overrides (text tower).
    let xavier = (6.0 / (width + 3 * width) as f32).sqrt();
    let lin = |fan_in: usize| Init::Uniform(1.0 / (fan_in as f32).sqrt());
    let (in_proj, out_proj, c_fc, c_proj) = match text_init {
        Some((attn_std, proj_std, fc_std)) => (
            Init::Normal(attn_std),
            Init::Normal(proj_std),
            Init::Normal(fc_std),
            Init::Normal(proj_std),
        ),
        None => (Init::Uniform(xavier), lin(width), lin(width), lin(hidden)),
    };
    vec![
        p("ln_1.weight", vec![width], Init::Ones),
        p("ln_1.bias", vec![width], Init::Zeros),
        p("attn.in_proj_weight", vec![3 * width, width], in_proj),
        p("attn.in_proj_bias", vec![3 * width], Init::Zeros),
        p("attn.out_proj.weight", vec![width, width], out_proj),
        p("attn.out_proj.bias", vec![width], Init::Zeros),
        p("ln_2.weight", vec![width], Init::Ones),
        p("ln_2.bias", vec![width], Init::Zeros),
        p("mlp.c_fc.weight", vec![hidden, width], c_fc),
        p("mlp.c_fc.bias", vec![hidden], lin(width)),
        p("mlp.c_proj.weight", vec![width, hidden], c_proj),
        p("mlp.c_proj.bias", vec![width], lin(hidden)),
    ]
}

fn declare(config: &ClipConfig) -> Vec<(ParamSpec, Init)> {
    let v = &config.vision;
    let t = &config.text;
    let e = config.embed_dim;
    let mut out = Vec::new();
    let p = |name: &str, shape: Vec<usize>, init: Init| {
        (
            ParamSpec {
                name: name.to_string(),
                shape,
            },
            init,
        )
    };
    let vscale = (v.width as f32).powf(-0.5);
    let patch_fan_in = 3 * v.patch_size * v.patch_size;
    out.push(p(
        "visual.class_embedding",
        vec![v.width],
        Init::Normal(vscale),
    ));
    out.push(p(
        "visual.positional_embedding",
        vec![v.patches() + 1, v.width],
        Init::Normal(vscale),
    ));
    out.push(p("visual.proj", vec![v.width, e], Init::Normal(vscale)));
    out.push(p(
        "visual.conv1.weight",
        vec![v.width, 3, v.patch_size, v.patch_size],
        Init::Uniform(1.0 / (patch_fan_in as f32).sqrt()),
    ));
    out.push(p("visual.ln_pre.weight", vec![v.width], Init::Ones));
    out.push(p("visual.ln_pre.bias", vec![v.width], Init::Zeros));
    for i in 0..v.layers {
        out.extend(block_specs(
            &format!("visual.transformer.resblocks.{i}."),
            v.width,
            None,
        ));
    }
    out.push(p("visual.ln_post.weight", vec![v.width], Init::Ones));
    out.push(p("visual.ln_post.bias", vec![v.width], Init::Zeros));
    out.push(p(
        "positional_embedding",
        vec![t.context_length, t.width],
        Init::Normal(0.01),
    ));
    out.push(p(
        "text_projection",
        vec![t.width, e],
        Init::Normal((t.width as f32).powf(-0.5)),
    ));
    out.push(p("logit_scale", vec![], Init::Constant(LOGIT_SCALE_INIT)));
    out.push(p(
        "token_embedding.weight",
        vec![t.vocab_size, t.width],
        Init::Normal(0.02),
    ));
    let attn_std = (t.width as f32).powf(-0.5);
    let proj_std = attn_std * ((2 * t.layers) as f32).powf(-0.5);
    let fc_std = ((2 * t.width) as f32).powf(-0.5);
    for i in 0..t.layers {
        out.extend(block_specs(
            &format!("transformer.resblocks.{i}."),
            t.width,
            Some((attn_std, proj_std, fc_std)),
        ));
    }
    out.push(p("ln_final.weight", vec![t.width], Init::Ones));
    out.push(p("ln_final.bias", vec![t.width], Init::Zeros));
    out
}

/// Every parameter of the model, in a fixed order.
pub fn param_specs(config: &ClipConfig) -> Vec<ParamSpec> {
    declare(config).into_iter().map(|(s, _)| s).collect()
}

/// Initial values in the flat layout of [`layout`], from `seed`.
pub fn init_flat(config: &ClipConfig, seed: u64) -> Vec<f32> {
    let declared = declare(config);
    let specs: Vec<ParamSpec> = declared.iter().map(|(s, _)| s.clone()).collect();
    let (offsets, total) = layout(&specs);
    let mut flat = vec![0.0; total];
    let mut rng = SplitMix(seed ^ 0x00C1_1F00_D5EE_D5EE);
    for ((spec, init), offset) in declared.iter().zip(offsets) {
        let values = &mut flat[offset..offset + spec.numel()];
        for x in values.iter_mut() {
            *x = match *init {
                Init::Zeros => 0.0,
                Init::Ones => 1.0,
                Init::Constant(c) => c,
                Init::Normal(std) => rng.normal() * std,
                Init::Uniform(bound) => (rng.uniform() * 2.0 - 1.0) * bound,
            };
        }
    }
    flat
}

/// splitmix64: a tiny seeded generator for initialisation (and the linear probe's split).
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    /// Box–Muller.
    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform() as f64, self.uniform() as f64);
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}
