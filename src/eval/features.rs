//! Frozen feature extraction in batches (no tape, no gradients, no masking).

use crate::graph::{Graph, ShapeError};
use crate::model::{Clip, text, vision};

/// Normalised image features [n, embed_dim] of normalised images [n, 3, S, S].
pub async fn encode_images_async(
    clip: &Clip,
    images: &[f32],
    batch_size: usize,
) -> Result<Vec<f32>, ShapeError> {
    let v = &clip.config.vision;
    let per_image = 3 * v.image_size * v.image_size;
    let mut out = Vec::with_capacity(images.len() / per_image * clip.config.embed_dim);
    for chunk in images.chunks(per_image * batch_size.max(1)) {
        let n = chunk.len() / per_image;
        let mut g = Graph::new(clip.params.values_backend());
        let params = clip.params.bind_frozen(&mut g);
        let x = g.constant(chunk, &[n, 3, v.image_size, v.image_size])?;
        let tokens = vision::embed(&mut g, &params, v, x)?;
        let features = vision::encode(&mut g, &params, v, clip.config.activation, tokens, None)?;
        let features = g.l2_normalize(features)?;
        out.extend(g.to_vec_async(features).await);
    }
    Ok(out)
}

/// Normalised text features [n, embed_dim] of token ids [n, context].
pub async fn encode_texts_async(
    clip: &Clip,
    tokens: &[u32],
    batch_size: usize,
) -> Result<Vec<f32>, ShapeError> {
    let ctx = clip.config.text.context_length;
    let mut out = Vec::with_capacity(tokens.len() / ctx * clip.config.embed_dim);
    for chunk in tokens.chunks(ctx * batch_size.max(1)) {
        let mut g = Graph::new(clip.params.values_backend());
        let params = clip.params.bind_frozen(&mut g);
        let features = text::encode(
            &mut g,
            &params,
            &clip.config.text,
            clip.config.activation,
            chunk,
        )?;
        let features = g.l2_normalize(features)?;
        out.extend(g.to_vec_async(features).await);
    }
    Ok(out)
}

/// Blocking [`encode_images_async`] (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn encode_images(
    clip: &Clip,
    images: &[f32],
    batch_size: usize,
) -> Result<Vec<f32>, ShapeError> {
    crate::gpu::block_on(encode_images_async(clip, images, batch_size))
}

/// Blocking [`encode_texts_async`] (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn encode_texts(
    clip: &Clip,
    tokens: &[u32],
    batch_size: usize,
) -> Result<Vec<f32>, ShapeError> {
    crate::gpu::block_on(encode_texts_async(clip, tokens, batch_size))
}
