//! Kernels: a WGSL entry point compiled once per process into a compute pipeline with an
//! explicit bind-group layout built from naga's reflection of what that entry point uses.

use std::sync::{Arc, Mutex};

use super::{Gpu, GpuError};

/// A WGSL source file of `shaders/`, embedded at compile time. Build one with [`crate::shader!`].
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

/// Embeds `shaders/NAME.wgsl` as a [`Shader`].
#[macro_export]
macro_rules! shader {
    ($name:literal) => {
        $crate::gpu::Shader {
            name: $name,
            source: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/shaders/",
                $name,
                ".wgsl"
            )),
        }
    };
}

/// Parses and validates a shader file's WGSL with the prelude appended (see
/// [`super::prelude`]), as wgpu will; an error names `path` and the line in that file.
pub fn validate_wgsl(
    path: &str,
    source: &str,
) -> Result<(naga::Module, naga::valid::ModuleInfo), GpuError> {
    let full = super::prelude::with_prelude(source);
    let module = naga::front::wgsl::parse_str(&full).map_err(|e| GpuError::Shader {
        name: path.to_string(),
        message: e.emit_to_string_with_path(&full, path),
    })?;
    // Subgroup operations are allowed here; wgpu refuses them on a device without the feature,
    // and only `matmul_subgroup` uses them, where the device has it (src/ops/matmul.rs).
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default() | naga::valid::Capabilities::SUBGROUP,
    )
    .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
    .subgroup_operations(naga::valid::SubgroupOperationSet::all())
    .validate(&module)
    .map_err(|e| GpuError::Shader {
        name: path.to_string(),
        message: e.emit_to_string_with_path(&full, path),
    })?;
    Ok((module, info))
}

pub(super) struct Module {
    wgpu_module: wgpu::ShaderModule,
    naga_module: naga::Module,
    info: naga::valid::ModuleInfo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BindingKind {
    Uniform,
    StorageRead,
    StorageReadWrite,
}

/// A storage binding an entry point uses.
#[derive(Debug)]
pub(super) struct StorageBinding {
    pub index: u32,
    pub writes: bool,
    /// The WGSL globals declared at this binding: one, or views of one buffer as different
    /// element types (`a` and `a4` in `shaders/matmul.wgsl`). Callers bind by any of them.
    pub names: Vec<String>,
}

/// A kernel's place in [`Gpu`]'s cache: empty until its first build finishes.
pub(crate) type KernelSlot = Arc<Mutex<Option<Arc<Kernel>>>>;

/// A compiled entry point.
pub struct Kernel {
    pub name: String,
    /// `@workgroup_size` of the entry point, read from the WGSL (one source of truth).
    pub workgroup_size: [u32; 3],
    pub(super) pipeline: wgpu::ComputePipeline,
    pub(super) layout: wgpu::BindGroupLayout,
    /// Whether the entry point reads the uniform params at binding 0.
    pub(super) uses_params: bool,
    /// The storage bindings the entry point uses, ascending.
    pub(super) storage: Vec<StorageBinding>,
    /// The shader's named `u32` constants (`const TILE: u32 = 16u;`), from naga's reflection.
    constants: Vec<(String, u32)>,
}

impl Kernel {
    /// Invocations per workgroup.
    pub fn lanes(&self) -> u32 {
        self.workgroup_size.iter().product()
    }

    /// The value of the shader's `const NAME: u32`, as compiled (a swapped shader file
    /// included). Panics when the shader declares no such constant: shaders are part of the
    /// program.
    pub fn constant(&self, name: &str) -> u32 {
        self.constants
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("{}: the shader declares no `const {name}: u32`", self.name))
    }

    /// The names callers bind buffers by, one per binding (for messages).
    pub fn binding_names(&self) -> Vec<&str> {
        self.storage.iter().map(|b| b.names[0].as_str()).collect()
    }
}

/// Every named `u32` constant of `module`.
fn u32_constants(module: &naga::Module) -> Vec<(String, u32)> {
    module
        .constants
        .iter()
        .filter_map(|(_, c)| match module.global_expressions[c.init] {
            naga::Expression::Literal(naga::Literal::U32(value)) => Some((c.name.clone()?, value)),
            _ => None,
        })
        .collect()
}

/// The WGSL of `shader` and the path its error messages name: the embedded copy of
/// `shaders/NAME.wgsl`, or with `CLUSTERCLIP_SHADER_DIR=DIR` (kernel development: edit and rerun
/// without rebuilding) `DIR/NAME.wgsl` where that file exists.
fn shader_source(shader: &Shader) -> Result<(String, std::borrow::Cow<'static, str>), GpuError> {
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(dir) = std::env::var_os("CLUSTERCLIP_SHADER_DIR") {
        let path = std::path::Path::new(&dir).join(format!("{}.wgsl", shader.name));
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| GpuError::Shader {
                name: shader.name.to_string(),
                message: format!("{}: {e}", path.display()),
            })?;
            return Ok((path.display().to_string(), text.into()));
        }
    }
    Ok((
        format!("shaders/{}.wgsl", shader.name),
        shader.source.into(),
    ))
}

impl Gpu {
    fn module(&self, shader: &Shader) -> Result<Arc<Module>, GpuError> {
        if let Some(module) = self.modules.lock().unwrap().get(shader.name) {
            return Ok(module.clone());
        }
        let (path, source) = shader_source(shader)?;
        let (naga_module, info) = validate_wgsl(&path, &source)?;
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(shader.name),
            source: wgpu::ShaderSource::Wgsl(super::prelude::with_prelude(&source).into()),
        };
        let wgpu_module = if self.bounds_checks {
            self.device.create_shader_module(desc)
        } else {
            // SAFETY: every shader guards its own indices against the sizes in its params
            // (tests run the checked variant on the same inputs).
            unsafe {
                self.device
                    .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        };
        let module = Arc::new(Module {
            wgpu_module,
            naga_module,
            info,
        });
        self.modules
            .lock()
            .unwrap()
            .insert(shader.name, module.clone());
        Ok(module)
    }

    /// `shader`'s `const name: u32`, read from its module without building a pipeline (a
    /// caller can size or rule out a kernel before paying for its compilation).
    pub fn shader_constant(&self, shader: &Shader, name: &str) -> u32 {
        let module = self.module(shader).unwrap_or_else(|e| panic!("{e}"));
        u32_constants(&module.naga_module)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| {
                panic!(
                    "{}: the shader declares no `const {name}: u32`",
                    shader.name
                )
            })
    }

    /// `entry`, or where `vec4` its twin `{entry}4`: the shaders' entry points for lengths that
    /// are multiples of 4 read and write vec4 views of the same buffers (declared at the scalar
    /// bindings, so callers bind by the same names). Lavapipe turns every storage access into a
    /// loop over its SIMD lanes, so a vec4 per access is close to four times fewer.
    /// A choice site of dispatch plans (src/gpu/plan.rs): a plan whose row length changes
    /// with its count holds it to the scalar form.
    pub fn kernel_in_width(&self, shader: &Shader, entry: &str, vec4: bool) -> Arc<Kernel> {
        // Asked every time, so every recording counts the same sites.
        let free = self.choice_site() == 0;
        match vec4 && free {
            true => self.kernel(shader, &format!("{entry}4")),
            false => self.kernel(shader, entry),
        }
    }

    /// The pipeline of `shader`'s entry point `entry`, built once per process.
    /// Panics on an invalid shader: shaders are part of the program and covered by tests.
    pub fn kernel(&self, shader: &Shader, entry: &str) -> Arc<Kernel> {
        self.try_kernel(shader, entry)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_kernel(&self, shader: &Shader, entry: &str) -> Result<Arc<Kernel>, GpuError> {
        let key = (shader.name, entry.to_string());
        let slot = self.kernels.lock().unwrap().entry(key).or_default().clone();
        let mut slot = slot.lock().unwrap();
        if let Some(kernel) = &*slot {
            return Ok(kernel.clone());
        }
        let kernel = self.build_kernel(shader, entry)?;
        *slot = Some(kernel.clone());
        Ok(kernel)
    }

    /// Validates `entry`'s bindings and builds its pipeline (what [`Gpu::try_kernel`] caches).
    fn build_kernel(&self, shader: &Shader, entry: &str) -> Result<Arc<Kernel>, GpuError> {
        let module = self.module(shader)?;
        let error = |message: String| GpuError::Shader {
            name: format!("{}::{entry}", shader.name),
            message,
        };
        let (index, entry_point) = module
            .naga_module
            .entry_points
            .iter()
            .enumerate()
            .find(|(_, ep)| ep.name == entry && ep.stage == naga::ShaderStage::Compute)
            .ok_or_else(|| error("no such compute entry point".into()))?;
        let uses = module.info.get_entry_point(index);
        let mut bindings = Vec::new();
        for (handle, global) in module.naga_module.global_variables.iter() {
            let Some(binding) = &global.binding else {
                continue;
            };
            if uses[handle].is_empty() {
                continue;
            }
            if binding.group != 0 {
                return Err(error(format!(
                    "binding group {} (only group 0 is used)",
                    binding.group
                )));
            }
            let kind = match global.space {
                naga::AddressSpace::Uniform => BindingKind::Uniform,
                naga::AddressSpace::Storage { access }
                    if access.contains(naga::StorageAccess::STORE) =>
                {
                    BindingKind::StorageReadWrite
                }
                naga::AddressSpace::Storage { .. } => BindingKind::StorageRead,
                other => return Err(error(format!("unsupported binding space {other:?}"))),
            };
            if (binding.binding == 0) != (kind == BindingKind::Uniform) {
                return Err(error(
                    "the uniform params sit at binding 0, storage buffers at 1..".into(),
                ));
            }
            bindings.push((binding.binding, kind));
        }
        bindings.sort_by_key(|(b, _)| *b);
        bindings.dedup_by_key(|(b, _)| *b);
        let storage = bindings
            .iter()
            .filter(|(_, kind)| *kind != BindingKind::Uniform)
            .map(|&(index, kind)| StorageBinding {
                index,
                writes: kind == BindingKind::StorageReadWrite,
                names: module
                    .naga_module
                    .global_variables
                    .iter()
                    .filter(|(_, g)| g.binding.as_ref().is_some_and(|b| b.binding == index))
                    .filter_map(|(_, g)| g.name.clone())
                    .collect(),
            })
            .collect();
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .map(|(binding, kind)| wgpu::BindGroupLayoutEntry {
                binding: *binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match kind {
                        BindingKind::Uniform => wgpu::BufferBindingType::Uniform,
                        BindingKind::StorageRead => {
                            wgpu::BufferBindingType::Storage { read_only: true }
                        }
                        BindingKind::StorageReadWrite => {
                            wgpu::BufferBindingType::Storage { read_only: false }
                        }
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let label = format!("{}::{entry}", shader.name);
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&label),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&pipeline_layout),
                module: &module.wgpu_module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    // Kernels initialise their own workgroup memory.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        let kernel = Arc::new(Kernel {
            name: label,
            workgroup_size: entry_point.workgroup_size,
            pipeline,
            layout,
            uses_params: bindings.first().is_some_and(|(b, _)| *b == 0),
            storage,
            constants: u32_constants(&module.naga_module),
        });
        Ok(kernel)
    }
}
