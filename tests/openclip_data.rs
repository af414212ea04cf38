//! OpenCLIP's data semantics (issue 13): what `--train-num-samples` means for each kind of
//! data, `--imagenet-val`'s class names and templates, and `embed --data --out` writing
//! clip-retrieval's layout, streamed.

mod common;

use std::path::Path;

use clusterclip::data::loader::ReadOptions;
use clusterclip::data::shards::{MakeShardsConfig, make_shards};
use clusterclip::eval::imagenet_names::{IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES};
use clusterclip::eval::tasks::{caption_set, imagenet_val_set};
use clusterclip::eval::{encode_images, encode_texts};
use clusterclip::graph::Backend;
use clusterclip::train::checkpoint::load_model;
use clusterclip::train::run::{TrainConfig, epoch_samples};
use common::Rng;
use common::cli::{clusterclip, error_line, stderr, temp_dir};
use common::data::{colour_folder, tiny_checkpoint};

/// Six colour images and a TSV of `rows` captions over them (cycling through the images).
fn captioned(dir: &Path, rows: usize) -> std::path::PathBuf {
    let colours: Vec<(String, [u8; 3])> = (0..6)
        .map(|i| (format!("c{i}"), [40 * i as u8, 200 - 30 * i as u8, 90]))
        .collect();
    let named: Vec<(&str, [u8; 3])> = colours.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    colour_folder(&dir.join("images"), &named, 1, &mut Rng::new(5));
    let mut tsv = String::from("filepath\ttitle\n");
    for j in 0..rows {
        tsv += &format!("images/c{}/0.png\ta colour numbered {j}\n", j % 6);
    }
    let path = dir.join("captions.tsv");
    std::fs::write(&path, tsv).unwrap();
    path
}

#[test]
fn train_num_samples_means_what_it_means_in_openclip() {
    let dir = temp_dir("train-num-samples");
    let csv = captioned(&dir, 14);
    let csv = csv.to_str().unwrap();
    let read = ReadOptions::default();
    // A CSV is its rows; the flag is not read, and saying so is one line naming it.
    let own = epoch_samples(csv, &read, None, None).unwrap();
    assert_eq!((own.samples, own.note), (14, None));
    let given = epoch_samples(csv, &read, Some(1000), None).unwrap();
    assert_eq!(given.samples, 14);
    assert!(
        given.note.as_deref().unwrap().starts_with(
            "--train-num-samples 1000 is not read for a CSV: an epoch is its 14 records"
        ),
        "{given:?}"
    );
    // An image folder is its images.
    let folder = format!("imagefolder:{}", dir.join("images").display());
    assert_eq!(
        epoch_samples(&folder, &read, None, None).unwrap().samples,
        6
    );
    // Shards: the flag when given, else sizes.json, else an error asking for the flag.
    let shards = dir.join("shards");
    let report = make_shards(&MakeShardsConfig {
        csv: dir.join("captions.tsv"),
        out_dir: shards.clone(),
        shard_size: 5,
        keys: Default::default(),
        max_bad_fraction: 0.0,
    })
    .unwrap();
    assert_eq!(
        epoch_samples(&report.spec, &read, None, None)
            .unwrap()
            .samples,
        14
    );
    assert_eq!(
        epoch_samples(&report.spec, &read, Some(40), None)
            .unwrap()
            .samples,
        40
    );
    std::fs::remove_file(shards.join("sizes.json")).unwrap();
    let error = epoch_samples(&report.spec, &read, None, None).unwrap_err();
    assert!(
        error.starts_with("--train-num-samples: ") && error.contains("no sizes.json"),
        "{error}"
    );
    // The built-in stream: the flag, else the default; --samples-per-epoch sets any epoch.
    assert_eq!(
        epoch_samples("builtin:shapes", &read, None, None)
            .unwrap()
            .samples,
        TrainConfig::DEFAULT_TRAIN_NUM_SAMPLES
    );
    assert_eq!(
        epoch_samples("builtin:shapes", &read, Some(96), None)
            .unwrap()
            .samples,
        96
    );
    assert_eq!(epoch_samples(csv, &read, None, Some(8)).unwrap().samples, 8);
    // Through the CLI: a CSV run of batch 4 takes floor(14 / 4) = 3 steps an epoch, as
    // OpenCLIP's drop_last loader does, whatever --train-num-samples says.
    let logs = dir.join("logs");
    let out = clusterclip(&[
        "train",
        "--cpu",
        "--model",
        "nano",
        "--train-data",
        csv,
        "--batch-size",
        "4",
        "--train-num-samples",
        "400",
        "--epochs",
        "1",
        "--warmup",
        "1",
        "--mask",
        "none",
        "--val-data",
        "none",
        "--zeroshot-data",
        "none",
        "--workers",
        "1",
        "--logs",
        logs.to_str().unwrap(),
        "--name",
        "csv",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--train-num-samples 400 is not read for a CSV"),
        "{}",
        stderr(&out)
    );
    let params: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(logs.join("csv/params.json")).unwrap())
            .unwrap();
    assert_eq!(params["train_num_samples"], 14);
    assert!(stderr(&out).contains("step 3 of 3"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn imagenet_val_reads_imagenet_names_and_openai_templates() {
    let dir = temp_dir("imagenet-val");
    let checkpoint = dir.join("tiny.safetensors");
    tiny_checkpoint(&checkpoint);
    let clip = load_model(&checkpoint, None).unwrap().model(&Backend::Cpu);
    // The names are OpenCLIP's, in synset order; the templates OpenAI's 80.
    assert_eq!(
        (IMAGENET_CLASSNAMES[0], IMAGENET_CLASSNAMES[999]),
        ("tench", "toilet paper")
    );
    assert_eq!(OPENAI_IMAGENET_TEMPLATES.len(), 80);
    assert!(
        OPENAI_IMAGENET_TEMPLATES
            .iter()
            .all(|t| t.matches("{}").count() == 1)
    );
    // 1,000 synset folders of one image each (torchvision's ImageFolder refuses an empty class): class i is the i-th folder in sorted order.
    let val = dir.join("val");
    for i in 0..1000 {
        let folder = val.join(format!("n{:08}", 1_440_764 + 7 * i));
        std::fs::create_dir_all(&folder).unwrap();
        image::RgbImage::from_pixel(4, 4, image::Rgb([i as u8, 20, 200]))
            .save(folder.join("ILSVRC2012_val.png"))
            .unwrap();
    }
    let set = imagenet_val_set(&val, &clip, None, &ReadOptions::default()).unwrap();
    assert_eq!(set.classes, IMAGENET_CLASSNAMES.map(str::to_string));
    assert_eq!(set.templates, OPENAI_IMAGENET_TEMPLATES.map(str::to_string));
    let labels = set.encode(&clip, 250).unwrap().labels;
    assert_eq!(labels, (0..1000).collect::<Vec<usize>>());
    // Any other count of folders is one error naming the count.
    std::fs::remove_dir_all(val.join(format!("n{:08}", 1_440_764 + 7 * 999))).unwrap();
    let error = match imagenet_val_set(&val, &clip, None, &ReadOptions::default()) {
        Err(e) => e,
        Ok(_) => panic!("999 folders accepted"),
    };
    assert!(
        error.ends_with(
            "999 class folders; ImageNet val has 1000 (one folder per synset, n01440764 first)"
        ),
        "{error}"
    );
    let out = clusterclip(&[
        "train",
        "--cpu",
        "--model",
        "nano",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--imagenet-val",
        val.to_str().unwrap(),
        "--logs",
        dir.join("logs").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        error_line(&out).starts_with("error: --imagenet-val: ")
            && error_line(&out).contains("999 class folders"),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The values of a little-endian 2-D .npy file of float16 or float32, and its shape.
fn read_npy(path: &Path) -> (Vec<f32>, [usize; 2]) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "{}", path.display());
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + len) % 64, 0, "the header is 64-byte aligned");
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .map(|v| v.trim().parse().unwrap())
        .collect();
    let data = &bytes[10 + len..];
    let values: Vec<f32> = if header.contains("'<f2'") {
        data.chunks(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    } else {
        assert!(header.contains("'<f4'"), "{header}");
        data.chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    assert_eq!(values.len(), shape[0] * shape[1]);
    (values, [shape[0], shape[1]])
}

#[test]
fn embed_writes_clip_retrievals_layout() {
    let dir = temp_dir("embed-out");
    let checkpoint = dir.join("tiny.safetensors");
    tiny_checkpoint(&checkpoint);
    let csv = captioned(&dir, 9);
    let out_dir = dir.join("embeddings");
    let out = clusterclip(&[
        "embed",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--data",
        csv.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--batch-size",
        "4",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The features of the library, record by record, in stored order (within float16).
    let clip = load_model(&checkpoint, None).unwrap().model(&Backend::Cpu);
    let set = caption_set(csv.to_str().unwrap(), &clip, None, &ReadOptions::default()).unwrap();
    let (mut images, mut tokens, mut paths, mut captions) = (vec![], vec![], vec![], vec![]);
    set.for_each_batch(9, &mut |b| {
        images.extend_from_slice(&b.images);
        tokens.extend_from_slice(&b.tokens);
        paths.extend_from_slice(&b.image_names);
        captions.extend_from_slice(&b.captions);
        Ok(())
    })
    .unwrap();
    let want_image = encode_images(&clip, &images, 9).unwrap();
    let want_text = encode_texts(&clip, &tokens, 9).unwrap();
    for (file, want) in [
        ("img_emb/img_emb_0.npy", &want_image),
        ("text_emb/text_emb_0.npy", &want_text),
    ] {
        let (got, shape) = read_npy(&out_dir.join(file));
        assert_eq!(shape, [9, 16], "{file}");
        // float16 keeps 11 significant bits: 2^-11 relative on unit-norm rows.
        let gap = got
            .iter()
            .zip(want.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(gap < 1e-3, "{file}: off by {gap}");
    }
    assert!(paths[2].ends_with("images/c2/0.png"), "{paths:?}");
    assert_eq!(captions[7], "a colour numbered 7");
    // Parquet: magic at both ends; uncompressed, so every path and caption is in the bytes.
    let parquet = std::fs::read(out_dir.join("metadata/metadata_0.parquet")).unwrap();
    assert!(parquet.starts_with(b"PAR1") && parquet.ends_with(b"PAR1"));
    let holds = |s: &str| parquet.windows(s.len()).any(|w| w == s.as_bytes());
    for name in ["image_path", "caption"]
        .iter()
        .map(|s| s.to_string())
        .chain(paths)
        .chain(captions)
    {
        assert!(holds(&name), "metadata lacks {name}");
    }
    // float32 on request; an image folder has no captions, so no text embeddings.
    let folder = format!("imagefolder:{}", dir.join("images").display());
    let images_only = dir.join("images-only");
    let out = clusterclip(&[
        "embed",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--data",
        &folder,
        "--out",
        images_only.to_str().unwrap(),
        "--dtype",
        "float32",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        read_npy(&images_only.join("img_emb/img_emb_0.npy")).1,
        [6, 16]
    );
    assert!(!images_only.join("text_emb").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
