//! The text tower (M1): token embedding + positions, causal blocks, ln_final, the feature at
//! the end-of-text token (the highest id, as CLIP's argmax), text projection.

use super::block::residual_block;
use super::config::{Activation, LAYER_NORM_EPS, TextConfig};
use super::params::BoundParams;
use crate::graph::{Graph, OpResult, shape_error};

/// tokens [N, context] (zero padded) -> text features [N, embed_dim] (not normalised).
pub fn encode(
    g: &mut Graph,
    p: &BoundParams,
    cfg: &TextConfig,
    activation: Activation,
    tokens: &[u32],
) -> OpResult {
    let ctx = cfg.context_length;
    if tokens.is_empty() || !tokens.len().is_multiple_of(ctx) {
        return Err(shape_error(
            "text",
            format!(
                "{} token ids is not a multiple of the context length {ctx}",
                tokens.len()
            ),
        ));
    }
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
        return Err(shape_error(
            "text",
            format!(
                "token id {bad} is outside the vocabulary of {}",
                cfg.vocab_size
            ),
        ));
    }
    let batch = tokens.len() / ctx;
    let ids = g.indices(tokens, &[batch * ctx])?;
    let x = g.gather_rows(p.get("token_embedding.weight"), ids)?;
    let x = g.reshape(x, &[batch, ctx, cfg.width])?;
    let mut x = g.add(x, p.get("positional_embedding"))?;
    for layer in 0..cfg.layers {
        x = residual_block(
            g,
            p,
            &format!("transformer.resblocks.{layer}."),
            x,
            cfg.heads,
            true,
            activation,
        )?;
    }
    // ln_final is per token, so pooling first and normalising the pooled rows is the same.
    let pooled_rows: Vec<u32> = tokens
        .chunks(ctx)
        .enumerate()
        .map(|(i, row)| (i * ctx + end_of_text_position(row)) as u32)
        .collect();
    let flat = g.reshape(x, &[batch * ctx, cfg.width])?;
    let index = g.indices(&pooled_rows, &[batch])?;
    let pooled = g.gather_distinct_rows(flat, index)?;
    let pooled = g.layer_norm(
        pooled,
        p.get("ln_final.weight"),
        p.get("ln_final.bias"),
        LAYER_NORM_EPS,
    )?;
    g.matmul(pooled, p.get("text_projection"))
}

/// Position of the highest id (the first, as torch.argmax) in one row.
pub fn end_of_text_position(row: &[u32]) -> usize {
    let mut best = 0;
    for (i, &id) in row.iter().enumerate() {
        if id > row[best] {
            best = i;
        }
    }
    best
}
