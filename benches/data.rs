//! Samples per second of the data pipeline alone: JPEG decode + crop + normalise + tokenise,
//! for 64 px and 224 px model inputs, on one thread and through the loader's workers.
//! `cargo bench --bench data` (prints the median of several runs).

use clusterclip::data::image_ops::{Normalisation, RgbView, SampleRng, train_transform};
use clusterclip::data::loader::{Batch, LoaderConfig, open_loader};
use clusterclip::data::records::{Payload, SampleShape, decode_rgb, process_record};
use clusterclip::data::tar::TarWriter;
use clusterclip::data::tokenizer::Tokenizer;
use std::time::Instant;

const SAMPLES: usize = 256;
const RUNS: usize = 5;
const CAPTIONS: &[&str] = &[
    "a red double decker bus driving down a busy london street at dusk",
    "Close-up photo of a golden retriever puppy playing with a tennis ball on the grass",
    "vintage poster: 'Visit Paris' — art deco style, 1930s",
    "a bowl of ramen with egg, scallions and pork belly, top view",
];

/// A photo-like JPEG: smooth gradients, a few edges and mild noise (quality 90).
fn photo_jpeg(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let mut rng = SampleRng::new(seed);
    let mut img = image::RgbImage::new(width, height);
    let (cx, cy) = (
        rng.below(width as usize) as f32,
        rng.below(height as usize) as f32,
    );
    for (x, y, pixel) in img.enumerate_pixels_mut() {
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let ring = (((x as f32 - cx).hypot(y as f32 - cy) / 9.0).sin() * 40.0) as i32;
        let noise = rng.below(24) as i32 - 12;
        let value = |base: f32| (base * 255.0) as i32 + ring + noise;
        *pixel =
            image::Rgb([value(fx), value(fy), value(1.0 - fx * fy)].map(|v| v.clamp(0, 255) as u8));
    }
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .unwrap();
    out
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn bench_single_thread(size: usize, source: (u32, u32), train: bool) -> f64 {
    let images: Vec<Vec<u8>> = (0..16).map(|i| photo_jpeg(source.0, source.1, i)).collect();
    let shape = SampleShape {
        image_size: size,
        context_length: 77,
        vocab_size: 49_408,
        train,
        seed: 1,
        normalisation: Normalisation::CLIP,
    };
    Tokenizer::shared();
    let rates = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            for i in 0..SAMPLES {
                let payload = Payload::Encoded {
                    image: images[i % images.len()].clone(),
                    caption: CAPTIONS[i % CAPTIONS.len()].as_bytes().to_vec(),
                };
                let sample = process_record(payload, &shape, i as u64).unwrap();
                std::hint::black_box(sample);
            }
            SAMPLES as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    median(rates)
}

/// Rates of the parts on one thread: (decode, transform, tokenise) in samples/s.
fn bench_parts(size: usize, source: (u32, u32)) -> (f64, f64, f64) {
    let images: Vec<Vec<u8>> = (0..16).map(|i| photo_jpeg(source.0, source.1, i)).collect();
    let decoded: Vec<_> = images
        .iter()
        .map(|jpeg| decode_rgb(jpeg).unwrap())
        .collect();
    let rate = |work: &mut dyn FnMut(usize)| {
        let rates = (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                (0..SAMPLES).for_each(&mut *work);
                SAMPLES as f64 / start.elapsed().as_secs_f64()
            })
            .collect();
        median(rates)
    };
    let decode = rate(&mut |i| {
        std::hint::black_box(decode_rgb(&images[i % images.len()]).unwrap());
    });
    let mut out = vec![0f32; 3 * size * size];
    let mut rng = SampleRng::new(2);
    let transform = rate(&mut |i| {
        let (rgb, width, height) = &decoded[i % decoded.len()];
        train_transform(
            RgbView {
                rgb,
                width: *width,
                height: *height,
            },
            size,
            &mut rng,
            &mut out,
        );
        std::hint::black_box(&out);
    });
    let tokenizer = Tokenizer::shared();
    let tokenise = rate(&mut |i| {
        std::hint::black_box(tokenizer.encode(CAPTIONS[i % CAPTIONS.len()], 77, 49_408));
    });
    (decode, transform, tokenise)
}

/// Loader throughput in samples/s, and the share of the time `next_batch` waited for workers.
fn bench_loader(size: usize, source: (u32, u32), workers: usize) -> (f64, f64) {
    let dir = std::env::temp_dir().join(format!(
        "clusterclip-bench-data-{}-{size}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let shard = dir.join("bench.tar");
    let mut writer = TarWriter::new(std::io::BufWriter::new(
        std::fs::File::create(&shard).unwrap(),
    ));
    for i in 0..SAMPLES {
        writer
            .append(
                &format!("{i:06}.jpg"),
                &photo_jpeg(source.0, source.1, i as u64),
            )
            .unwrap();
        writer
            .append(
                &format!("{i:06}.txt"),
                CAPTIONS[i % CAPTIONS.len()].as_bytes(),
            )
            .unwrap();
    }
    writer.finish().unwrap();
    let rates = (0..RUNS)
        .map(|run| {
            let mut cfg = LoaderConfig::new(shard.to_str().unwrap(), size, 77, 49_408, 64);
            cfg.workers = workers;
            cfg.seed = run as u64;
            let start = Instant::now();
            let mut loader = open_loader(&cfg).unwrap();
            let mut n = 0;
            let mut batch = Batch::empty();
            while loader.next_batch_into(&mut batch).unwrap() {
                n += batch.n;
            }
            let seconds = start.elapsed().as_secs_f64();
            (n as f64 / seconds, loader.stats().wait_seconds / seconds)
        })
        .collect::<Vec<_>>();
    std::fs::remove_dir_all(&dir).unwrap();
    let waits = rates.iter().map(|r| r.1).collect();
    (
        median(rates.into_iter().map(|r| r.0).collect()),
        median(waits),
    )
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("data pipeline, median of {RUNS} runs of {SAMPLES} samples ({cores} cores)");
    for (size, source) in [(64usize, (80u32, 64u32)), (224, (256, 256))] {
        let train = bench_single_thread(size, source, true);
        let eval = bench_single_thread(size, source, false);
        println!(
            "{size:>3} px from {}x{} JPEG, 1 thread: train (random resized crop) {train:.0} samples/s, eval (resize + centre crop) {eval:.0} samples/s",
            source.0, source.1
        );
        let (decode, transform, tokenise) = bench_parts(size, source);
        println!(
            "{size:>3} px parts, 1 thread: decode {decode:.0}/s, crop + resize + normalise {transform:.0}/s, tokenise {tokenise:.0}/s"
        );
        for workers in [1, 2] {
            let (rate, wait) = bench_loader(size, source, workers);
            println!(
                "{size:>3} px loader, WebDataset shard, {workers} worker(s), batch 64: {rate:.0} samples/s (waiting {:.0}% of the time)",
                100.0 * wait
            );
        }
    }
}
