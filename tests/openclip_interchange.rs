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
