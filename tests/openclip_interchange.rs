//! Weights in and out of OpenCLIP (issue 13): `clusterclip export` writes the fixture's
//! state_dict back with OpenCLIP's names, shapes and dtypes; state_dicts that do not fit the
//! model are refused naming the keys or the shape.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clusterclip::model::init::param_specs;
use clusterclip::model::params::layout;
use clusterclip::model::reference::Reference;
use clusterclip::train::checkpoint::{config_json, load_model, model_file_bytes};
use common::cli::{clusterclip, error_line, stderr, temp_dir};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/openclip_tiny_golden")
}

/// (dtype, shape, bytes) by name.
type RawTensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn read_raw(path: &Path) -> RawTensors {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let value = (view.dtype(), view.shape().to_vec(), view.data().to_vec());
            (name, value)
        })
        .collect()
}

/// The fixture's `param.*` tensors under their state_dict names: an OpenCLIP state_dict.
fn fixture_state_dict() -> RawTensors {
    read_raw(&fixture().with_extension("safetensors"))
        .into_iter()
        .filter_map(|(name, t)| Some((name.strip_prefix("param.")?.to_string(), t)))
        .collect()
}

fn write_raw(path: &Path, tensors: &RawTensors) {
    let views = tensors.iter().map(|(name, (dtype, shape, data))| {
        (
            name.clone(),
            TensorView::new(*dtype, shape.clone(), data).unwrap(),
        )
    });
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn exported_checkpoint_has_the_fixture_state_dict_names_shapes_and_dtypes() {
    let dir = temp_dir("export");
    let reference = Reference::load(&fixture()).unwrap();
    let config = &reference.config;
    // A checkpoint's model file of the fixture's weights, as training writes it.
    let specs = param_specs(config);
    let (offsets, total) = layout(&specs);
    let mut flat = vec![0.0; total];
    for (spec, offset) in specs.iter().zip(&offsets) {
        let (_, values) = reference.file.f32(&format!("param.{}", spec.name)).unwrap();
        flat[*offset..*offset + values.len()].copy_from_slice(&values);
    }
    let metadata = [("model_config".to_string(), config_json(config).to_string())].into();
    let model_file = dir.join("epoch_1.safetensors");
    std::fs::write(
        &model_file,
        model_file_bytes(&specs, &offsets, &flat, metadata).unwrap(),
    )
    .unwrap();

    let out_dir = dir.join("exported");
    let out = clusterclip(&[
        "export",
        "--checkpoint",
        model_file.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exported = read_raw(&out_dir.join("open_clip_model.safetensors"));
    let wanted = fixture_state_dict();
    let layout_of = |t: &RawTensors| -> Vec<(String, Dtype, Vec<usize>)> {
        t.iter()
            .map(|(n, (d, s, _))| (n.clone(), *d, s.clone()))
            .collect()
    };
    // 8 image-tower, 6 text-tower and logit tensors beside 12 per block, 2 blocks per tower.
    assert_eq!(wanted.len(), 8 + 6 + 12 * 4, "the fixture's state_dict");
    assert_eq!(layout_of(&exported), layout_of(&wanted));
    for (name, (_, _, bytes)) in &wanted {
        assert!(exported[name].2 == *bytes, "{name}: values differ");
    }

    let config_text = std::fs::read_to_string(out_dir.join("open_clip_config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&config_text).unwrap();
    let fixture_json = &reference.json;
    let model_cfg = &json["model_cfg"];
    assert_eq!(model_cfg["embed_dim"], fixture_json["embed_dim"]);
    for key in ["image_size", "layers", "width", "head_width", "patch_size"] {
        assert_eq!(
            model_cfg["vision_cfg"][key], fixture_json["vision"][key],
            "vision_cfg.{key}"
        );
    }
    for key in ["context_length", "vocab_size", "width", "heads", "layers"] {
        assert_eq!(
            model_cfg["text_cfg"][key], fixture_json["text"][key],
            "text_cfg.{key}"
        );
    }
    let mean = json["preprocess_cfg"]["mean"].as_array().unwrap();
    assert_eq!(mean.len(), 3);
    assert!((mean[0].as_f64().unwrap() - 0.481_454_66).abs() < 1e-7);
    // The exported weights load back as a model file.
    let back = load_model(&out_dir.join("open_clip_model.safetensors"), None).unwrap();
    assert_eq!(&back.config, config);
    assert!(back.params == flat);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn state_dicts_that_do_not_fit_are_refused_naming_keys_and_shapes() {
    let dir = temp_dir("strict");
    let config = Reference::load(&fixture()).unwrap().config;
    let good = fixture_state_dict();

    let mut keys_off = good.clone();
    keys_off.remove("visual.ln_post.bias");
    keys_off.remove("ln_final.weight");
    let extra = keys_off["logit_scale"].clone();
    keys_off.insert("visual.head.weight".into(), extra);
    let path = dir.join("keys.safetensors");
    write_raw(&path, &keys_off);
    let err = load_model(&path, Some(&config)).err().unwrap();
    assert_eq!(
        err,
        format!(
            "{}: state_dict does not fit the model: missing 2 key(s): ln_final.weight, \
             visual.ln_post.bias; unexpected 1 key(s): visual.head.weight",
            path.display()
        )
    );

    let mut reshaped = good.clone();
    reshaped.get_mut("text_projection").unwrap().1 = vec![32, 128];
    let path = dir.join("shape.safetensors");
    write_raw(&path, &reshaped);
    let err = load_model(&path, Some(&config)).err().unwrap();
    assert_eq!(
        err,
        format!(
            "{}: tensor text_projection has shape [32, 128], the model needs [64, 64]",
            path.display()
        )
    );

    let path = dir.join("good.safetensors");
    write_raw(&path, &good);
    assert!(load_model(&path, Some(&config)).is_ok());
    // Without --model, a bare state_dict says what is missing in one line.
    let out = clusterclip(&[
        "export",
        "--checkpoint",
        path.to_str().unwrap(),
        "--out",
        "x",
    ]);
    assert_eq!(
        error_line(&out),
        format!(
            "error: {}: no model configuration stored; pass --model",
            path.display()
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The fixture's configuration as an OpenCLIP model config file (`model_configs/*.json`).
fn fixture_model_cfg(dir: &Path, quick_gelu: bool) -> PathBuf {
    let f = Reference::load(&fixture()).unwrap().json;
    let mut cfg = serde_json::json!({
        "embed_dim": f["embed_dim"],
        "vision_cfg": {
            "image_size": f["vision"]["image_size"], "layers": f["vision"]["layers"],
            "width": f["vision"]["width"], "head_width": f["vision"]["head_width"],
            "patch_size": f["vision"]["patch_size"],
        },
        "text_cfg": f["text"].clone(),
    });
    if quick_gelu {
        cfg["quick_gelu"] = true.into();
    }
    let path = dir.join(if quick_gelu {
        "tiny-quickgelu.json"
    } else {
        "tiny.json"
    });
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

/// Image and text features of `clip` on the fixture's inputs.
fn features(
    clip: &clusterclip::model::Clip,
    backend: &clusterclip::graph::Backend,
) -> Vec<Vec<f32>> {
    let file = &Reference::load(&fixture()).unwrap().file;
    let (_, images) = file.f32("input.images").unwrap();
    let (shape, tokens) = file.u32("input.text").unwrap();
    let mut g = clusterclip::graph::Graph::new(backend.clone());
    let inputs = clusterclip::model::ClipInputs::host(&images, &tokens, shape[0], None);
    let out = clip.forward(&mut g, &inputs).unwrap();
    vec![g.to_vec(out.image_features), g.to_vec(out.text_features)]
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    clusterclip::model::reference::rel_err(a, b)
}

/// bfloat16 by truncation: the top half of the f32 bits.
fn to_bf16(x: f32) -> (u16, f32) {
    let bits = (x.to_bits() >> 16) as u16;
    (bits, f32::from_bits(u32::from(bits) << 16))
}

/// binary16 by truncation (the fixture's weights are far below 65504), subnormals included.
fn to_f16(x: f32) -> (u16, f32) {
    let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
    let a = x.abs();
    assert!(a < 65504.0);
    if a < 2f32.powi(-14) {
        let m = (a * 2f32.powi(24)).floor();
        return (sign | m as u16, (m * 2f32.powi(-24)).copysign(x));
    }
    let b = a.to_bits();
    let exponent = ((b >> 23) as i32 - 127 + 15) as u16;
    let bits = sign | (exponent << 10) | ((b >> 13) & 0x3ff) as u16;
    (bits, f32::from_bits(x.to_bits() & !0x1fff))
}

#[test]
fn pretrained_fixture_weights_reproduce_its_features_and_half_copies_load() {
    use clusterclip::graph::Backend;
    use clusterclip::model::openclip::{load_pretrained, model_config};
    let dir = temp_dir("pretrained");
    let reference = Reference::load(&fixture()).unwrap();
    let cfg_path = fixture_model_cfg(&dir, false);
    let name = cfg_path.to_str().unwrap();
    let config = model_config(name).unwrap();
    assert_eq!(config, reference.config);
    let state_dict = fixture_state_dict();
    let path = dir.join("open_clip_model.safetensors");
    write_raw(&path, &state_dict);
    let weights = load_pretrained(&path, name, &config).unwrap();
    let want = [
        reference.file.f32("output.image_features").unwrap().1,
        reference.file.f32("output.text_features").unwrap().1,
    ];
    // Computed in float64 by OpenCLIP, stored as f32; our f32 kernels land near 1e-6.
    for backend in [Backend::Cpu, Backend::Gpu(common::gpu())] {
        let got = features(&weights.model(&backend), &backend);
        for (what, (g, w)) in ["image", "text"].iter().zip(got.iter().zip(&want)) {
            let err = rel_err(g, w);
            assert!(
                err < 1e-5,
                "{what} features on {}: {err:.2e}",
                backend.name()
            );
        }
    }

    // f16 and bf16 copies: every value widens exactly to the rounded weight.
    for (dtype, round) in [
        (Dtype::F16, to_f16 as fn(f32) -> (u16, f32)),
        (Dtype::BF16, to_bf16),
    ] {
        let mut half = RawTensors::new();
        let mut rounded: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for (name, (_, shape, bytes)) in &state_dict {
            let values: Vec<f32> = bytemuck::pod_collect_to_vec(bytes);
            let (bits, wide): (Vec<u16>, Vec<f32>) = values.iter().map(|&x| round(x)).unzip();
            half.insert(
                name.clone(),
                (dtype, shape.clone(), bytemuck::cast_slice(&bits).to_vec()),
            );
            rounded.insert(name.clone(), wide);
        }
        let path = dir.join(format!("{dtype:?}.safetensors"));
        write_raw(&path, &half);
        let loaded = load_pretrained(&path, name, &config).unwrap();
        let specs = param_specs(&config);
        let (offsets, _) = layout(&specs);
        for (spec, offset) in specs.iter().zip(offsets) {
            let got = &loaded.params[offset..offset + spec.numel()];
            let want = &rounded[&spec.name];
            assert!(
                got.iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{dtype:?} {}",
                spec.name
            );
        }
        // Half-precision weights still give the fixture's features to their precision.
        let got = features(&loaded.model(&Backend::Cpu), &Backend::Cpu);
        let err = rel_err(&got[0], &want[0]);
        assert!(
            err < 2e-2 && err > 0.0,
            "{dtype:?} image features: {err:.2e}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn quick_gelu_weights_and_models_must_agree() {
    use clusterclip::model::config::Activation;
    use clusterclip::model::openclip::{load_pretrained, model_config};
    let dir = temp_dir("quickgelu");
    // An exported folder whose open_clip_config.json says QuickGELU.
    let export = dir.join("openai");
    std::fs::create_dir_all(&export).unwrap();
    write_raw(
        &export.join("open_clip_model.safetensors"),
        &fixture_state_dict(),
    );
    let quick_cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_model_cfg(&dir, true)).unwrap())
            .unwrap();
    let config_json = serde_json::json!({"model_cfg": quick_cfg, "preprocess_cfg": {}});
    std::fs::write(
        export.join("open_clip_config.json"),
        config_json.to_string(),
    )
    .unwrap();

    let gelu_name = fixture_model_cfg(&dir, false);
    let gelu_name = gelu_name.to_str().unwrap();
    let gelu = model_config(gelu_name).unwrap();
    let err = load_pretrained(&export, gelu_name, &gelu).err().unwrap();
    assert_eq!(
        err,
        format!(
            "--pretrained: {} says the weights use QuickGELU but --model {gelu_name} uses GELU; \
             use --model {gelu_name}-quickgelu",
            export.join("open_clip_config.json").display()
        )
    );
    let quick_name = dir.join("tiny-quickgelu.json");
    let quick_name = quick_name.to_str().unwrap();
    let quick = model_config(quick_name).unwrap();
    assert_eq!(quick.activation, Activation::QuickGelu);
    let weights = load_pretrained(&export, quick_name, &quick).unwrap();
    // The same weights under QuickGELU give other features than under GELU (the silent error
    // the check prevents).
    let backend = clusterclip::graph::Backend::Cpu;
    let as_quick = features(&weights.model(&backend), &backend);
    let as_gelu = features(
        &load_model(&export.join("open_clip_model.safetensors"), Some(&gelu))
            .unwrap()
            .model(&backend),
        &backend,
    );
    assert!(rel_err(&as_quick[0], &as_gelu[0]) > 1e-3);
    // The reverse: GELU weights (stated in our own metadata) refused by a -quickgelu model.
    let ours = dir.join("ours");
    let out = clusterclip(&[
        "export",
        "--checkpoint",
        export.join("open_clip_model.safetensors").to_str().unwrap(),
        "--model",
        gelu_name,
        "--out",
        ours.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let file = ours.join("open_clip_model.safetensors");
    let err = load_pretrained(&file, quick_name, &quick).err().unwrap();
    assert_eq!(
        err,
        format!(
            "--pretrained: {} says the weights use GELU but --model {quick_name} uses QuickGELU; \
             use the model name without -quickgelu",
            file.display()
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn openclip_model_names_map_to_the_presets_and_others_are_refused() {
    use clusterclip::model::ClipConfig;
    use clusterclip::model::config::Activation;
    use clusterclip::model::openclip::model_config;
    assert_eq!(
        model_config("ViT-B-16").unwrap(),
        ClipConfig::preset("b16").unwrap()
    );
    assert_eq!(
        model_config("ViT-S-16").unwrap(),
        ClipConfig::preset("s16").unwrap()
    );
    let quick = model_config("ViT-B-16-quickgelu").unwrap();
    assert_eq!(quick.activation, Activation::QuickGelu);
    assert_eq!(
        ClipConfig {
            activation: Activation::Gelu,
            ..quick
        },
        ClipConfig::preset("b16").unwrap()
    );
    let b32 = model_config("ViT-B-32").unwrap();
    assert_eq!(
        (
            b32.vision.patch_size,
            b32.vision.patches(),
            b32.vision.heads
        ),
        (32, 49, 12)
    );
    let h14 = model_config("ViT-H-14").unwrap();
    assert_eq!((h14.vision.heads, h14.vision.width), (16, 1280));
    let out = clusterclip(&[
        "eval",
        "--checkpoint",
        "x.safetensors",
        "--model",
        "ViT-B-16-SigLIP",
    ]);
    let line = error_line(&out);
    assert!(
        line.starts_with("error: --model: unknown model 'ViT-B-16-SigLIP': expected a preset")
            && line.contains("ViT-B-32")
            && line.contains("SigLIP, CoCa"),
        "{line}"
    );
    let dir = temp_dir("names");
    let path = dir.join("ls.json");
    std::fs::write(&path, r#"{"embed_dim":64,"vision_cfg":{"image_size":32,"layers":1,"width":64,"patch_size":8,"ls_init_value":0.1},"text_cfg":{"context_length":16,"vocab_size":1000,"width":64,"heads":2,"layers":1}}"#).unwrap();
    let err = model_config(path.to_str().unwrap()).err().unwrap();
    assert_eq!(
        err,
        format!(
            "{}: model_cfg key vision_cfg.ls_init_value is not supported (only plain ViT CLIPs are built)",
            path.display()
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}
