//! Adapter choice: `--backend auto|vulkan|metal|dx12|gl`, `--adapter SUBSTRING`, or the
//! environment variables `CLUSTERCLIP_BACKEND` / `CLUSTERCLIP_ADAPTER`. `auto` prefers a real
//! GPU, then a software one.

use super::GpuError;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    #[default]
    Auto,
    Vulkan,
    Metal,
    Dx12,
    Gl,
    /// The browser's WebGPU (wasm32 only).
    BrowserWebGpu,
}

impl BackendChoice {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "vulkan" | "vk" => Ok(Self::Vulkan),
            "metal" => Ok(Self::Metal),
            "dx12" | "d3d12" => Ok(Self::Dx12),
            "gl" | "opengl" | "gles" => Ok(Self::Gl),
            "webgpu" => Ok(Self::BrowserWebGpu),
            other => Err(format!(
                "unknown backend '{other}': expected auto, vulkan, metal, dx12, gl or webgpu"
            )),
        }
    }

    pub fn backends(self) -> wgpu::Backends {
        match self {
            // GL last: Mesa's GL path compiles some kernels for up to a minute.
            Self::Auto => wgpu::Backends::PRIMARY | wgpu::Backends::GL,
            Self::Vulkan => wgpu::Backends::VULKAN,
            Self::Metal => wgpu::Backends::METAL,
            Self::Dx12 => wgpu::Backends::DX12,
            Self::Gl => wgpu::Backends::GL,
            Self::BrowserWebGpu => wgpu::Backends::BROWSER_WEBGPU,
        }
    }
}

/// How to pick the adapter and build shaders.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    pub backend: BackendChoice,
    /// Case-insensitive substring of the adapter name.
    pub adapter: Option<String>,
    /// wgpu's shader bounds checks; `None` = on in debug builds, off in release builds.
    pub bounds_checks: Option<bool>,
    /// Bind at most this many bytes per storage binding, below the device's limit (tests of
    /// the splitting of large tensors and batches; `CLUSTERCLIP_MAX_BINDING_BYTES`).
    pub max_binding_bytes: Option<u64>,
    /// Matmul kernels: `Some(true)` the workgroup-memory kernel for hardware GPUs, `Some(false)`
    /// the register-tile kernels for CPU drivers, `None` by adapter type
    /// (`CLUSTERCLIP_MATMUL=tiled|register`).
    pub tiled_matmul: Option<bool>,
    /// One rank of several on this machine: take adapter `local_rank` mod n of the n best of
    /// one kind (or of those `adapter` matches), so the ranks spread over the machine's GPUs.
    pub local_rank: Option<usize>,
}

impl GpuOptions {
    /// Options from `CLUSTERCLIP_BACKEND`, `CLUSTERCLIP_ADAPTER`, `CLUSTERCLIP_BOUNDS_CHECKS`,
    /// `CLUSTERCLIP_MATMUL` and `CLUSTERCLIP_MAX_BINDING_BYTES`.
    pub fn from_env() -> Result<Self, String> {
        let mut options = GpuOptions::default();
        if let Ok(text) = std::env::var("CLUSTERCLIP_BACKEND") {
            options.backend =
                BackendChoice::parse(&text).map_err(|e| format!("CLUSTERCLIP_BACKEND: {e}"))?;
        }
        if let Ok(text) = std::env::var("CLUSTERCLIP_ADAPTER")
            && !text.is_empty()
        {
            options.adapter = Some(text);
        }
        if let Ok(text) = std::env::var("CLUSTERCLIP_BOUNDS_CHECKS") {
            options.bounds_checks = Some(matches!(text.as_str(), "1" | "true" | "on"));
        }
        if let Ok(text) = std::env::var("CLUSTERCLIP_MATMUL") {
            options.tiled_matmul = match text.as_str() {
                "tiled" => Some(true),
                "register" => Some(false),
                "" | "auto" => None,
                other => {
                    return Err(format!(
                        "CLUSTERCLIP_MATMUL {other:?}: use tiled, register or auto"
                    ));
                }
            };
        }
        if let Ok(text) = std::env::var("CLUSTERCLIP_MAX_BINDING_BYTES") {
            options.max_binding_bytes = Some(text.parse().map_err(|_| {
                format!("CLUSTERCLIP_MAX_BINDING_BYTES {text:?} is not a byte count")
            })?);
        }
        Ok(options)
    }
}

/// What `clusterclip info` lists for each adapter.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
}

/// Turns off Mesa's implicit Vulkan layer VK_LAYER_MESA_device_select with its own switch,
/// `NODEVICE_SELECT=1`, before the first instance: on a machine without XDG_RUNTIME_DIR it
/// prints `error: XDG_RUNTIME_DIR is invalid or not set` 2 to 4 times per command (issue 10).
/// The layer only orders devices, and we rank adapters ourselves (`--adapter` picks one).
/// Left alone when the user set `NODEVICE_SELECT` or asks the layer for a device
/// (`MESA_VK_DEVICE_SELECT`). Runs once per process; the binary calls it first in `main`.
#[cfg(not(target_arch = "wasm32"))]
pub fn quiet_mesa_device_select() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("NODEVICE_SELECT").is_none()
            && std::env::var_os("MESA_VK_DEVICE_SELECT").is_none()
        {
            // SAFETY: set_var races only with environment reads that bypass std's lock, i.e. C
            // code such as the Vulkan loader and Mesa. This crate reaches them only through
            // `instance`, which waits on this `Once`, and the binary runs this before any thread
            // exists. A library user's own threads calling C `getenv` at this moment remain the
            // documented risk (tests: the harness's threads run Rust, which takes std's lock).
            unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
        }
    });
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    #[cfg(not(target_arch = "wasm32"))]
    quiet_mesa_device_select();
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Real GPUs first, then virtual ones, then CPU (software) adapters; GL after the others.
#[cfg(not(target_arch = "wasm32"))]
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    (device, u8::from(info.backend == wgpu::Backend::Gl))
}

#[cfg(not(target_arch = "wasm32"))]
pub(super) async fn choose(options: &GpuOptions) -> Result<wgpu::Adapter, GpuError> {
    let instance = instance(options.backend.backends());
    let mut adapters = instance
        .enumerate_adapters(options.backend.backends())
        .await;
    let found: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
    if let Some(wanted) = &options.adapter {
        let wanted = wanted.to_lowercase();
        adapters.retain(|a| a.get_info().name.to_lowercase().contains(&wanted));
        if adapters.is_empty() {
            return Err(GpuError::NoAdapter(format!(
                "none matches --adapter '{wanted}' on backend {:?}; found: {}",
                options.backend,
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found.join(", ")
                }
            )));
        }
    }
    adapters.sort_by_key(|a| rank(&a.get_info()));
    if let (Some(local_rank), Some(best)) = (options.local_rank, adapters.first()) {
        // Spread over the adapters of the best kind only (not onto a GL twin of the same device).
        let best = rank(&best.get_info());
        adapters.retain(|a| rank(&a.get_info()) == best);
        let pick = local_rank % adapters.len();
        adapters.rotate_left(pick);
    }
    adapters.into_iter().next().ok_or_else(|| {
        GpuError::NoAdapter(format!("backend {:?} reports no adapter", options.backend))
    })
}

#[cfg(target_arch = "wasm32")]
pub(super) async fn choose(options: &GpuOptions) -> Result<wgpu::Adapter, GpuError> {
    let instance = instance(options.backend.backends());
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| GpuError::NoAdapter(e.to_string()))
}

/// Every adapter the backends report, best first.
#[cfg(not(target_arch = "wasm32"))]
pub fn adapter_summaries(backend: BackendChoice) -> Vec<AdapterSummary> {
    let instance = instance(backend.backends());
    let mut infos: Vec<wgpu::AdapterInfo> =
        super::block_on(instance.enumerate_adapters(backend.backends()))
            .iter()
            .map(|a| a.get_info())
            .collect();
    infos.sort_by_key(rank);
    infos
        .into_iter()
        .map(|info| AdapterSummary {
            name: info.name,
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver,
            driver_info: info.driver_info,
        })
        .collect()
}
