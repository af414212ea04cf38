//! The CLIP model against OpenCLIP's reference outputs (shared/fixtures), on the GPU and on the
//! CPU reference backend, unmasked and masked; parameter counts of the presets; clear errors
//! for a broken reference export.

mod common;

use std::path::{Path, PathBuf};

use clusterclip::graph::Backend;
use clusterclip::model::reference::Reference;
use clusterclip::model::{Clip, ClipConfig};
use common::*;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/openclip_tiny_golden")
}

/// The fixture was computed in float64; f32 kernels land near 1e-6. 1e-4 is issue 3's bar.
const LIMIT: f64 = 1e-4;

fn check(backend: Backend, masked: bool) {
    let reference = Reference::load(&fixture()).unwrap();
    let checks = reference
        .check_forward_backward(&backend, masked, LIMIT)
        .unwrap();
    let params = reference.model(&backend).unwrap().params.len();
    assert_eq!(
        checks.len(),
        3 + params,
        "features, loss and every gradient"
    );
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed())
        .map(|c| format!("{} {:.2e}", c.name, c.rel_err))
        .collect();
    assert!(
        failed.is_empty(),
        "{} checks fail: {failed:?}",
        failed.len()
    );
}

#[test]
fn matches_openclip_on_the_gpu_unmasked() {
    check(Backend::Gpu(gpu()), false);
}

#[test]
fn matches_openclip_on_the_gpu_masked() {
    check(Backend::Gpu(gpu()), true);
}

#[test]
fn matches_openclip_on_the_cpu_unmasked_and_masked() {
    check(Backend::Cpu, false);
    check(Backend::Cpu, true);
}

#[test]
fn preset_parameter_counts_match_openclip() {
    let count = |name: &str| Clip::parameter_counts(&ClipConfig::preset(name).unwrap()).0;
    assert_eq!(count("b16"), 149_620_737);
    assert_eq!(count("s16"), 62_257_537);
    let err = ClipConfig::preset("b32").unwrap_err();
    assert!(err.contains("b32") && err.contains("tiny"), "{err}");
}

/// Copies the fixture to a temporary prefix, with the JSON and tensors edited.
fn broken_fixture(
    tag: &str,
    edit_json: impl Fn(&mut serde_json::Value),
    edit_tensors: impl Fn(&str, &mut Vec<usize>) -> bool,
) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clusterclip-model-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = dir.join("fixture");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().with_extension("json")).unwrap())
            .unwrap();
    edit_json(&mut json);
    std::fs::write(prefix.with_extension("json"), json.to_string()).unwrap();
    let file =
        clusterclip::model::io::TensorFile::read(&fixture().with_extension("safetensors")).unwrap();
    let mut out = Vec::new();
    let mut kept: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, tensor) in &file.tensors {
        let mut shape = tensor.shape.clone();
        if !edit_tensors(name, &mut shape) {
            continue;
        }
        if let clusterclip::model::io::TensorData::F32(values) = &tensor.data {
            let n: usize = shape.iter().product();
            let mut values = values.clone();
            values.resize(n, 0.0);
            kept.push((name.clone(), shape, values));
        }
    }
    for (name, shape, values) in &kept {
        out.push((
            name.clone(),
            shape.clone(),
            clusterclip::model::io::TensorOut::F32(values),
        ));
    }
    clusterclip::model::io::write_atomic(
        &prefix.with_extension("safetensors"),
        out,
        Default::default(),
    )
    .unwrap();
    prefix
}

#[test]
fn a_broken_export_names_the_tensor_or_field() {
    let missing = broken_fixture("missing", |_| {}, |name, _| name != "param.visual.proj");
    let err = Reference::load(&missing)
        .unwrap()
        .model(&Backend::Cpu)
        .err()
        .unwrap();
    assert!(
        err.contains("visual.proj") && err.contains("missing"),
        "{err}"
    );

    let wrong = broken_fixture(
        "shape",
        |_| {},
        |name, shape| {
            if name == "param.ln_final.weight" {
                *shape = vec![65];
            }
            true
        },
    );
    let err = Reference::load(&wrong)
        .unwrap()
        .model(&Backend::Cpu)
        .err()
        .unwrap();
    assert!(
        err.contains("ln_final.weight") && err.contains("[65]"),
        "{err}"
    );

    let bad_config = broken_fixture(
        "config",
        |json| json["vision"]["patch_size"] = 7.into(),
        |_, _| true,
    );
    let err = Reference::load(&bad_config).err().unwrap();
    assert!(err.contains("patch_size"), "{err}");

    let no_field = broken_fixture(
        "field",
        |json| {
            json["text"].as_object_mut().unwrap().remove("layers");
        },
        |_, _| true,
    );
    let err = Reference::load(&no_field).err().unwrap();
    assert!(err.contains("text.layers"), "{err}");
}
