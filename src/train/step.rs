//! One training step: forward, loss, backward, gradients into the flat buffer, AdamW — all
//! recorded into one command encoder and one submit; the loss is read back only on request.

use crate::graph::{Backend, Graph, ShapeError, Storage};
use crate::model::{Clip, ClipInputs};

use super::optimizer::{AdamWConfig, Optimizer};

pub struct Trainer {
    pub clip: Clip,
    pub optimizer: Optimizer,
    pub backend: Backend,
}

/// What one step reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepReport {
    /// The loss before the update, if it was read back.
    pub loss: Option<f32>,
}

impl Trainer {
    pub fn new(clip: Clip, backend: Backend, config: AdamWConfig) -> Trainer {
        let optimizer = Optimizer::new(&clip.params, &backend, config);
        Trainer {
            clip,
            optimizer,
            backend,
        }
    }

    /// Forward + backward of one micro-batch into the flat gradients (added when `accumulate`).
    /// Returns the loss, still on the device.
    pub fn accumulate_gradients(
        &mut self,
        inputs: &ClipInputs,
        accumulate: bool,
    ) -> Result<Storage, ShapeError> {
        let mut g = Graph::new(self.backend.clone());
        let out = self.clip.forward(&mut g, inputs)?;
        g.backward(out.loss)?;
        self.optimizer.gather_grads(&g, &out.params, accumulate);
        Ok(g.storage(out.loss).clone())
    }

    /// One optimizer step over `micro_batches` (gradients averaged), at learning rate `lr`.
    pub fn step(
        &mut self,
        micro_batches: &[ClipInputs],
        lr: f32,
        read_loss: bool,
    ) -> Result<StepReport, ShapeError> {
        let mut losses = Vec::new();
        for (i, inputs) in micro_batches.iter().enumerate() {
            losses.push(self.accumulate_gradients(inputs, i > 0)?);
        }
        self.optimizer
            .scale_grads(&self.backend, 1.0 / micro_batches.len().max(1) as f32);
        self.optimizer
            .step(&mut self.clip.params, &self.backend, lr);
        // The read submits the whole step at once; otherwise submit without waiting.
        let loss = if read_loss {
            let values: Vec<f32> = losses
                .iter()
                .map(|l| read_storage(&self.backend, l)[0])
                .collect();
            Some(values.iter().sum::<f32>() / values.len().max(1) as f32)
        } else {
            if let Backend::Gpu(gpu) = &self.backend {
                gpu.flush();
            }
            None
        };
        Ok(StepReport { loss })
    }
}

/// Reads storage of `backend` to the host.
pub fn read_storage(backend: &Backend, value: &Storage) -> Vec<f32> {
    match (backend, value) {
        (_, Storage::Cpu(v)) => v.to_vec(),
        (Backend::Gpu(gpu), Storage::Gpu(b)) => gpu.read_f32(b).unwrap_or_else(|e| panic!("{e}")),
        (Backend::Cpu, Storage::Gpu(_)) => panic!("GPU storage on the CPU backend"),
    }
}
