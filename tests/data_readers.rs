//! Readers end to end on files made here: every kind of bad record is skipped and counted
//! exactly, `make-shards` output reads back to the same samples as its CSV, specs that match
//! nothing fail up front, batches do not depend on the number of workers, and the ranks of a
//! data-parallel run each read their own share.

use clusterclip::data::error::DataError;
use clusterclip::data::image_ops::{
    CLIP_MEAN, CLIP_STD, CROP_RATIO, RgbView, SampleRng, eval_transform, normalise_rgb,
    random_resized_crop_box,
};
use clusterclip::data::loader::{Batch, LoaderConfig, open_loader};
use clusterclip::data::records::{RankShare, RecordKeys};
use clusterclip::data::shards::{MakeShardsConfig, make_shards};
use clusterclip::data::spec::{
    DataSource, DatasetType, expand_braces, parse_sizes_json, resolve_spec,
};
use clusterclip::data::tar::{TarReader, TarWriter};
use clusterclip::data::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

const SIZE: usize = 16;
const CONTEXT: usize = 16;

/// A fresh empty folder under the system temp dir, unique per test.
fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!(
        "clusterclip-data-{}-{name}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A seeded random RGB image encoded as PNG or JPEG.
fn encoded_image(seed: u64, width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let mut rng = SampleRng::new(seed);
    let pixels: Vec<u8> = (0..width * height * 3)
        .map(|_| rng.below(256) as u8)
        .collect();
    let img = image::RgbImage::from_raw(width, height, pixels).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn png(seed: u64) -> Vec<u8> {
    encoded_image(
        seed,
        20 + seed as u32 % 7,
        18 + seed as u32 % 5,
        image::ImageFormat::Png,
    )
}

fn jpeg(seed: u64) -> Vec<u8> {
    encoded_image(seed, 24, 17, image::ImageFormat::Jpeg)
}

fn config(spec: &str) -> LoaderConfig {
    let mut cfg = LoaderConfig::new(spec, SIZE, CONTEXT, 49_408, 4);
    cfg.train = false;
    cfg.max_bad_fraction = 1.0;
    cfg
}

fn read_all(
    cfg: &LoaderConfig,
) -> Result<(Vec<Batch>, clusterclip::data::loader::DataStats), DataError> {
    let mut loader = open_loader(cfg)?;
    let mut batches = Vec::new();
    while let Some(batch) = loader.next_batch()? {
        batches.push(batch);
    }
    Ok((batches, loader.stats().clone()))
}

fn bad_count(stats: &clusterclip::data::loader::DataStats, kind: &str) -> u64 {
    stats
        .bad_by_kind
        .iter()
        .find(|(k, _)| k == kind)
        .map_or(0, |(_, n)| *n)
}

/// CSV with 6 good rows and one of each bad kind a CSV can hold.
fn write_bad_csv(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("img")).unwrap();
    let mut csv = b"filepath\ttitle\n".to_vec();
    for i in 0..6u64 {
        let name = format!("img/good{i}.png");
        std::fs::write(dir.join(&name), png(i)).unwrap();
        csv.extend_from_slice(format!("{name}\ta photo number {i}\n").as_bytes());
    }
    std::fs::write(dir.join("img/corrupt.jpg"), b"not an image at all").unwrap();
    let truncated = png(99);
    std::fs::write(
        dir.join("img/truncated.png"),
        &truncated[..truncated.len() / 2],
    )
    .unwrap();
    csv.extend_from_slice(b"img/missing.png\ta missing file\n");
    csv.extend_from_slice(b"img/good0.png\n");
    csv.extend_from_slice(b"img/good1.png\t   \n");
    csv.extend_from_slice(b"img/good2.png\tbad \xff\xfe utf8\n");
    csv.extend_from_slice(b"img/corrupt.jpg\tcorrupt\n");
    csv.extend_from_slice(b"img/truncated.png\ttruncated\n");
    csv.extend_from_slice(b"img/good3.png\ttoo\tmany\n");
    let path = dir.join("data.tsv");
    std::fs::write(&path, csv).unwrap();
    path
}

#[test]
fn csv_bad_records_are_skipped_and_counted() {
    let dir = temp_dir("csv-bad");
    let csv = write_bad_csv(&dir);
    let (batches, stats) = read_all(&config(csv.to_str().unwrap())).unwrap();
    assert_eq!(stats.samples, 6);
    assert_eq!(batches.iter().map(|b| b.n).collect::<Vec<_>>(), vec![4, 2]);
    assert_eq!(stats.bad, 7, "{}", stats.summary());
    assert_eq!(bad_count(&stats, "image file missing"), 1);
    assert_eq!(bad_count(&stats, "wrong field count"), 2);
    assert_eq!(bad_count(&stats, "empty caption"), 1);
    assert_eq!(bad_count(&stats, "caption is not UTF-8"), 1);
    assert_eq!(bad_count(&stats, "image does not decode"), 2);
    assert_eq!(stats.first_offenders.len(), 5);
    assert!(
        stats.first_offenders[0].contains("data.tsv:line 8"),
        "{:?}",
        stats.first_offenders
    );

    let mut strict = config(csv.to_str().unwrap());
    strict.max_bad_fraction = 0.01;
    match read_all(&strict) {
        Err(DataError::TooManyBad {
            bad: 7, seen: 13, ..
        }) => {}
        other => panic!(
            "expected TooManyBad 7 of 13, got {:?}",
            other.map(|(_, s)| s.summary())
        ),
    }
    let mut tolerant = config(csv.to_str().unwrap());
    tolerant.max_bad_fraction = 0.6;
    assert!(read_all(&tolerant).is_ok(), "7 of 13 is under 60%");
}

#[test]
fn csv_header_without_the_columns_fails_up_front() {
    let dir = temp_dir("csv-header");
    let path = dir.join("data.csv");
    std::fs::write(&path, "\u{FEFF}path,caption\na.png,x\n").unwrap();
    let mut cfg = config(path.to_str().unwrap());
    cfg.keys = RecordKeys {
        csv_separator: b',',
        ..RecordKeys::default()
    };
    let err = open_loader(&cfg)
        .err()
        .expect("missing column is an error")
        .to_string();
    assert!(
        err.contains("no column \"filepath\"") && err.contains("--csv-img-key"),
        "{err}"
    );
    cfg.keys.csv_img_key = "path".to_string();
    cfg.keys.csv_caption_key = "caption".to_string();
    let (_, stats) = read_all(&cfg).unwrap();
    assert_eq!((stats.samples, stats.bad), (0, 1), "a.png does not exist");
}

/// Members of a shard: (name, bytes).
fn write_tar(path: &Path, members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut writer = TarWriter::new(Vec::new());
    for (name, data) in members {
        writer.append(name, data).unwrap();
    }
    let bytes = writer.finish().unwrap();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn good_members(range: std::ops::Range<u64>) -> Vec<(String, Vec<u8>)> {
    range
        .flat_map(|i| {
            let image = if i % 2 == 0 {
                (format!("s{i:04}.jpg"), jpeg(i))
            } else {
                (format!("s{i:04}.png"), png(i))
            };
            [
                image,
                (format!("s{i:04}.txt"), format!("caption {i}").into_bytes()),
            ]
        })
        .collect()
}

#[test]
fn webdataset_bad_records_are_skipped_and_counted() {
    let dir = temp_dir("wds-bad");
    let mut first = good_members(0..5);
    first.push(("only_caption.txt".into(), b"no image here".to_vec()));
    first.push(("only_image.jpg".into(), jpeg(50)));
    first.push(("empty.jpg".into(), jpeg(51)));
    first.push(("empty.txt".into(), b" \n\t ".to_vec()));
    first.push(("latin1.png".into(), png(52)));
    first.push(("latin1.txt".into(), b"caf\xe9".to_vec()));
    first.push(("garbage.jpg".into(), b"\xff\xd8\xff garbage".to_vec()));
    first.push(("garbage.txt".into(), b"fine caption".to_vec()));
    write_tar(&dir.join("shard-0.tar"), &first);
    // Shard 1: 4 good samples, then cut inside the data of the 4th sample's image.
    let second = good_members(10..14);
    let bytes = write_tar(&dir.join("full.tar"), &second);
    let offset_of_last_image: usize = second[..6]
        .iter()
        .map(|(_, d)| 512 + d.len().div_ceil(512) * 512)
        .sum();
    std::fs::write(
        dir.join("shard-1.tar"),
        &bytes[..offset_of_last_image + 512 + 100],
    )
    .unwrap();
    // Shard 2: 2 good samples, then a header with a flipped byte.
    let third = good_members(20..23);
    let mut bytes = write_tar(&dir.join("full2.tar"), &third);
    let offset_of_third: usize = third[..4]
        .iter()
        .map(|(_, d)| 512 + d.len().div_ceil(512) * 512)
        .sum();
    bytes[offset_of_third + 3] ^= 0x55;
    std::fs::write(dir.join("shard-2.tar"), &bytes).unwrap();

    let spec = format!("{}/shard-{{0..2}}.tar", dir.display());
    let (batches, stats) = read_all(&config(&spec)).unwrap();
    assert_eq!(stats.samples, 5 + 3 + 2, "{}", stats.summary());
    assert_eq!(batches.iter().map(|b| b.n).sum::<usize>(), 10);
    assert_eq!(bad_count(&stats, "no image member"), 1);
    assert_eq!(bad_count(&stats, "no caption"), 1);
    assert_eq!(bad_count(&stats, "empty caption"), 1);
    assert_eq!(bad_count(&stats, "caption is not UTF-8"), 1);
    assert_eq!(bad_count(&stats, "image does not decode"), 1);
    assert_eq!(bad_count(&stats, "tar cut off mid-member"), 1);
    assert_eq!(bad_count(&stats, "garbled tar header"), 1);
    assert_eq!(stats.bad, 7);
    let tokenizer = Tokenizer::shared();
    assert_eq!(
        &batches[0].tokens[..CONTEXT],
        tokenizer.encode("caption 0", CONTEXT, 49_408).as_slice()
    );
}

#[test]
fn make_shards_round_trip_reads_back_the_csv_samples() {
    let dir = temp_dir("make-shards");
    let csv = write_bad_csv(&dir);
    let out = dir.join("shards");
    let report = make_shards(&MakeShardsConfig {
        csv: csv.clone(),
        out_dir: out.clone(),
        shard_size: 4,
        keys: RecordKeys::default(),
        max_bad_fraction: 1.0,
    })
    .unwrap();
    assert_eq!((report.samples, report.bad, report.shards.len()), (6, 7, 2));
    let sizes =
        parse_sizes_json(&std::fs::read_to_string(out.join("sizes.json")).unwrap()).unwrap();
    assert_eq!(
        sizes,
        vec![
            ("shard-000000.tar".to_string(), 4),
            ("shard-000001.tar".to_string(), 2)
        ]
    );
    match resolve_spec(&report.spec, DatasetType::Auto).unwrap() {
        DataSource::WebDataset {
            shards,
            num_samples,
        } => assert_eq!((shards.len(), num_samples), (2, Some(6))),
        other => panic!("{other:?}"),
    }
    let members: Vec<String> = TarReader::new(std::fs::File::open(&report.shards[1]).unwrap())
        .map(|m| m.unwrap().name)
        .collect();
    assert_eq!(
        members,
        [
            "000000004.png",
            "000000004.txt",
            "000000004.json",
            "000000005.png",
            "000000005.txt",
            "000000005.json"
        ]
    );

    let (from_csv, csv_stats) = read_all(&config(csv.to_str().unwrap())).unwrap();
    let (from_shards, shard_stats) = read_all(&config(&report.spec)).unwrap();
    assert_eq!((shard_stats.samples, shard_stats.bad), (6, 0));
    assert_eq!(csv_stats.samples, 6);
    assert_eq!(from_csv.len(), from_shards.len());
    for (a, b) in from_csv.iter().zip(&from_shards) {
        assert_eq!(a.n, b.n);
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.images, b.images, "same bytes, same pipeline");
    }
}

#[test]
fn specs_that_match_nothing_fail_before_reading() {
    let dir = temp_dir("spec");
    let missing = format!("{}/shard-{{000..003}}.tar", dir.display());
    let err = open_loader(&config(&missing)).err().unwrap().to_string();
    assert!(err.contains("matches no file"), "{err}");
    write_tar(&dir.join("shard-001.tar"), &good_members(0..1));
    let err = open_loader(&config(&missing)).err().unwrap().to_string();
    assert!(
        err.contains("3 of 4 files do not exist") && err.contains("shard-000.tar"),
        "{err}"
    );
    let err = open_loader(&config("nothing-here.csv"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("matches no file"), "{err}");
    let err = open_loader(&config("builtin:nope"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unknown built-in dataset"), "{err}");
    let err = open_loader(&config("weird-spec"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--dataset-type"), "{err}");

    assert_eq!(
        expand_braces("a/s-{08..11}.tar").unwrap(),
        ["a/s-08.tar", "a/s-09.tar", "a/s-10.tar", "a/s-11.tar"]
    );
    assert_eq!(
        expand_braces("{a,b}-{1..2}").unwrap(),
        ["a-1", "a-2", "b-1", "b-2"]
    );
    assert!(expand_braces("x{3..1}").is_err());
    assert!(expand_braces("x{0..99999999}").is_err());
    assert!(expand_braces("x{0..").is_err());
}

#[test]
fn image_folder_classes_labels_and_prompts() {
    let dir = temp_dir("imagefolder");
    for (class, count) in [("ankle_boot", 2u64), ("bag", 3)] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..count {
            std::fs::write(dir.join(class).join(format!("{i}.png")), png(i)).unwrap();
        }
        std::fs::write(dir.join(class).join("notes.txt"), "not an image").unwrap();
        std::fs::create_dir_all(dir.join(class).join("nested")).unwrap();
        if class == "bag" {
            std::fs::write(dir.join(class).join("nested/9.png"), png(9)).unwrap();
        }
    }
    let spec = format!("imagefolder:{}", dir.display());
    let mut loader = open_loader(&config(&spec)).unwrap();
    assert_eq!(loader.class_names().unwrap(), ["ankle boot", "bag"]);
    assert_eq!(loader.num_samples(), Some(6), "nested folders count");
    let batch = loader.next_batch().unwrap().unwrap();
    assert_eq!(batch.labels.as_deref(), Some(&[0, 0, 1, 1][..]));
    let prompt = Tokenizer::shared().encode("a photo of a ankle boot.", CONTEXT, 49_408);
    assert_eq!(&batch.tokens[..CONTEXT], prompt.as_slice());
    assert_eq!(loader.next_batch().unwrap().unwrap().n, 2);
    assert!(loader.next_batch().unwrap().is_none());
}

#[test]
fn ranks_read_blocks_of_records_and_whole_shards() {
    let dir = temp_dir("ranks");
    std::fs::create_dir_all(dir.join("img")).unwrap();
    let mut csv = b"filepath\ttitle\n".to_vec();
    for i in 0..10u64 {
        std::fs::write(dir.join(format!("img/{i}.png")), png(i)).unwrap();
        csv.extend_from_slice(format!("img/{i}.png\tcaption {i}\n").as_bytes());
    }
    std::fs::write(dir.join("data.tsv"), csv).unwrap();
    let captions = |spec: &str, rank: usize, ranks: usize| {
        let mut cfg = config(spec);
        cfg.batch_size = 2;
        cfg.share = RankShare {
            rank,
            ranks,
            block: 2,
        };
        let (batches, _) = read_all(&cfg).unwrap();
        let all: Vec<String> = batches.iter().flat_map(|b| b.captions.clone()).collect();
        all.iter()
            .map(|c| c.trim_start_matches("caption ").parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    // Blocks of 2 per rank in each global batch of 4; records 8 and 9 make no whole global
    // batch and are dropped on every rank.
    let spec = format!("{}/data.tsv", dir.display());
    assert_eq!(captions(&spec, 0, 2), [0, 1, 4, 5]);
    assert_eq!(captions(&spec, 1, 2), [2, 3, 6, 7]);
    assert_eq!(captions(&spec, 0, 1), (0..10).collect::<Vec<_>>());
    // Shards are dealt out whole, in shard order.
    for (k, range) in [0..3, 3..6, 6..9].into_iter().enumerate() {
        write_tar(&dir.join(format!("s{k}.tar")), &good_members(range));
    }
    let shards = format!("{}/s{{0..2}}.tar", dir.display());
    assert_eq!(captions(&shards, 0, 2), [0, 1, 2, 6, 7, 8]);
    assert_eq!(captions(&shards, 1, 2), [3, 4, 5]);
    let mut cfg = config(&shards);
    cfg.share = RankShare {
        rank: 0,
        ranks: 4,
        block: 4,
    };
    let err = open_loader(&cfg).err().expect("3 shards for 4 ranks");
    assert!(err.to_string().contains("3 shards for 4 ranks"), "{err}");
}

#[test]
fn batches_do_not_depend_on_worker_count_and_training_shuffles() {
    let dir = temp_dir("workers");
    write_tar(&dir.join("a.tar"), &good_members(0..9));
    let spec = format!("{}/a.tar", dir.display());
    let run = |workers: usize, train: bool, seed: u64| {
        let mut cfg = config(&spec);
        cfg.workers = workers;
        cfg.train = train;
        cfg.seed = seed;
        cfg.shuffle_buffer = 4;
        read_all(&cfg).unwrap().0
    };
    let tokens = |batches: &[Batch]| {
        batches
            .iter()
            .flat_map(|b| b.tokens.clone())
            .collect::<Vec<_>>()
    };
    let images = |batches: &[Batch]| {
        batches
            .iter()
            .flat_map(|b| b.images.clone())
            .collect::<Vec<_>>()
    };
    let one = run(1, true, 7);
    let three = run(3, true, 7);
    assert_eq!(tokens(&one), tokens(&three));
    assert_eq!(images(&one), images(&three));
    let eval = run(2, false, 7);
    assert_ne!(tokens(&one), tokens(&eval), "training order is shuffled");
    let mut sorted_train: Vec<Vec<u32>> =
        tokens(&one).chunks(CONTEXT).map(<[u32]>::to_vec).collect();
    let mut sorted_eval: Vec<Vec<u32>> =
        tokens(&eval).chunks(CONTEXT).map(<[u32]>::to_vec).collect();
    sorted_train.sort();
    sorted_eval.sort();
    assert_eq!(sorted_train, sorted_eval, "same samples, once each");
    assert_ne!(
        tokens(&run(1, true, 8)),
        tokens(&one),
        "another seed, another order"
    );
    let mut resampled = config(&spec);
    resampled.resampled = true;
    let mut loader = open_loader(&resampled).unwrap();
    for _ in 0..5 {
        assert_eq!(
            loader.next_batch().unwrap().unwrap().n,
            4,
            "resampling never ends"
        );
    }
}

#[test]
fn image_transforms_match_their_definitions() {
    let mut rng = SampleRng::new(3);
    for _ in 0..500 {
        let (w, h) = (1 + rng.below(300), 1 + rng.below(300));
        let crop = random_resized_crop_box(w, h, &mut rng);
        assert!(
            crop.left + crop.width <= w && crop.top + crop.height <= h,
            "{crop:?} in {w}x{h}"
        );
        let area = (crop.width * crop.height) as f64 / (w * h) as f64;
        let ratio = crop.width as f64 / crop.height as f64;
        // Rounding the side lengths moves small crops a little off the exact ranges.
        let regular = (0.85..=1.0).contains(&area)
            && (CROP_RATIO.0 * 0.9..=CROP_RATIO.1 * 1.1).contains(&ratio);
        let fallback = crop.width == w || crop.height == h;
        assert!(regular || fallback, "{crop:?} of {w}x{h}");
    }
    // A constant image resamples to the same constant, normalised.
    let grey = vec![128u8; 40 * 30 * 3];
    let mut out = vec![0f32; 3 * SIZE * SIZE];
    eval_transform(
        RgbView {
            rgb: &grey,
            width: 40,
            height: 30,
        },
        SIZE,
        &mut out,
    );
    for c in 0..3 {
        let want = (128.0 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        assert!(
            out[c * SIZE * SIZE..(c + 1) * SIZE * SIZE]
                .iter()
                .all(|v| (v - want).abs() < 1e-5)
        );
    }
    // Same size: resampling is the identity.
    let mut rng = SampleRng::new(4);
    let noise: Vec<u8> = (0..SIZE * SIZE * 3).map(|_| rng.below(256) as u8).collect();
    let mut resampled = vec![0f32; 3 * SIZE * SIZE];
    let mut direct = vec![0f32; 3 * SIZE * SIZE];
    eval_transform(
        RgbView {
            rgb: &noise,
            width: SIZE,
            height: SIZE,
        },
        SIZE,
        &mut resampled,
    );
    normalise_rgb(&noise, SIZE, &mut direct);
    let worst = resampled
        .iter()
        .zip(&direct)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "identity resample differs by {worst}");
    // Halving a 2x2-block image gives the block values (PIL's bicubic is symmetric there).
    let mut blocks = vec![0u8; 2 * SIZE * 2 * SIZE * 3];
    for y in 0..2 * SIZE {
        for x in 0..2 * SIZE {
            let v = if (x / 2 + y / 2) % 2 == 0 { 200 } else { 40 };
            blocks[(y * 2 * SIZE + x) * 3..][..3].fill(v);
        }
    }
    eval_transform(
        RgbView {
            rgb: &blocks,
            width: 2 * SIZE,
            height: 2 * SIZE,
        },
        SIZE,
        &mut resampled,
    );
    let centre = resampled[5 * SIZE + 5] * CLIP_STD[0] + CLIP_MEAN[0];
    let neighbour = resampled[5 * SIZE + 6] * CLIP_STD[0] + CLIP_MEAN[0];
    // Pillow 13's Image.resize(BICUBIC) gives 158/255 and 82/255 (it rounds to bytes).
    assert!((centre - 158.0 / 255.0).abs() < 1.0 / 255.0, "{centre}");
    assert!(
        (neighbour - 82.0 / 255.0).abs() < 1.0 / 255.0,
        "{neighbour}"
    );
}

/// A random 37x23 image resized by Pillow (BICUBIC) to 25x16, stored as input then output bytes;
/// the eval transform's centre 16x16 of it (columns 4..20: torchvision rounds 4.5 to even) must
/// agree up to Pillow's fixed-point rounding.
#[test]
fn eval_transform_matches_pillow_bicubic() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pil_bicubic_37x23_to_25x16.bin"
    );
    let bytes = std::fs::read(path).unwrap();
    let (input, pillow) = bytes.split_at(37 * 23 * 3);
    let mut out = vec![0f32; 3 * SIZE * SIZE];
    eval_transform(
        RgbView {
            rgb: input,
            width: 37,
            height: 23,
        },
        SIZE,
        &mut out,
    );
    let mut worst = 0f32;
    for y in 0..SIZE {
        for x in 0..SIZE {
            for c in 0..3 {
                let ours =
                    (out[c * SIZE * SIZE + y * SIZE + x] * CLIP_STD[c] + CLIP_MEAN[c]) * 255.0;
                let theirs = pillow[(y * 25 + x + 4) * 3 + c] as f32;
                worst = worst.max((ours - theirs).abs());
            }
        }
    }
    assert!(worst <= 1.01, "differs from Pillow by {worst} / 255");
}

#[test]
fn builtin_shapes_route_through_the_loader() {
    let mut cfg = config("builtin:shapes-val");
    cfg.batch_size = 8;
    let mut loader = open_loader(&cfg).unwrap();
    assert_eq!(
        loader.num_samples(),
        Some(clusterclip::data::shapes::VAL_SIZE as u64)
    );
    let classes = clusterclip::data::shapes::zeroshot_classes();
    assert_eq!(loader.class_names().unwrap(), classes.as_slice());
    let batch = loader.next_batch().unwrap().unwrap();
    assert_eq!(batch.n, 8);
    for i in 0..8 {
        let sample = clusterclip::data::shapes::val_sample(i as u64, SIZE);
        let mut image = vec![0f32; 3 * SIZE * SIZE];
        normalise_rgb(&sample.rgb, SIZE, &mut image);
        let plane = 3 * SIZE * SIZE;
        assert_eq!(&batch.images[i * plane..(i + 1) * plane], image.as_slice());
        let tokens = Tokenizer::shared().encode(&sample.caption, CONTEXT, 49_408);
        assert_eq!(
            &batch.tokens[i * CONTEXT..(i + 1) * CONTEXT],
            tokens.as_slice()
        );
        assert_eq!(batch.labels.as_ref().unwrap()[i], sample.label);
    }
    let mut train = config("builtin:shapes");
    train.train = true;
    train.seed = 5;
    let mut loader = open_loader(&train).unwrap();
    let first = loader.next_batch().unwrap().unwrap();
    let sample = clusterclip::data::shapes::train_sample(5, 0, SIZE);
    let tokens = Tokenizer::shared().encode(&sample.caption, CONTEXT, 49_408);
    assert_eq!(&first.tokens[..CONTEXT], tokens.as_slice());
    assert_eq!(loader.num_samples(), None, "the training stream is endless");
}

fn clusterclip(args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_clusterclip"))
        .args(args)
        .output()
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (
        output.status.success(),
        text(output.stdout),
        text(output.stderr),
    )
}

#[test]
fn cli_tokenize_make_shards_and_stats() {
    let (ok, out, _) = clusterclip(&[
        "tokenize",
        "--context-length",
        "10",
        "--json",
        "a photo of a cat.",
        "ankle boot",
    ]);
    assert!(ok);
    assert_eq!(
        out.trim(),
        "[[49406,320,1125,539,320,2368,269,49407,0,0],[49406,14777,8087,49407,0,0,0,0,0,0]]"
    );
    let (ok, out, _) = clusterclip(&[
        "tokenize",
        "--context-length",
        "6",
        "--vocab-size",
        "1000",
        "a photo of a cat.",
    ]);
    assert!(ok);
    assert_eq!(
        out.trim(),
        format!("998 320 {} 539 320 999", 512 + (1125 - 512) % 486)
    );

    let dir = temp_dir("cli");
    let csv = write_bad_csv(&dir);
    let out_dir = dir.join("shards");
    let args = [
        "data",
        "make-shards",
        "--csv",
        csv.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ];
    let (ok, _, err) = clusterclip(&[&args[..], &["--shard-size", "4"]].concat());
    assert!(!ok, "7 bad of 13 is over the default 1%");
    assert!(
        err.starts_with(&format!(
            "error: data spec {:?}: 7 of 13 records are bad",
            csv.to_str().unwrap()
        )) && err.lines().count() == 1,
        "{err}"
    );
    let (ok, out, err) = clusterclip(
        &[
            &args[..],
            &["--shard-size", "4", "--max-bad-fraction", "0.6"],
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("wrote 6 samples in 2 shards; 7 bad rows skipped"),
        "{out}"
    );
    let spec = format!("{}/shard-{{000000..000001}}.tar", out_dir.display());
    assert!(out.contains(&spec), "{out}");
    let (ok, out, err) = clusterclip(&["data", "stats", &spec, "--image-size", "8"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("6 samples, 0 bad\nsizes: 6 records expected\n"),
        "{out}"
    );
    let (ok, out, _) = clusterclip(&["data", "stats", csv.to_str().unwrap(), "--image-size", "8"]);
    assert!(ok);
    assert!(
        out.starts_with("6 samples, 7 bad (image file missing 1, wrong field count 2,"),
        "{out}"
    );
    let (ok, _, err) = clusterclip(&["data", "stats", "/nonexistent/shard-{0..3}.tar"]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        "error: data spec \"/nonexistent/shard-{0..3}.tar\": matches no file"
    );
}
