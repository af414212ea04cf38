//! The recorder: every dispatch goes into one open compute pass of one command encoder; the
//! encoder is submitted only when the host needs a result (`read_*`, `flush`). Dispatch
//! parameters go into a uniform arena written once per slot, reset at each submit.

use std::sync::atomic::Ordering;

use super::plan::{ActivePlan, DispatchPlan, DryRun, PlanEvent, PlanRole, SLOT_WORDS};
use super::{Gpu, GpuBuf, Kernel, linear_grid};

/// A buffer and the name of the WGSL global it binds to: `("out", &out)`.
pub type Binding<'a> = (&'a str, &'a GpuBuf);

/// Uniform-buffer offsets must be multiples of 256 bytes (WebGPU default).
const PARAM_SLOT: u64 = 256;
const ARENA_CHUNK_SLOTS: u64 = 4096;

pub(super) struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    arena: Vec<wgpu::Buffer>,
    arena_cursor: u64,
    /// Submissions so far; a buffer bound in the current epoch is in the open encoder.
    pub epoch: u64,
    pub dispatches: u64,
    pub submits: u64,
    /// Reads back to the host (each waits for the GPU).
    pub reads: u64,
    /// Bytes of host data uploaded into new buffers (`upload_f32`, `upload_u32`).
    pub uploaded_bytes: u64,
    /// A dry run in progress (src/gpu/plan.rs): commands are logged, not recorded.
    pub dry: Option<DryRun>,
    /// A dispatch plan being replayed.
    pub active: Option<ActivePlan>,
}

impl Recorder {
    pub(super) fn new() -> Self {
        Recorder {
            encoder: None,
            pass: None,
            arena: Vec::new(),
            arena_cursor: 0,
            epoch: 0,
            dispatches: 0,
            submits: 0,
            reads: 0,
            uploaded_bytes: 0,
            dry: None,
            active: None,
        }
    }

    pub(super) fn encoder(&mut self, device: &wgpu::Device) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            })
        })
    }

    fn pass(&mut self, device: &wgpu::Device) -> &mut wgpu::ComputePass<'static> {
        if self.pass.is_none() {
            let pass = self
                .encoder(device)
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("step"),
                    timestamp_writes: None,
                })
                .forget_lifetime();
            self.pass = Some(pass);
        }
        self.pass.as_mut().unwrap()
    }

    /// Finishes and submits the open encoder, if any.
    pub(super) fn submit(&mut self, queue: &wgpu::Queue) -> Option<wgpu::SubmissionIndex> {
        self.pass = None;
        let encoder = self.encoder.take()?;
        let index = queue.submit([encoder.finish()]);
        self.arena_cursor = 0;
        self.epoch += 1;
        self.submits += 1;
        Some(index)
    }
}

impl Gpu {
    /// A new uninitialised buffer of `len` 32-bit words from the pool.
    pub fn alloc(&self, len: usize) -> GpuBuf {
        if self.dry() {
            return GpuBuf::detached(len);
        }
        let buf = GpuBuf::new(&self.pool, &self.device, len);
        if self.poison.load(Ordering::Relaxed) {
            self.fill_bits(&buf, f32::NAN.to_bits());
        }
        buf
    }

    /// Tests: fill every new allocation with NaN so an element a kernel forgets to write fails.
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    /// A buffer of `len` zeros (cleared inside the step's encoder).
    pub fn zeros(&self, len: usize) -> GpuBuf {
        let buf = self.alloc(len);
        if self.plan_event(|| PlanEvent::Clear) {
            return buf;
        }
        let mut rec = self.recorder.lock().unwrap();
        let epoch = rec.epoch;
        rec.encoder(&self.device).clear_buffer(
            buf.buffer(),
            buf.byte_offset(),
            Some(buf.byte_len()),
        );
        buf.inner.last_bound_epoch.store(epoch, Ordering::Relaxed);
        buf
    }

    /// Fills `buf` with a 32-bit pattern (e.g. NaN, to poison outputs in tests).
    pub fn fill_bits(&self, buf: &GpuBuf, bits: u32) {
        let data = vec![bits; buf.len()];
        self.write(buf, bytemuck::cast_slice(&data));
    }

    pub fn upload_f32(&self, data: &[f32]) -> GpuBuf {
        self.upload(bytemuck::cast_slice(data))
    }

    pub fn upload_u32(&self, data: &[u32]) -> GpuBuf {
        self.upload(bytemuck::cast_slice(data))
    }

    /// Host data in a new buffer, counted in [`Gpu::uploaded_bytes`].
    fn upload(&self, bytes: &[u8]) -> GpuBuf {
        let buf = self.alloc(bytes.len() / 4);
        self.write(&buf, bytes);
        let mut rec = self.recorder.lock().unwrap();
        if rec.dry.is_none() {
            rec.uploaded_bytes += bytes.len() as u64;
        }
        buf
    }

    /// Writes bytes into `buf`, ordered after every dispatch recorded so far.
    pub fn write(&self, buf: &GpuBuf, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        assert!(
            bytes.len() <= buf.len() * 4,
            "write of {} bytes into a {}-word buffer",
            bytes.len(),
            buf.len()
        );
        if self.plan_event(|| PlanEvent::write(bytes)) {
            return;
        }
        let mut rec = self.recorder.lock().unwrap();
        let epoch = rec.epoch;
        if buf.inner.last_bound_epoch.load(Ordering::Relaxed) != epoch {
            // Not used by the open encoder: a queue write (which lands before it) is safe.
            self.queue
                .write_buffer(buf.buffer(), buf.byte_offset(), bytes);
            return;
        }
        // The open encoder already uses this buffer: copy through a staging buffer in order.
        let padded = bytes.len().next_multiple_of(4) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("upload"),
            size: padded,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::MAP_WRITE,
            mapped_at_creation: true,
        });
        let mut padded_bytes = bytes.to_vec();
        padded_bytes.resize(padded as usize, 0);
        staging
            .slice(..)
            .get_mapped_range_mut()
            .expect("staging buffer is mapped at creation")
            .copy_from_slice(&padded_bytes);
        staging.unmap();
        rec.encoder(&self.device).copy_buffer_to_buffer(
            &staging,
            0,
            buf.buffer(),
            buf.byte_offset(),
            padded,
        );
    }

    /// Copies `src` into `dst` (same length) inside the step's encoder.
    pub fn copy(&self, src: &GpuBuf, dst: &GpuBuf) {
        assert_eq!(
            src.len(),
            dst.len(),
            "copy between buffers of different lengths"
        );
        self.copy_range(src, 0, dst, 0, src.len());
    }

    /// Copies `len` words of `src` from `src_offset` into `dst` at `dst_offset`, inside the step's
    /// encoder (no alignment beyond 4 bytes needed: concatenating and slicing feature rows).
    pub fn copy_range(
        &self,
        src: &GpuBuf,
        src_offset: usize,
        dst: &GpuBuf,
        dst_offset: usize,
        len: usize,
    ) {
        assert!(
            src_offset + len <= src.len() && dst_offset + len <= dst.len(),
            "copy_range past the end of a buffer"
        );
        if len == 0
            || self.plan_event(|| PlanEvent::Copy {
                src_offset,
                dst_offset,
                len,
            })
        {
            return;
        }
        let mut rec = self.recorder.lock().unwrap();
        let epoch = rec.epoch;
        rec.encoder(&self.device).copy_buffer_to_buffer(
            src.buffer(),
            src.byte_offset() + (src_offset * 4) as u64,
            dst.buffer(),
            dst.byte_offset() + (dst_offset * 4) as u64,
            (len * 4) as u64,
        );
        src.inner.last_bound_epoch.store(epoch, Ordering::Relaxed);
        dst.inner.last_bound_epoch.store(epoch, Ordering::Relaxed);
    }

    /// Records one dispatch of `kernel` with `params` at binding 0 and each of `buffers` at the
    /// binding of the WGSL global it names: `&[("x", &x), ("out", &out)]`. Every binding the
    /// entry point uses is given exactly once, and nothing else (a panic names the kernel).
    /// Nothing runs until a read or [`Gpu::flush`].
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        params: &P,
        buffers: &[Binding],
        groups: [u32; 3],
    ) {
        let buffers = in_binding_order(kernel, buffers);
        // In a dry run only logged; in a plan, maybe sized by the count on the device.
        let planned = match self.plan_dispatch(kernel, bytemuck::bytes_of(params), groups) {
            PlanRole::Logged => return,
            PlanRole::Static => None,
            PlanRole::Picked(plan, entry) => Some((plan, entry)),
        };
        if planned.is_none() && groups.contains(&0) {
            return;
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        assert!(
            planned.is_some() || groups.iter().all(|&g| g <= max),
            "{}: grid {groups:?} exceeds {max} workgroups per dimension",
            kernel.name
        );
        // Before any lock: a panic here leaves the device usable.
        if let Some(name) = aliased_write(kernel, &buffers) {
            // WebGPU refuses a buffer bound read_write beside another binding of one dispatch
            // (a usage conflict, reported late and without the kernel's name).
            panic!(
                "{}: a written binding (`{name}`) aliases another binding of the same dispatch",
                kernel.name
            );
        }
        let binding_limit = self.binding_limit_words();
        for buf in &buffers {
            assert!(
                buf.len() <= binding_limit,
                "{}: a {:.1} MiB tensor exceeds this GPU's {:.1} MiB per storage binding; \
                 use a smaller --batch-size (with --accum-freq to keep the batch)",
                kernel.name,
                (buf.len() * 4) as f64 / (1 << 20) as f64,
                (binding_limit * 4) as f64 / (1 << 20) as f64
            );
        }
        let profiling = self.profile.lock().unwrap().is_some();
        if profiling {
            // Everything recorded before (uploads, clears) is not this kernel's time.
            self.sync();
        }
        self.record_dispatch(kernel, params, &buffers, groups, planned);
        if profiling {
            let start = web_time_now();
            self.sync();
            let seconds = web_time_now() - start;
            let mut profile = self.profile.lock().unwrap();
            if let Some(map) = profile.as_mut() {
                let entry = map.entry(kernel.name.clone()).or_default();
                entry.dispatches += 1;
                entry.seconds += seconds;
            }
        }
    }

    fn record_dispatch<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        params: &P,
        buffers: &[&GpuBuf],
        groups: [u32; 3],
        planned: Option<(std::sync::Arc<DispatchPlan>, usize)>,
    ) {
        let mut rec = self.recorder.lock().unwrap();
        let epoch = rec.epoch;
        let mut entries = Vec::with_capacity(buffers.len() + 1);
        let params_bytes = bytemuck::bytes_of(params);
        assert!(
            params_bytes.len() as u64 <= PARAM_SLOT,
            "{}: params larger than 256 bytes",
            kernel.name
        );
        let slot = rec.arena_cursor;
        if kernel.uses_params && planned.is_none() {
            let chunk = (slot / ARENA_CHUNK_SLOTS) as usize;
            while rec.arena.len() <= chunk {
                let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: ARENA_CHUNK_SLOTS * PARAM_SLOT,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                rec.arena.push(buffer);
            }
            rec.arena_cursor += 1;
        }
        let mut padded = [0u8; PARAM_SLOT as usize];
        padded[..params_bytes.len()].copy_from_slice(params_bytes);
        let params_size = (params_bytes.len() as u64).next_multiple_of(16).max(16);
        let chunk = (slot / ARENA_CHUNK_SLOTS) as usize;
        let offset = (slot % ARENA_CHUNK_SLOTS) * PARAM_SLOT;
        if let Some((plan, entry)) = &planned {
            // The params of the count on the device, picked into the plan's slot (plan.rs).
            if kernel.uses_params {
                entries.push(wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: plan.params.buffer(),
                        offset: (entry * SLOT_WORDS * 4) as u64,
                        size: std::num::NonZeroU64::new(params_size),
                    }),
                });
            }
        } else if kernel.uses_params {
            self.queue
                .write_buffer(&rec.arena[chunk], offset, &padded[..params_size as usize]);
            entries.push(wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &rec.arena[chunk],
                    offset,
                    size: std::num::NonZeroU64::new(params_size),
                }),
            });
        }
        for (binding, buf) in kernel.storage.iter().zip(buffers) {
            buf.inner.last_bound_epoch.store(epoch, Ordering::Relaxed);
            entries.push(wgpu::BindGroupEntry {
                binding: binding.index,
                resource: buf.binding(),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &kernel.layout,
            entries: &entries,
        });
        rec.dispatches += 1;
        let pass = rec.pass(&self.device);
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        match &planned {
            Some((plan, entry)) => {
                pass.dispatch_workgroups_indirect(plan.indirect.buffer(), (entry * 12) as u64)
            }
            None => pass.dispatch_workgroups(groups[0], groups[1], groups[2]),
        }
    }

    /// Dispatches a 1-D kernel over `threads` invocations (see [`linear_grid`]).
    pub fn dispatch_linear<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        params: &P,
        buffers: &[Binding],
        threads: usize,
    ) {
        if threads == 0 {
            return;
        }
        self.dispatch(
            kernel,
            params,
            buffers,
            linear_grid(threads, kernel.lanes()),
        );
    }

    /// Submits everything recorded so far without waiting.
    pub fn flush(&self) {
        self.recorder.lock().unwrap().submit(&self.queue);
    }

    /// Submits and waits until the device is idle. The browser has no blocking wait: there it
    /// only submits (profiling times are then meaningless, see `web_time_now`).
    pub fn sync(&self) {
        let index = self.recorder.lock().unwrap().submit(&self.queue);
        let _ = self.device.poll(wgpu::PollType::Wait {
            submission_index: index,
            timeout: None,
        });
    }

    /// Frees idle pooled buffers.
    pub fn trim_pool(&self) {
        self.pool.lock().unwrap().trim();
    }
}

/// Seconds on a monotonic clock (profiling only; the browser build has no `Instant`).
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn web_time_now() -> f64 {
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}

#[cfg(target_arch = "wasm32")]
pub(super) fn web_time_now() -> f64 {
    0.0
}

/// `buffers` in the order of `kernel`'s storage bindings. Panics, naming the kernel, when a
/// name is not one of its bindings, a binding is given twice, or one is left out.
fn in_binding_order<'a>(kernel: &Kernel, buffers: &[Binding<'a>]) -> Vec<&'a GpuBuf> {
    let mut slots: Vec<Option<&GpuBuf>> = vec![None; kernel.storage.len()];
    for &(name, buf) in buffers {
        let Some(at) = kernel
            .storage
            .iter()
            .position(|b| b.names.iter().any(|n| n == name))
        else {
            panic!(
                "{}: no binding named `{name}` (it binds {})",
                kernel.name,
                kernel.binding_names().join(", ")
            );
        };
        assert!(
            slots[at].replace(buf).is_none(),
            "{}: binding `{name}` given twice",
            kernel.name
        );
    }
    slots
        .into_iter()
        .zip(&kernel.storage)
        .map(|(slot, binding)| {
            slot.unwrap_or_else(|| {
                panic!("{}: binding `{}` not given", kernel.name, binding.names[0])
            })
        })
        .collect()
}

/// The first binding `kernel` writes whose buffer is also bound elsewhere in the dispatch
/// (`buffers` in binding order). A few bindings per dispatch: cheap enough to check on every
/// dispatch, release builds included.
fn aliased_write<'k>(kernel: &'k Kernel, buffers: &[&GpuBuf]) -> Option<&'k str> {
    (0..buffers.len())
        .filter(|&i| kernel.storage[i].writes)
        .find(|&i| (0..buffers.len()).any(|o| o != i && buffers[o].shares_buffer(buffers[i])))
        .map(|i| kernel.storage[i].names[0].as_str())
}
