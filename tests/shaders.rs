//! Every WGSL file parses and validates with naga (with the prelude appended), stays within
//! WebGPU's default limits, and declares the uniform params its Rust twin uploads.

mod common;

use std::collections::HashSet;

/// (file name, source) of every shader in `shaders/`.
fn shader_files() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "wgsl"))
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

fn module(name: &str, source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    clusterclip::gpu::validate_wgsl(&format!("shaders/{name}.wgsl"), source)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_shader_validates() {
    let limits = wgpu::Limits::default();
    let files = shader_files();
    for (name, source) in &files {
        let (module, info) = module(name, source);
        for (index, ep) in module.entry_points.iter().enumerate() {
            let lanes: u32 = ep.workgroup_size.iter().product();
            assert!(
                lanes <= limits.max_compute_invocations_per_workgroup,
                "{name}::{} has {lanes} lanes",
                ep.name
            );
            // The limit is per pipeline: count the storage bindings this entry point uses.
            let uses = info.get_entry_point(index);
            let storage: HashSet<u32> = module
                .global_variables
                .iter()
                .filter(|(h, g)| {
                    !uses[*h].is_empty() && matches!(g.space, naga::AddressSpace::Storage { .. })
                })
                .filter_map(|(_, g)| g.binding.as_ref().map(|b| b.binding))
                .collect();
            assert!(
                storage.len() <= limits.max_storage_buffers_per_shader_stage as usize,
                "{name}::{} binds {} storage buffers",
                ep.name,
                storage.len()
            );
        }
    }
    assert!(files.len() >= 2, "found only {} shaders", files.len());
}

/// (name, byte offset, byte size) of each field of a params struct.
type Fields = Vec<(String, usize, usize)>;

/// The fields of the shader's uniform struct, and its size.
fn wgsl_params(name: &str, source: &str) -> Option<(Fields, usize)> {
    let (module, _) = module(name, source);
    let (_, uniform) = module
        .global_variables
        .iter()
        .find(|(_, g)| g.space == naga::AddressSpace::Uniform)?;
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    let naga::TypeInner::Struct { members, span } = &module.types[uniform.ty].inner else {
        panic!("{name}: the uniform is not a struct");
    };
    let fields = members
        .iter()
        .map(|m| {
            let name = m.name.clone().unwrap_or_default();
            (name, m.offset as usize, layouter[m.ty].size as usize)
        })
        .collect();
    Some((fields, *span as usize))
}

#[test]
fn every_params_struct_matches_its_wgsl_twin_field_for_field() {
    let files = shader_files();
    let layouts = clusterclip::params_layouts();
    for layout in &layouts {
        let (_, source) = files
            .iter()
            .find(|(name, _)| *name == layout.shader)
            .unwrap_or_else(|| panic!("{}: no shaders/{}.wgsl", layout.rust_type, layout.shader));
        let (wgsl, wgsl_size) = wgsl_params(layout.shader, source)
            .unwrap_or_else(|| panic!("shaders/{}.wgsl declares no uniform", layout.shader));
        let rust: Fields = layout
            .fields
            .iter()
            .map(|&(name, offset, size)| (name.to_string(), offset, size))
            .collect();
        assert_eq!(
            rust, wgsl,
            "{} against the uniform of shaders/{}.wgsl: (field, offset, size)",
            layout.rust_type, layout.shader
        );
        assert_eq!(
            layout.size, wgsl_size,
            "{}: size against shaders/{}.wgsl",
            layout.rust_type, layout.shader
        );
    }
    // Every shader with params has its Rust twin registered.
    for (name, source) in &files {
        if wgsl_params(name, source).is_some() {
            assert!(
                layouts.iter().any(|l| l.shader == name),
                "shaders/{name}.wgsl: no params struct in clusterclip::params_layouts()"
            );
        }
    }
}

#[test]
fn a_shader_error_names_the_file_and_line_past_the_prelude() {
    let source = "const WG: u32 = 64u;\n\nfn broken() -> u32 {\n    return 1.5;\n}\n";
    let error = clusterclip::gpu::validate_wgsl("shaders/broken.wgsl", source)
        .expect_err("a float returned as u32 is refused")
        .to_string();
    assert!(error.contains("shaders/broken.wgsl:4:"), "{error}");
}

#[test]
fn the_matmul_tile_comes_from_the_compiled_shader() {
    let gpu = common::gpu();
    let kernel = gpu.kernel(&clusterclip::shader!("matmul"), "matmul_nn");
    let source = clusterclip::shader!("matmul").source;
    let tile = kernel.constant("TILE");
    assert!(
        source.contains(&format!("const TILE: u32 = {tile}u;")),
        "{tile}"
    );
}
