//! The GPU runtime: adapter choice, a buffer pool, a kernel (pipeline) cache and a recorder that
//! puts every dispatch of a step into one command encoder and one submit, and dispatch plans
//! (plan.rs) for a step whose shapes hang on a count the GPU computes in that step.
//!
//! Conventions every WGSL file follows (see `shaders/`):
//! - `@group(0) @binding(0) var<uniform> params: ...` holds the dispatch's small parameters;
//! - storage buffers sit at `@binding(1)`, `@binding(2)`, ...; an entry point's layout holds
//!   just the bindings it uses, and callers bind buffers by the WGSL global's name
//!   ([`Gpu::dispatch`]);
//! - workgroup sizes and tile sizes are WGSL `const`s, read back through naga reflection (one
//!   source of truth);
//! - 1-D kernels index with [`linear_grid`]'s rule (a 2-D grid past 65,535 workgroups), the
//!   prelude's `linear_index` ([`prelude`], appended to every shader).
//!
//! The runtime is single-threaded in spirit but `Sync` on native so test threads can share one
//! device and one pipeline cache; the locks are never contended in the training loop.

mod adapter;
mod buffer;
mod kernel;
mod params;
mod plan;
pub mod prelude;
mod readback;
mod recorder;

pub use adapter::{AdapterSummary, BackendChoice, GpuOptions};
#[cfg(not(target_arch = "wasm32"))]
pub use adapter::{adapter_summaries, quiet_mesa_device_select};
pub use buffer::{BINDING_ALIGN_WORDS, GpuBuf, PoolStats};
pub use kernel::{Kernel, Shader, validate_wgsl};
pub use params::{KernelParams, ParamsLayout};
pub use plan::DispatchPlan;
pub(crate) use plan::Params as PlanParams;
pub use plan::cpu as plan_cpu;
#[cfg(not(target_arch = "wasm32"))]
pub use readback::block_on;
pub use recorder::Binding;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use buffer::BufferPool;
use recorder::Recorder;

/// One GPU device with its caches. Share it as `Arc<Gpu>`.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// What the adapter can do below WebGPU's bar (indirect dispatch for dispatch plans).
    pub downlevel: wgpu::DownlevelCapabilities,
    /// wgpu's runtime bounds checks in shaders: on in debug builds and tests, off in release
    /// builds, where every shader guards its own indices (the checks cost 2x on lavapipe).
    pub bounds_checks: bool,
    /// One slot per entry point, locked while its pipeline builds: threads asking for the same
    /// kernel at once wait for one build (LLVM takes up to 20 s for a matmul on lavapipe)
    /// instead of each compiling it.
    kernels: Mutex<HashMap<(&'static str, String), kernel::KernelSlot>>,
    modules: Mutex<HashMap<&'static str, Arc<kernel::Module>>>,
    pool: Arc<Mutex<BufferPool>>,
    recorder: Mutex<Recorder>,
    poison: std::sync::atomic::AtomicBool,
    /// Largest storage binding in bytes: the device's limit, or lower in tests (see
    /// [`Gpu::set_binding_limit`]).
    binding_limit: std::sync::atomic::AtomicU64,
    /// Matmuls run on the workgroup-memory kernel made for hardware GPUs (true) or the
    /// register-tile kernels tuned for CPU drivers such as lavapipe (false); see
    /// [`Gpu::set_tiled_matmul`].
    tiled_matmul: std::sync::atomic::AtomicBool,
    /// Per-kernel wall time when profiling (`CLUSTERCLIP_PROFILE=1` or [`Gpu::set_profiling`]):
    /// every dispatch is then submitted and waited for on its own, so totals are exact per
    /// kernel but the step as a whole runs slower than normal.
    profile: Mutex<Option<HashMap<String, KernelTime>>>,
    /// The first error wgpu reported outside an error scope, as one line. wgpu's default handler
    /// panics (with a backtrace, or an abort when a lock is held); a stored error reaches the
    /// user as a `Result` at the next read instead.
    device_error: Arc<Mutex<Option<String>>>,
}

/// One binding-sized piece of a buffer range (see [`Gpu::binding_chunks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingChunk {
    /// First element of the piece, relative to the range's start (binding aligned).
    pub at: usize,
    /// Start of the aligned view that holds the piece, in buffer elements.
    pub view_offset: usize,
    /// The piece's first element inside that view (below the alignment).
    pub inner: usize,
    pub len: usize,
}

impl BindingChunk {
    /// The view of `buf` that holds this piece.
    pub fn view(&self, buf: &GpuBuf) -> GpuBuf {
        buf.view(self.view_offset, self.inner + self.len)
    }
}

/// Time spent in one kernel while profiling.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelTime {
    pub dispatches: u64,
    pub seconds: f64,
}

/// Everything that can go wrong talking to the GPU, as one line for the user.
#[derive(Debug)]
pub enum GpuError {
    NoAdapter(String),
    RequestDevice(String),
    Shader {
        name: String,
        message: String,
    },
    Map(String),
    /// A wgpu validation or out-of-memory error, reported at the next read (see
    /// [`Gpu::check_errors`]).
    Device(String),
}

impl std::fmt::Display for GpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuError::NoAdapter(why) => write!(
                f,
                "no GPU adapter found ({why}); install a Vulkan driver, e.g. Mesa's software \
                 rasteriser lavapipe: `apt-get install mesa-vulkan-drivers`"
            ),
            GpuError::RequestDevice(why) => write!(f, "could not open the GPU device: {why}"),
            GpuError::Shader { name, message } => write!(f, "shader {name}: {message}"),
            GpuError::Map(why) => write!(f, "reading a GPU buffer back failed: {why}"),
            GpuError::Device(why) => write!(f, "the GPU refused the work: {why}"),
        }
    }
}

impl std::error::Error for GpuError {}

/// wgpu's multi-line error report ("Validation Error", "Caused by:", indented causes) as one
/// line of its causes.
fn one_line(report: &str) -> String {
    let parts: Vec<&str> = report
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "Caused by:" && *l != "Validation Error")
        .collect();
    if parts.is_empty() {
        report.trim().to_string()
    } else {
        parts.join(": ")
    }
}

/// Largest workgroup count per grid dimension in WebGPU's default limits.
pub const MAX_GROUPS_PER_DIM: u32 = 65_535;

/// The grid for a 1-D kernel of `threads` invocations in workgroups of `workgroup` lanes.
/// Past 65,535 workgroups the grid folds into y; shaders rebuild the index as
/// `(wid.y * nwg.x + wid.x) * WG + lid.x` and guard it against the element count.
pub fn linear_grid(threads: usize, workgroup: u32) -> [u32; 3] {
    let groups = threads.div_ceil(workgroup as usize).max(1);
    if groups <= MAX_GROUPS_PER_DIM as usize {
        [groups as u32, 1, 1]
    } else {
        let y = groups.div_ceil(MAX_GROUPS_PER_DIM as usize);
        [MAX_GROUPS_PER_DIM, y as u32, 1]
    }
}

impl Gpu {
    /// Blocking [`Gpu::new_async`] (native only: a browser tab awaits the async form).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(options: &GpuOptions) -> Result<Arc<Gpu>, GpuError> {
        block_on(Self::new_async(options))
    }

    /// Opens the adapter chosen by `options` (see [`GpuOptions`]).
    pub async fn new_async(options: &GpuOptions) -> Result<Arc<Gpu>, GpuError> {
        let adapter = adapter::choose(options).await?;
        let info = adapter.get_info();
        let downlevel = adapter.get_downlevel_capabilities();
        let supported = adapter.limits();
        // Shaders stay within WebGPU's default limits; only buffer sizes follow the adapter so
        // large tensors need no splitting where the hardware allows big bindings. A browser tab
        // asks for the defaults alone (issue 12): large batches split (Trainer::step_async).
        let limits = if cfg!(target_arch = "wasm32") {
            wgpu::Limits::default()
        } else {
            wgpu::Limits {
                max_buffer_size: supported.max_buffer_size,
                max_storage_buffer_binding_size: supported.max_storage_buffer_binding_size,
                ..wgpu::Limits::default()
            }
        };
        let features =
            adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("clusterclip"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::RequestDevice(e.to_string()))?;
        let device_error = Arc::new(Mutex::new(None));
        let first_error = Arc::clone(&device_error);
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            // Later errors are mostly echoes of the first (invalid objects used again).
            if let Ok(mut slot) = first_error.lock() {
                slot.get_or_insert_with(|| one_line(&error.to_string()));
            }
        }));
        let bounds_checks = options.bounds_checks.unwrap_or(cfg!(debug_assertions));
        let tiled_matmul = options
            .tiled_matmul
            .unwrap_or(info.device_type != wgpu::DeviceType::Cpu);
        let binding_limit = options
            .max_binding_bytes
            .map_or(limits.max_storage_buffer_binding_size, |b| {
                b.min(limits.max_storage_buffer_binding_size)
            });
        Ok(Arc::new(Gpu {
            recorder: Mutex::new(Recorder::new()),
            device,
            queue,
            info,
            limits,
            features,
            downlevel,
            bounds_checks,
            kernels: Mutex::new(HashMap::new()),
            modules: Mutex::new(HashMap::new()),
            pool: Arc::new(Mutex::new(BufferPool::default())),
            poison: std::sync::atomic::AtomicBool::new(false),
            binding_limit: std::sync::atomic::AtomicU64::new(binding_limit),
            tiled_matmul: std::sync::atomic::AtomicBool::new(tiled_matmul),
            profile: Mutex::new(
                (std::env::var("CLUSTERCLIP_PROFILE").is_ok_and(|v| v == "1")).then(HashMap::new),
            ),
            device_error,
        }))
    }

    /// The first error wgpu reported since the device opened, if any. It stays: every result
    /// computed after it is suspect. Reads check it; call it after work that reads nothing.
    pub fn check_errors(&self) -> Result<(), GpuError> {
        match self.device_error.lock().map(|slot| slot.clone()) {
            Ok(None) => Ok(()),
            Ok(Some(message)) => Err(GpuError::Device(message)),
            Err(_) => Err(GpuError::Device(
                "an earlier GPU error poisoned its record".into(),
            )),
        }
    }

    /// A one-line description: adapter name, backend and driver.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}, driver {} {})",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver,
            self.info.driver_info
        )
    }

    /// What the buffer pool holds now, and its high-water marks.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.lock().unwrap().stats
    }

    /// Dispatches recorded since the device was opened.
    pub fn dispatch_count(&self) -> u64 {
        self.recorder.lock().unwrap().dispatches
    }

    /// The lanes of every subgroup when the device runs subgroup operations and its subgroups
    /// have one size (lavapipe: 8, its SIMD width), else None.
    pub fn fixed_subgroup_size(&self) -> Option<u32> {
        let fixed = self.info.subgroup_min_size == self.info.subgroup_max_size;
        (self.features.contains(wgpu::Features::SUBGROUP) && fixed)
            .then_some(self.info.subgroup_min_size)
    }

    /// Whether matmuls use the workgroup-memory kernel for hardware GPUs (`matmul_tiled`).
    pub fn tiled_matmul(&self) -> bool {
        self.tiled_matmul.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Chooses the matmul kernels: the workgroup-memory kernel for hardware GPUs (the default
    /// on non-CPU adapters) or the register-tile kernels tuned for CPU drivers.
    pub fn set_tiled_matmul(&self, on: bool) {
        self.tiled_matmul
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Largest storage binding in 32-bit words, a multiple of the 256-byte view alignment.
    pub fn binding_limit_words(&self) -> usize {
        let bytes = self
            .binding_limit
            .load(std::sync::atomic::Ordering::Relaxed);
        (bytes / 4) as usize / buffer::BINDING_ALIGN_WORDS * buffer::BINDING_ALIGN_WORDS
    }

    /// Tests: pretend the device binds at most `bytes` per storage binding (`None`: the device's
    /// own limit), so the splitting of large tensors runs on small models.
    pub fn set_binding_limit(&self, bytes: Option<u64>) {
        let device = self.limits.max_storage_buffer_binding_size;
        let bytes = bytes.map_or(device, |b| b.min(device));
        self.binding_limit
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Cuts elements `offset..offset + len` of a buffer into pieces that each fit one binding
    /// (WebGPU's default is 128 MiB, which a ViT-B/16's flat parameter, gradient and moment
    /// buffers exceed). Piece starts are `offset` plus multiples of a binding-aligned step, so
    /// a same-length buffer that starts at `offset`'s 0 can be cut the same way.
    pub fn binding_chunks(&self, offset: usize, len: usize) -> Vec<BindingChunk> {
        let align = buffer::BINDING_ALIGN_WORDS;
        let step = self.binding_limit_words().saturating_sub(align).max(align);
        (0..len)
            .step_by(step)
            .map(|at| {
                let start = offset + at;
                let view_offset = start / align * align;
                BindingChunk {
                    at,
                    view_offset,
                    inner: start - view_offset,
                    len: step.min(len - at),
                }
            })
            .collect()
    }

    /// Turns per-kernel profiling on (clearing earlier totals) or off.
    pub fn set_profiling(&self, on: bool) {
        *self.profile.lock().unwrap() = on.then(HashMap::new);
    }

    /// Per-kernel totals since profiling was turned on, slowest first.
    pub fn profile(&self) -> Vec<(String, KernelTime)> {
        let mut rows: Vec<_> = self
            .profile
            .lock()
            .unwrap()
            .iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.clone(), *v)))
            .collect();
        rows.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
        rows
    }

    /// Submissions since the device was opened.
    pub fn submit_count(&self) -> u64 {
        self.recorder.lock().unwrap().submits
    }

    /// Reads back to the host since the device was opened (each is a wait for the GPU).
    pub fn read_count(&self) -> u64 {
        self.recorder.lock().unwrap().reads
    }

    /// Bytes of host data uploaded since the device was opened (`upload_f32`, `upload_u32`;
    /// dispatch parameters and test poisoning aside).
    pub fn uploaded_bytes(&self) -> u64 {
        self.recorder.lock().unwrap().uploaded_bytes
    }
}
