//! The pre-norm residual attention block of OpenCLIP (M1): LN -> multi-head self-attention ->
//! residual; LN -> MLP(4×, exact GELU, or QuickGELU for OpenAI-lineage weights) -> residual.

use super::config::{Activation, LAYER_NORM_EPS};
use super::params::BoundParams;
use crate::graph::{Graph, OpResult, Tensor};

/// One block on x [batch, tokens, width]; `prefix` ends with a dot.
pub fn residual_block(
    g: &mut Graph,
    p: &BoundParams,
    prefix: &str,
    x: Tensor,
    heads: usize,
    causal: bool,
    activation: Activation,
) -> OpResult {
    let w = |name: &str| p.get(&format!("{prefix}{name}"));
    let h = g.layer_norm(x, w("ln_1.weight"), w("ln_1.bias"), LAYER_NORM_EPS)?;
    let qkv = g.linear(h, w("attn.in_proj_weight"), Some(w("attn.in_proj_bias")))?;
    let attended = g.attention(qkv, heads, causal)?;
    let h = g.linear(
        attended,
        w("attn.out_proj.weight"),
        Some(w("attn.out_proj.bias")),
    )?;
    let x = g.add(x, h)?;
    let h = g.layer_norm(x, w("ln_2.weight"), w("ln_2.bias"), LAYER_NORM_EPS)?;
    let h = g.linear(h, w("mlp.c_fc.weight"), Some(w("mlp.c_fc.bias")))?;
    let h = g.activation(h, activation)?;
    let h = g.linear(h, w("mlp.c_proj.weight"), Some(w("mlp.c_proj.bias")))?;
    g.add(x, h)
}
