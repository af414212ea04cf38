//! The ViT image tower (M1): patch embedding (a stride-p convolution as patchify + matmul),
//! class token, positions, the kept-token gather of masking (M3.5), ln_pre, blocks, ln_post on
//! the class token, projection.

use super::block::residual_block;
use super::clip::Input;
use super::config::{Activation, LAYER_NORM_EPS, VisionConfig};
use super::params::BoundParams;
use crate::graph::{Graph, OpResult, Tensor, shape_error};

/// Tokens before the encoder: class token + patch embeddings, positions added.
/// images [N, 3, H, W] -> [N, 1 + L, width].
pub fn embed(g: &mut Graph, p: &BoundParams, cfg: &VisionConfig, images: Tensor) -> OpResult {
    let patches = g.patchify(images, cfg.patch_size)?;
    let fan_in = 3 * cfg.patch_size * cfg.patch_size;
    let conv = g.reshape(p.get("visual.conv1.weight"), &[cfg.width, fan_in])?;
    let x = g.linear(patches, conv, None)?;
    let x = g.prepend_row(x, p.get("visual.class_embedding"))?;
    g.add(x, p.get("visual.positional_embedding"))
}

/// Row indices into the flattened [N·(1+L)] tokens that keep the class token and the `kept`
/// patches ([N, k] raster indices in 0..L) of each image (M3.5: positions were added before).
/// The error names an index outside 0..L or one an image keeps twice (the gather's backward
/// writes each kept row once); `Graph::kept_token_rows` is the device twin.
pub fn kept_rows(
    kept: &[u32],
    batch: usize,
    patches: usize,
) -> Result<Vec<u32>, crate::graph::ShapeError> {
    if batch == 0 || !kept.len().is_multiple_of(batch) {
        return Err(shape_error(
            "keep",
            format!("{} kept indices for {batch} images", kept.len()),
        ));
    }
    let k = kept.len() / batch;
    // The image that last kept each patch.
    let mut seen = vec![usize::MAX; patches];
    for (at, &patch) in kept.iter().enumerate() {
        let image = at / k;
        if patch as usize >= patches {
            return Err(shape_error(
                "keep",
                format!("patch index {patch} of image {image} is outside 0..{patches}"),
            ));
        }
        if std::mem::replace(&mut seen[patch as usize], image) == image {
            return Err(shape_error(
                "keep",
                format!("patch index {patch} is kept twice in image {image}"),
            ));
        }
    }
    Ok(crate::ops::gather::cpu::kept_token_rows(
        kept, batch, patches,
    ))
}

/// The encoder on embedded tokens [N, 1 + L, width], keeping only `kept` patches when given.
/// Returns image features [N, embed_dim] (not normalised).
pub fn encode(
    g: &mut Graph,
    p: &BoundParams,
    cfg: &VisionConfig,
    activation: Activation,
    tokens: Tensor,
    kept: Option<&Input<'_, u32>>,
) -> OpResult {
    let (batch, seq, width) = {
        let s = g.shape(tokens);
        (s[0], s[1], s[2])
    };
    let mut x = tokens;
    let mut seq_len = seq;
    if let Some(kept) = kept {
        let index = match kept {
            Input::Host(kept) => {
                let rows = kept_rows(kept, batch, seq - 1)?;
                g.indices(&rows, &[rows.len()])?
            }
            // Left on the device by the mask (issue 15): its indices are in range.
            Input::Stored(kept) => g.kept_token_rows(kept.clone(), batch, seq - 1)?,
        };
        seq_len = g.numel(index) / batch;
        let flat = g.reshape(x, &[batch * seq, width])?;
        let gathered = g.gather_distinct_rows(flat, index)?;
        x = g.reshape(gathered, &[batch, seq_len, width])?;
    }
    x = g.layer_norm(
        x,
        p.get("visual.ln_pre.weight"),
        p.get("visual.ln_pre.bias"),
        LAYER_NORM_EPS,
    )?;
    for layer in 0..cfg.layers {
        x = residual_block(
            g,
            p,
            &format!("visual.transformer.resblocks.{layer}."),
            x,
            cfg.heads,
            false,
            activation,
        )?;
    }
    let flat = g.reshape(x, &[batch * seq_len, width])?;
    let index = g.strided_rows(batch, seq_len)?;
    let class_token = g.gather_distinct_rows(flat, index)?;
    let class_token = g.layer_norm(
        class_token,
        p.get("visual.ln_post.weight"),
        p.get("visual.ln_post.bias"),
        LAYER_NORM_EPS,
    )?;
    g.matmul(class_token, p.get("visual.proj"))
}
