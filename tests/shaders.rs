//! Every WGSL file parses and validates with naga, and stays within WebGPU's default limits.

#[test]
fn every_shader_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "wgsl") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let (module, _) =
            clusterclip::gpu::validate_wgsl(&name, &source).unwrap_or_else(|e| panic!("{e}"));
        let limits = wgpu::Limits::default();
        for ep in &module.entry_points {
            let lanes: u32 = ep.workgroup_size.iter().product();
            assert!(
                lanes <= limits.max_compute_invocations_per_workgroup,
                "{name}::{} has {lanes} lanes",
                ep.name
            );
        }
        let storage = module
            .global_variables
            .iter()
            .filter(|(_, g)| matches!(g.space, naga::AddressSpace::Storage { .. }))
            .count();
        assert!(
            storage <= limits.max_storage_buffers_per_shader_stage as usize,
            "{name}: {storage} storage buffers"
        );
        count += 1;
    }
    assert!(count >= 2, "found only {count} shaders");
}
