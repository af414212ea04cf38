//! Pooled storage buffers. A [`GpuBuf`] is a view (offset + length in 32-bit words) into a
//! pooled buffer; when the last view drops, the buffer returns to the pool, so a training step
//! creates no buffer in steady state.
//!
//! Reuse inside one unsubmitted encoder is safe: WebGPU orders dispatches as if sequential.
//! Only uploads need care (a queue write lands before the whole encoder), see `Gpu::upload`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Storage-binding offsets must be multiples of 256 bytes (WebGPU's default alignment).
pub const BINDING_ALIGN_WORDS: usize = 64;

#[derive(Default)]
pub(super) struct BufferPool {
    /// Idle buffers by size class, with the recorder epoch in which they were last bound: a
    /// buffer freed inside the open encoder must not take a queue write (see `Gpu::write`).
    free: HashMap<u64, Vec<(wgpu::Buffer, u64)>>,
    pub stats: PoolStats,
}

/// What the pool holds. Buffers are only created when no idle one fits, so in a steady state
/// (the same step again and again) the peaks stop moving.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub bytes_in_use: u64,
    pub bytes_free: u64,
    pub buffers_in_use: u64,
    pub buffers_free: u64,
    /// High-water mark of the bytes held (in use + idle) since the device opened.
    pub peak_bytes: u64,
    /// High-water mark of the buffers held (in use + idle).
    pub peak_buffers: u64,
    /// Buffers created since the device opened.
    pub created: u64,
}

impl PoolStats {
    pub fn bytes_held(&self) -> u64 {
        self.bytes_in_use + self.bytes_free
    }

    pub fn buffers_held(&self) -> u64 {
        self.buffers_in_use + self.buffers_free
    }
}

/// Size classes: four per doubling, so at most 25% of a buffer is slack.
pub(super) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let top = 63 - bytes.leading_zeros() as u64;
    let step = 1u64 << top.saturating_sub(2);
    bytes.div_ceil(step) * step
}

impl BufferPool {
    pub(super) fn take(&mut self, device: &wgpu::Device, class: u64) -> (wgpu::Buffer, u64) {
        let stats = &mut self.stats;
        stats.bytes_in_use += class;
        stats.buffers_in_use += 1;
        if let Some(entry) = self.free.get_mut(&class).and_then(|list| list.pop()) {
            stats.bytes_free -= class;
            stats.buffers_free -= 1;
            return entry;
        }
        stats.created += 1;
        stats.peak_bytes = stats.peak_bytes.max(stats.bytes_held());
        stats.peak_buffers = stats.peak_buffers.max(stats.buffers_held());
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pooled"),
            size: class,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        (buffer, u64::MAX)
    }

    fn give_back(&mut self, class: u64, buffer: wgpu::Buffer, last_bound_epoch: u64) {
        self.stats.bytes_in_use -= class;
        self.stats.buffers_in_use -= 1;
        self.stats.bytes_free += class;
        self.stats.buffers_free += 1;
        self.free
            .entry(class)
            .or_default()
            .push((buffer, last_bound_epoch));
    }

    /// Frees every idle buffer (e.g. after a change of batch size).
    pub(super) fn trim(&mut self) {
        self.free.clear();
        self.stats.bytes_free = 0;
        self.stats.buffers_free = 0;
    }
}

pub(super) struct Pooled {
    pub buffer: Option<wgpu::Buffer>,
    pub class: u64,
    /// Unique id, for bind-group caching and upload hazards.
    pub id: u64,
    /// The recorder epoch (submission count) in which a dispatch last bound this buffer.
    pub last_bound_epoch: std::sync::atomic::AtomicU64,
    pool: Weak<Mutex<BufferPool>>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let (Some(buffer), Some(pool)) = (self.buffer.take(), self.pool.upgrade()) {
            let epoch = self
                .last_bound_epoch
                .load(std::sync::atomic::Ordering::Relaxed);
            // Tolerate a poisoned pool: a panic while unwinding would abort the process.
            pool.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .give_back(self.class, buffer, epoch);
        }
    }
}

/// A view of `len` f32/u32 words at word `offset` of a pooled GPU buffer. Cheap to clone.
#[derive(Clone)]
pub struct GpuBuf {
    pub(super) inner: Arc<Pooled>,
    pub(super) offset: usize,
    pub(super) len: usize,
}

impl GpuBuf {
    pub(super) fn new(pool: &Arc<Mutex<BufferPool>>, device: &wgpu::Device, len: usize) -> GpuBuf {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let class = size_class((len * 4) as u64);
        let (buffer, last_bound_epoch) = pool.lock().unwrap().take(device, class);
        GpuBuf {
            inner: Arc::new(Pooled {
                buffer: Some(buffer),
                class,
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                last_bound_epoch: std::sync::atomic::AtomicU64::new(last_bound_epoch),
                pool: Arc::downgrade(pool),
            }),
            offset: 0,
            len,
        }
    }

    /// A buffer outside the pool with its own `usage` (the uniform and indirect buffers of a
    /// dispatch plan, src/gpu/plan.rs), freed when its last view drops.
    pub(super) fn dedicated(
        device: &wgpu::Device,
        len: usize,
        usage: wgpu::BufferUsages,
    ) -> GpuBuf {
        let bytes = (len.max(1) * 4) as u64;
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dedicated"),
            size: bytes.next_multiple_of(256),
            usage,
            mapped_at_creation: false,
        });
        Self::wrap(Some(buffer), len)
    }

    /// A view of no buffer: what a dry run (src/gpu/plan.rs) allocates, where nothing runs.
    pub(super) fn detached(len: usize) -> GpuBuf {
        Self::wrap(None, len)
    }

    fn wrap(buffer: Option<wgpu::Buffer>, len: usize) -> GpuBuf {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 62);
        GpuBuf {
            inner: Arc::new(Pooled {
                buffer,
                class: 0,
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                last_bound_epoch: std::sync::atomic::AtomicU64::new(u64::MAX),
                pool: Weak::new(),
            }),
            offset: 0,
            len,
        }
    }

    /// Whether two views share one buffer.
    pub(super) fn shares_buffer(&self, other: &GpuBuf) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Number of 32-bit words in the view.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A sub-view; `offset` (in words) must keep the 256-byte binding alignment.
    pub fn view(&self, offset: usize, len: usize) -> GpuBuf {
        assert!(
            offset.is_multiple_of(BINDING_ALIGN_WORDS),
            "view offset {offset} is not 256-byte aligned"
        );
        assert!(
            offset + len <= self.len,
            "view {offset}+{len} past the end ({})",
            self.len
        );
        GpuBuf {
            inner: self.inner.clone(),
            offset: self.offset + offset,
            len,
        }
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        self.inner
            .buffer
            .as_ref()
            .expect("pooled buffer present until drop")
    }

    pub fn byte_offset(&self) -> u64 {
        (self.offset * 4) as u64
    }

    /// Binding size in bytes; never zero, since WebGPU refuses empty bindings.
    pub fn byte_len(&self) -> u64 {
        (self.len.max(1) * 4) as u64
    }

    pub(super) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer(),
            offset: self.byte_offset(),
            size: std::num::NonZeroU64::new(self.byte_len()),
        })
    }

    /// Same buffer and range: used to detect aliasing between inputs and outputs.
    pub fn same_as(&self, other: &GpuBuf) -> bool {
        self.inner.id == other.inner.id && self.offset == other.offset && self.len == other.len
    }
}
