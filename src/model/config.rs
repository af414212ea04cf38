//! Model presets, in one place (method.md M1): `micro` for masking studies on CPUs, `tiny` for
//! tests and CPUs, `s16` (OpenCLIP
//! ViT-S-16) and `b16` (OpenCLIP ViT-B-16, the paper's model).

pub use crate::ops::gelu::Activation;

/// The ViT image tower.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
}

/// The causal text tower.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub context_length: usize,
    pub vocab_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    pub embed_dim: usize,
    pub vision: VisionConfig,
    pub text: TextConfig,
    /// The MLP activation of both towers: exact GELU (M1), or QuickGELU for OpenAI-lineage
    /// weights (OpenCLIP's `quick_gelu: true`, the `-quickgelu` model names).
    pub activation: Activation,
}

/// LayerNorm epsilon of OpenCLIP (nn.LayerNorm default).
pub const LAYER_NORM_EPS: f32 = 1e-5;
/// MLP hidden width = 4 × width (M1).
pub const MLP_RATIO: usize = 4;
/// `logit_scale` starts at ln(1/0.07) (M1).
pub const LOGIT_SCALE_INIT: f32 = 2.659_26;
/// `logit_scale` is clamped to [0, ln 100] after every step (M1).
pub const LOGIT_SCALE_MAX: f32 = 4.605_170_2;

pub const PRESETS: &[&str] = &["nano", "micro", "tiny", "s16", "b16"];

impl VisionConfig {
    /// Patches per image, L = (H/p)².
    pub fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
}

impl ClipConfig {
    /// Words of the largest activation a training or evaluation step at `batch` binds (the
    /// unmasked image tower): MLP hidden activations, attention probabilities or the logits.
    /// The runtime binds each tensor whole, so this must fit one storage binding.
    pub fn largest_activation_words(&self, batch: usize) -> usize {
        (self.activation_words_per_sample() * batch).max(batch * batch)
    }

    /// The largest batch whose activations fit bindings of `words` (at least 1).
    pub fn largest_batch_within(&self, words: usize) -> usize {
        let by_sample = words / self.activation_words_per_sample().max(1);
        by_sample.min(words.isqrt()).max(1)
    }

    fn activation_words_per_sample(&self) -> usize {
        let (v, t) = (&self.vision, &self.text);
        let image_tokens = v.patches() + 1;
        let text_tokens = t.context_length;
        // Attention pads the token axis to a multiple of 4 (src/ops/attention.rs).
        let (ip, tp) = (
            image_tokens.next_multiple_of(4),
            text_tokens.next_multiple_of(4),
        );
        [
            image_tokens * MLP_RATIO * v.width,
            v.heads * ip * ip,
            text_tokens * MLP_RATIO * t.width,
            t.heads * tp * tp,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }

    pub fn preset(name: &str) -> Result<ClipConfig, String> {
        let config = match name {
            // Micro at 32 px (16 patches of 8 px): training in a browser tab on SwiftShader,
            // where a WGSL matmul runs at about 1.4 GFLOP/s on 2 cores (issue 12).
            "nano" => ClipConfig {
                embed_dim: 64,
                vision: VisionConfig {
                    image_size: 32,
                    patch_size: 8,
                    width: 64,
                    layers: 2,
                    heads: 2,
                },
                text: TextConfig {
                    context_length: 32,
                    vocab_size: 1000,
                    width: 64,
                    layers: 2,
                    heads: 2,
                },
                activation: Activation::Gelu,
            },
            // Tiny's geometry (64 px, 8 px patches, so the same 64-patch masks) at a third of
            // its width and half its depth: a step well under half a second on 2 CPU cores, for
            // masking studies that must train long enough to leave chance (M7, issue 11).
            "micro" => ClipConfig {
                embed_dim: 64,
                vision: VisionConfig {
                    image_size: 64,
                    patch_size: 8,
                    width: 64,
                    layers: 2,
                    heads: 2,
                },
                text: TextConfig {
                    context_length: 32,
                    vocab_size: 1000,
                    width: 64,
                    layers: 2,
                    heads: 2,
                },
                activation: Activation::Gelu,
            },
            // The configuration measured in PyTorch on the 2-core CI machine (issue 3).
            "tiny" => ClipConfig {
                embed_dim: 192,
                vision: VisionConfig {
                    image_size: 64,
                    patch_size: 8,
                    width: 192,
                    layers: 4,
                    heads: 3,
                },
                text: TextConfig {
                    context_length: 32,
                    vocab_size: 1000,
                    width: 192,
                    layers: 4,
                    heads: 3,
                },
                activation: Activation::Gelu,
            },
            // OpenCLIP ViT-S-16.json.
            "s16" => ClipConfig {
                embed_dim: 384,
                vision: VisionConfig {
                    image_size: 224,
                    patch_size: 16,
                    width: 384,
                    layers: 12,
                    heads: 6,
                },
                text: TextConfig {
                    context_length: 77,
                    vocab_size: 49_408,
                    width: 384,
                    layers: 12,
                    heads: 6,
                },
                activation: Activation::Gelu,
            },
            // OpenCLIP ViT-B-16.json, the paper's model (M1).
            "b16" => ClipConfig {
                embed_dim: 512,
                vision: VisionConfig {
                    image_size: 224,
                    patch_size: 16,
                    width: 768,
                    layers: 12,
                    heads: 12,
                },
                text: TextConfig {
                    context_length: 77,
                    vocab_size: 49_408,
                    width: 512,
                    layers: 12,
                    heads: 8,
                },
                activation: Activation::Gelu,
            },
            other => {
                return Err(format!(
                    "unknown model preset '{other}': expected one of {}",
                    PRESETS.join(", ")
                ));
            }
        };
        Ok(config)
    }

    /// Checks that the towers can be built; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let v = &self.vision;
        let t = &self.text;
        let positive = [
            ("embed_dim", self.embed_dim),
            ("vision.image_size", v.image_size),
            ("vision.patch_size", v.patch_size),
            ("vision.width", v.width),
            ("vision.layers", v.layers),
            ("vision.heads", v.heads),
            ("text.context_length", t.context_length),
            ("text.vocab_size", t.vocab_size),
            ("text.width", t.width),
            ("text.layers", t.layers),
            ("text.heads", t.heads),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(format!("model config: {field} must be positive"));
            }
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "model config: vision.image_size {} is not a multiple of vision.patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if !v.width.is_multiple_of(v.heads) {
            return Err(format!(
                "model config: vision.width {} is not divisible by vision.heads {}",
                v.width, v.heads
            ));
        }
        if !t.width.is_multiple_of(t.heads) {
            return Err(format!(
                "model config: text.width {} is not divisible by text.heads {}",
                t.width, t.heads
            ));
        }
        if t.vocab_size < 3 {
            return Err(
                "model config: text.vocab_size must leave room for the start and end tokens".into(),
            );
        }
        Ok(())
    }
}
