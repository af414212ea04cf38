//! Small data and models built by tests: a tiny CPU checkpoint and folders of coloured images.

use std::collections::HashMap;
use std::path::Path;

use clusterclip::model::io::{TensorOut, write_atomic};
use clusterclip::model::{Clip, ClipConfig, TextConfig, VisionConfig};
use clusterclip::train::checkpoint::config_json;
use clusterclip::{Backend, Graph};

use super::Rng;

/// A one-layer model small enough for the CPU backend, saved as a checkpoint with its
/// configuration.
pub fn tiny_checkpoint(path: &Path) {
    let config = ClipConfig {
        embed_dim: 16,
        vision: VisionConfig {
            image_size: 16,
            patch_size: 8,
            width: 16,
            layers: 1,
            heads: 2,
        },
        text: TextConfig {
            context_length: 8,
            vocab_size: 1000,
            width: 16,
            layers: 1,
            heads: 2,
        },
        activation: clusterclip::model::config::Activation::Gelu,
    };
    let clip = Clip::new(config.clone(), &Backend::Cpu, 0).unwrap();
    let params = clip.params.to_host(&Graph::new(Backend::Cpu));
    let tensors = params
        .iter()
        .map(|(name, shape, values)| (name.clone(), shape.clone(), TensorOut::F32(values)))
        .collect();
    let metadata = HashMap::from([("model_config".to_string(), config_json(&config).to_string())]);
    write_atomic(path, tensors, metadata).unwrap();
}

/// An image folder of `per_class` noisy 16×16 images per class, each class one colour.
pub fn colour_folder(root: &Path, classes: &[(&str, [u8; 3])], per_class: usize, rng: &mut Rng) {
    for (name, rgb) in classes {
        std::fs::create_dir_all(root.join(name)).unwrap();
        for i in 0..per_class {
            let image = image::RgbImage::from_fn(16, 16, |_, _| {
                image::Rgb(rgb.map(|c| c.saturating_add(rng.below(40) as u8)))
            });
            image
                .save(root.join(name).join(format!("{i}.png")))
                .unwrap();
        }
    }
}
