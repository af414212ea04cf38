//! The whole CLIP (M1): both towers, L2-normalised features, the symmetric InfoNCE loss with
//! the learned temperature.

use super::config::ClipConfig;
use super::init::{init_flat, param_specs};
use super::params::{BoundParams, ParamStore, layout};
use super::{text, vision};
use std::ops::Range;

use crate::graph::{Backend, Graph, ShapeError, Storage, Tensor, shape_error};

pub struct Clip {
    pub config: ClipConfig,
    pub params: ParamStore,
}

/// One batch: normalised images [batch, 3, S, S], token ids [batch, context], and optionally the
/// kept patches of each image ([batch, k] raster indices).
#[derive(Clone)]
pub struct ClipInputs<'a> {
    pub images: Input<'a, f32>,
    pub tokens: &'a [u32],
    pub batch: usize,
    pub kept: Option<Input<'a, u32>>,
}

impl<'a> ClipInputs<'a> {
    /// A batch whose values are all on the host.
    pub fn host(
        images: &'a [f32],
        tokens: &'a [u32],
        batch: usize,
        kept: Option<&'a [u32]>,
    ) -> Self {
        ClipInputs {
            images: Input::Host(images),
            tokens,
            batch,
            kept: kept.map(Input::Host),
        }
    }
}

/// Values a batch brings: the host's, or storage already on the backend. The training step
/// uploads its images once and the mask reads them there, and a mask whose keep count was known
/// before it ran leaves its kept indices there, so the step needs no read of its own (issue 15).
#[derive(Clone)]
pub enum Input<'a, T> {
    Host(&'a [T]),
    /// 32-bit words on the backend (u32 bits for indices, as `Graph::indices` stores them).
    Stored(Storage),
}

impl<T> Input<'_, T> {
    pub fn len(&self) -> usize {
        match self {
            Input::Host(values) => values.len(),
            Input::Stored(values) => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `range` (a copy on the backend for stored values).
    pub fn slice(&self, backend: &Backend, range: Range<usize>) -> Self {
        match self {
            Input::Host(values) => Input::Host(&values[range]),
            Input::Stored(values) => Input::Stored(backend.slice(values, range.start, range.len())),
        }
    }
}

pub struct ClipOutputs {
    pub params: BoundParams,
    /// [batch, embed_dim], L2-normalised.
    pub image_features: Tensor,
    pub text_features: Tensor,
    /// [1]
    pub loss: Tensor,
}

impl Clip {
    /// A freshly initialised model (OpenCLIP's initialisation) on `backend`.
    pub fn new(config: ClipConfig, backend: &Backend, seed: u64) -> Result<Clip, String> {
        config.validate()?;
        let flat = init_flat(&config, seed);
        let params = ParamStore::from_flat(param_specs(&config), &flat, backend);
        Ok(Clip { config, params })
    }

    /// A model from named tensors (OpenCLIP state_dict names); the error names a missing tensor
    /// or a wrong shape.
    pub fn from_named(
        config: ClipConfig,
        backend: &Backend,
        mut lookup: impl FnMut(&str) -> Option<(Vec<usize>, Vec<f32>)>,
    ) -> Result<Clip, String> {
        config.validate()?;
        let specs = param_specs(&config);
        let (offsets, total) = layout(&specs);
        let mut flat = vec![0.0; total];
        for (spec, offset) in specs.iter().zip(offsets) {
            let (shape, values) =
                lookup(&spec.name).ok_or_else(|| format!("missing tensor {}", spec.name))?;
            let same = shape == spec.shape || (spec.shape.is_empty() && shape == [1]);
            if !same || values.len() != spec.numel() {
                return Err(format!(
                    "tensor {} has shape {shape:?}, the model needs {:?}",
                    spec.name, spec.shape
                ));
            }
            flat[offset..offset + values.len()].copy_from_slice(&values);
        }
        Ok(Clip {
            params: ParamStore::from_flat(specs, &flat, backend),
            config,
        })
    }

    /// Number of parameters: (total, image tower, text tower incl. logit_scale).
    pub fn parameter_counts(config: &ClipConfig) -> (usize, usize, usize) {
        let specs = param_specs(config);
        let image: usize = specs
            .iter()
            .filter(|s| s.name.starts_with("visual."))
            .map(|s| s.numel())
            .sum();
        let total: usize = specs.iter().map(|s| s.numel()).sum();
        (total, image, total - image)
    }

    /// Forward pass to the loss on `g` (whose backend must hold the parameters).
    pub fn forward(&self, g: &mut Graph, inputs: &ClipInputs) -> Result<ClipOutputs, ShapeError> {
        let (params, image_features, text_features) = self.features(g, inputs)?;
        let loss = g.contrastive_loss(image_features, text_features, params.get("logit_scale"))?;
        Ok(ClipOutputs {
            params,
            image_features,
            text_features,
            loss,
        })
    }

    /// Forward pass to the L2-normalised image and text features [batch, embed_dim].
    pub fn features(
        &self,
        g: &mut Graph,
        inputs: &ClipInputs,
    ) -> Result<(BoundParams, Tensor, Tensor), ShapeError> {
        let v = &self.config.vision;
        let expected = inputs.batch * 3 * v.image_size * v.image_size;
        if inputs.images.len() != expected {
            return Err(shape_error(
                "clip",
                format!(
                    "{} image values for batch {} at {}px ({expected} expected)",
                    inputs.images.len(),
                    inputs.batch,
                    v.image_size
                ),
            ));
        }
        let params = self.params.bind(g);
        let shape = [inputs.batch, 3, v.image_size, v.image_size];
        let images = match &inputs.images {
            Input::Host(values) => g.constant(values, &shape)?,
            Input::Stored(values) => g.from_storage(values.clone(), &shape, false)?,
        };
        let tokens = vision::embed(g, &params, v, images)?;
        let kept = inputs.kept.as_ref();
        let image = vision::encode(g, &params, v, self.config.activation, tokens, kept)?;
        let text = text::encode(
            g,
            &params,
            &self.config.text,
            self.config.activation,
            inputs.tokens,
        )?;
        if g.shape(text)[0] != inputs.batch {
            return Err(shape_error(
                "clip",
                format!("{} texts for {} images", g.shape(text)[0], inputs.batch),
            ));
        }
        let image_features = g.l2_normalize(image)?;
        let text_features = g.l2_normalize(text)?;
        Ok((params, image_features, text_features))
    }
}
