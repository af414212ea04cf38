//! The parameter table: every parameter by its OpenCLIP state_dict name, stored in one flat
//! allocation (as llm.c) so the optimizer, gradient clipping and checkpoints see one buffer.
//! Each parameter starts at a 256-byte-aligned offset, so it binds as a GPU view directly.

use std::collections::HashMap;

use crate::gpu::GpuBuf;
use crate::graph::{Backend, Graph, Storage, Tensor};

/// Storage offsets are multiples of this many words (256 bytes: WebGPU's binding alignment).
pub const ALIGN_WORDS: usize = 64;

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// OpenCLIP state_dict name, e.g. `visual.transformer.resblocks.0.attn.in_proj_weight`.
    pub name: String,
    /// Shape as OpenCLIP stores it (`logit_scale` is 0-dimensional: `[]`).
    pub shape: Vec<usize>,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// OpenCLIP's weight-decay rule (M2): no decay for tensors with fewer than 2 dimensions and
    /// for names containing "bn", "ln", "bias" or "logit_scale" (LayerNorm gains, biases, the
    /// class embedding, the temperature); token and positional embeddings are decayed.
    pub fn decays(&self) -> bool {
        let n = &self.name;
        !(self.shape.len() < 2
            || n.contains("bn")
            || n.contains("ln")
            || n.contains("bias")
            || n.contains("logit_scale"))
    }
}

/// Parameters (or any per-parameter state: gradients, Adam moments) in one flat buffer.
#[derive(Clone)]
pub struct ParamStore {
    pub specs: Vec<ParamSpec>,
    /// Word offset of each parameter in `values`.
    pub offsets: Vec<usize>,
    /// Flat length, padding included.
    pub total: usize,
    pub values: Storage,
    backend: Backend,
    index: HashMap<String, usize>,
    /// Parameters that take no gradient and no update (`--lock-image`).
    frozen: Vec<bool>,
}

/// Offsets of `specs` laid out with [`ALIGN_WORDS`] alignment, and the padded total.
pub fn layout(specs: &[ParamSpec]) -> (Vec<usize>, usize) {
    let mut offsets = Vec::with_capacity(specs.len());
    let mut total = 0;
    for spec in specs {
        offsets.push(total);
        total += spec.numel().next_multiple_of(ALIGN_WORDS);
    }
    (offsets, total)
}

impl ParamStore {
    /// A store of `specs` on `backend` holding `flat` (the padded layout of [`layout`]).
    pub fn from_flat(specs: Vec<ParamSpec>, flat: &[f32], backend: &Backend) -> ParamStore {
        let (offsets, total) = layout(&specs);
        assert_eq!(flat.len(), total, "flat parameter length");
        let index = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        ParamStore {
            values: backend.upload(flat),
            backend: backend.clone(),
            frozen: vec![false; specs.len()],
            specs,
            offsets,
            total,
            index,
        }
    }

    /// A store of zeros with the same layout (gradients, moments).
    pub fn zeros_like(&self, backend: &Backend) -> ParamStore {
        ParamStore {
            values: backend.zeros(self.total),
            backend: backend.clone(),
            ..self.clone()
        }
    }

    /// Freezes the parameters `which` selects: they bind without gradients, so backward does
    /// not reach them, and the optimizer leaves them bit for bit as they are.
    pub fn freeze(&mut self, which: impl Fn(&ParamSpec) -> bool) {
        for (frozen, spec) in self.frozen.iter_mut().zip(&self.specs) {
            *frozen |= which(spec);
        }
    }

    pub fn is_frozen(&self, i: usize) -> bool {
        self.frozen[i]
    }

    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Number of scalars (without padding).
    pub fn numel(&self) -> usize {
        self.specs.iter().map(ParamSpec::numel).sum()
    }

    /// Parameter `i`'s storage: a view of the flat GPU buffer, or a copy of the CPU slice.
    pub fn storage(&self, i: usize) -> Storage {
        let (offset, len) = (self.offsets[i], self.specs[i].numel());
        match &self.values {
            Storage::Gpu(buf) => Storage::Gpu(buf.view(offset, len)),
            Storage::Cpu(flat) => {
                Storage::Cpu(std::sync::Arc::new(flat[offset..offset + len].to_vec()))
            }
        }
    }

    /// The flat GPU buffer (GPU stores only).
    pub fn gpu_buffer(&self) -> Option<&GpuBuf> {
        match &self.values {
            Storage::Gpu(buf) => Some(buf),
            Storage::Cpu(_) => None,
        }
    }

    /// Adds every parameter to `g` as a leaf that needs a gradient (unless frozen); graph shapes
    /// are at least 1-D (`logit_scale` becomes `[1]`).
    pub fn bind(&self, g: &mut Graph) -> BoundParams {
        self.bind_with(g, true)
    }

    /// Adds the parameters without gradients (evaluation: nothing goes on the tape).
    pub fn bind_frozen(&self, g: &mut Graph) -> BoundParams {
        self.bind_with(g, false)
    }

    fn bind_with(&self, g: &mut Graph, requires_grad: bool) -> BoundParams {
        let tensors = (0..self.len())
            .map(|i| {
                let shape = if self.specs[i].shape.is_empty() {
                    vec![1]
                } else {
                    self.specs[i].shape.clone()
                };
                g.from_storage(self.storage(i), &shape, requires_grad && !self.frozen[i])
                    .expect("parameter storage matches its shape")
            })
            .collect();
        BoundParams {
            tensors,
            index: self.index.clone(),
        }
    }

    /// The backend the values live on (a CPU store has no device handle: CPU).
    pub fn values_backend(&self) -> Backend {
        self.backend.clone()
    }

    /// Copies the values to the host, in layout order (padding included).
    pub async fn flat_host_async(&self, g: &Graph) -> Vec<f32> {
        g.read_async(&self.values).await
    }

    /// Blocking [`ParamStore::flat_host_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn flat_host(&self, g: &Graph) -> Vec<f32> {
        crate::gpu::block_on(self.flat_host_async(g))
    }

    /// (name, shape, values) of every parameter, read to the host (what a checkpoint holds).
    pub async fn to_host_async(&self, g: &Graph) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let flat = self.flat_host_async(g).await;
        self.specs
            .iter()
            .zip(&self.offsets)
            .map(|(s, &o)| {
                (
                    s.name.clone(),
                    s.shape.clone(),
                    flat[o..o + s.numel()].to_vec(),
                )
            })
            .collect()
    }

    /// Blocking [`ParamStore::to_host_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_host(&self, g: &Graph) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        crate::gpu::block_on(self.to_host_async(g))
    }
}

/// The graph tensors of a [`ParamStore`], by name.
pub struct BoundParams {
    pub tensors: Vec<Tensor>,
    index: HashMap<String, usize>,
}

impl BoundParams {
    /// The tensor of parameter `name`; panics on a name the model did not declare (a bug).
    pub fn get(&self, name: &str) -> Tensor {
        let i = self
            .index
            .get(name)
            .unwrap_or_else(|| panic!("no parameter named {name}"));
        self.tensors[*i]
    }
}
