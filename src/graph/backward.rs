//! Reverse-mode autodiff over the tape.
//!
//! Contract: every backward arm receives the upstream gradient of the op's output (same length
//! as the output) and adds the gradient of each input that needs one through
//! [`Graph::accumulate`]; gradients accumulate by addition, so an input used twice gets the sum.
//! Each op's backward lives in its own file beside its forward (`src/ops/`).

use super::{Graph, Storage, Tensor};
use crate::ops;

/// A recorded op: its inputs and what its backward needs.
#[derive(Clone, Debug)]
pub enum Op {
    Matmul(ops::matmul::MatmulOp),
    Add(ops::elementwise::AddOp),
    Reshape(Tensor),
    Patchify(ops::patches::PatchifyOp),
    PrependRow(ops::patches::PrependRowOp),
    LayerNorm(ops::layer_norm::LayerNormOp),
    Gelu(ops::gelu::GeluOp),
    L2Normalize(ops::l2_normalize::L2NormalizeOp),
    Attention(ops::attention::AttentionOp),
    Mul(ops::elementwise::MulOp),
    Scale(ops::elementwise::ScaleOp),
    Reduce(ops::reduce::ReduceOp),
    GatherRows(ops::gather::GatherRowsOp),
    ScatterAddRows(ops::gather::ScatterAddRowsOp),
    Softmax(ops::softmax::SoftmaxOp),
    ContrastiveLoss(ops::contrastive::ContrastiveOp),
}

impl Graph {
    /// Computes d`loss`/d`t` for every tensor `t` that needs a gradient. `loss` must hold one value.
    pub fn backward(&mut self, loss: Tensor) -> Result<(), super::ShapeError> {
        if self.numel(loss) != 1 {
            let shape = self.shape(loss);
            let message = format!("the loss must hold one value, got shape {shape:?}");
            return Err(super::shape_error("backward", message));
        }
        self.backward_from(loss, &[1.0])
    }

    /// Backward from `out` with a given upstream gradient d(loss)/d(out) (e.g. random weights
    /// in a gradient check).
    pub fn backward_from(
        &mut self,
        out: Tensor,
        grad_out: &[f32],
    ) -> Result<(), super::ShapeError> {
        if grad_out.len() != self.numel(out) {
            let shape = self.shape(out);
            let message = format!("{} upstream values for shape {shape:?}", grad_out.len());
            return Err(super::shape_error("backward", message));
        }
        for grad in &mut self.grads {
            *grad = None;
        }
        let seed = self.backend.upload(grad_out);
        self.accumulate(out, seed);
        let tape = std::mem::take(&mut self.tape);
        for (out, op) in tape.iter().rev() {
            let Some(grad) = self.grads[out.0].clone() else {
                continue;
            };
            match op {
                Op::Matmul(op) => ops::matmul::backward(self, op, &grad),
                Op::Add(op) => ops::elementwise::add_backward(self, op, &grad),
                Op::Reshape(input) => self.accumulate(*input, grad),
                Op::Patchify(op) => ops::patches::patchify_backward(self, op, &grad),
                Op::PrependRow(op) => ops::patches::prepend_row_backward(self, op, &grad),
                Op::LayerNorm(op) => ops::layer_norm::backward(self, op, &grad),
                Op::Gelu(op) => ops::gelu::backward(self, op, &grad),
                Op::L2Normalize(op) => ops::l2_normalize::backward(self, op, &grad),
                Op::Attention(op) => ops::attention::backward(self, op, &grad),
                Op::Mul(op) => ops::elementwise::mul_backward(self, op, &grad),
                Op::Scale(op) => ops::elementwise::scale_backward(self, op, &grad),
                Op::Reduce(op) => ops::reduce::backward(self, op, &grad),
                Op::GatherRows(op) => ops::gather::gather_rows_backward(self, op, &grad),
                Op::ScatterAddRows(op) => ops::gather::scatter_add_rows_backward(self, op, &grad),
                Op::Softmax(op) => ops::softmax::backward(self, op, &grad),
                Op::ContrastiveLoss(op) => ops::contrastive::backward(self, op, &grad),
            }
            // An intermediate's gradient is dead once its producer has consumed it.
            if !self.nodes[out.0].keep_grad {
                self.grads[out.0] = None;
            }
        }
        self.tape = tape;
        Ok(())
    }

    /// Keeps the gradient of an intermediate tensor after backward (leaves keep theirs anyway).
    pub fn retain_grad(&mut self, t: Tensor) {
        self.nodes[t.0].keep_grad = true;
    }

    /// Adds `grad` to the gradient of `t` (if `t` needs one).
    pub(crate) fn accumulate(&mut self, t: Tensor, grad: Storage) {
        if !self.requires_grad(t) {
            return;
        }
        assert_eq!(grad.len(), self.numel(t), "gradient length of tensor {t:?}");
        self.grads[t.0] = Some(match self.grads[t.0].take() {
            None => grad,
            Some(existing) => ops::elementwise::add_storage(&self.backend, &existing, &grad),
        });
    }
}
