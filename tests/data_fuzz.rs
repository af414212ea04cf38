//! Fuzzing the readers with proptest on random and mutated bytes: nothing may panic, and what
//! survives intact must read back exactly. Case counts are bounded so the file runs in seconds.

use clusterclip::data::csv::{parse_rows, quote_field};
use clusterclip::data::image_ops::{RgbView, SampleRng, eval_transform, train_transform};
use clusterclip::data::loader::{LoaderConfig, open_loader};
use clusterclip::data::records::{caption_text, decode_rgb, split_member_name};
use clusterclip::data::spec::{expand_braces, parse_sizes_json};
use clusterclip::data::tar::{TarMember, TarReader, TarWriter};
use clusterclip::data::text_clean::{clean_caption, html_unescape};
use clusterclip::data::tokenizer::{END_OF_TEXT, Tokenizer};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// A valid archive of `count` members with seeded contents.
fn sample_tar(count: usize, seed: u64) -> (Vec<u8>, Vec<TarMember>) {
    let mut rng = SampleRng::new(seed);
    let members: Vec<TarMember> = (0..count)
        .map(|i| {
            let len = rng.below(1500);
            let data = (0..len).map(|_| rng.below(256) as u8).collect();
            TarMember {
                name: format!("dir/{i:05}.{}", ["jpg", "txt", "json"][i % 3]),
                data,
            }
        })
        .collect();
    let mut writer = TarWriter::new(Vec::new());
    for member in &members {
        writer.append(&member.name, &member.data).unwrap();
    }
    (writer.finish().unwrap(), members)
}

fn read_members(bytes: &[u8]) -> (Vec<TarMember>, usize) {
    let mut members = Vec::new();
    let mut errors = 0;
    for item in TarReader::new(bytes) {
        match item {
            Ok(member) => members.push(member),
            Err(_) => errors += 1,
        }
    }
    (members, errors)
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn tar_reader_survives_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let (_, errors) = read_members(&bytes);
        prop_assert!(errors <= 1, "a stream ends at its first error");
    }

    #[test]
    fn tar_cut_anywhere_keeps_the_members_before_the_cut(seed in any::<u64>(), cut_fraction in 0.0f64..1.0) {
        let (bytes, members) = sample_tar(6, seed);
        let cut = (bytes.len() as f64 * cut_fraction) as usize;
        let (read, errors) = read_members(&bytes[..cut]);
        prop_assert!(read.len() <= members.len());
        prop_assert_eq!(&read[..], &members[..read.len()]);
        prop_assert!(errors <= 1);
        if cut == bytes.len() {
            prop_assert_eq!(read.len(), members.len());
        }
    }

    #[test]
    fn tar_reader_survives_mutations(seed in any::<u64>(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let (mut bytes, members) = sample_tar(5, seed);
        for (position, value) in flips {
            let index = position % bytes.len();
            bytes[index] = value;
        }
        let (read, errors) = read_members(&bytes);
        prop_assert!(errors <= 1);
        prop_assert!(read.len() <= members.len() + 8, "garbage cannot create many members");
    }

    #[test]
    fn csv_parser_survives_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000), tab in any::<bool>()) {
        let rows = parse_rows(&bytes, if tab { b'\t' } else { b',' });
        prop_assert!(rows.iter().all(|row| !row.fields.is_empty() && row.line >= 1));
    }

    #[test]
    fn csv_fields_round_trip_through_quoting(table in proptest::collection::vec(proptest::collection::vec("[a-z\t,\"\n\r é]{0,8}", 3), 1..6)) {
        let text: String = table
            .iter()
            .map(|row| row.iter().map(|field| quote_field(field, '\t')).collect::<Vec<_>>().join("\t") + "\n")
            .collect();
        let parsed = parse_rows(text.as_bytes(), b'\t');
        let expected: Vec<Vec<Vec<u8>>> = table
            .iter()
            .map(|row| row.iter().map(|field| field.as_bytes().to_vec()).collect())
            .collect();
        let got: Vec<Vec<Vec<u8>>> = parsed.into_iter().map(|row| row.fields).collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn captions_of_any_bytes_tokenize_to_the_context(bytes in proptest::collection::vec(any::<u8>(), 0..200), context in 1usize..40, vocab in prop_oneof![Just(49_408usize), Just(1000), 3usize..600]) {
        let text = match caption_text(&bytes) {
            Ok(text) => text,
            Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
        };
        let ids = Tokenizer::shared().encode(&text, context, vocab);
        prop_assert_eq!(ids.len(), context);
        let end = if vocab >= 49_408 { END_OF_TEXT } else { vocab as u32 - 1 };
        prop_assert!(ids.contains(&end));
        prop_assert!(ids.iter().all(|&id| id <= end));
    }

    #[test]
    fn text_clean_up_survives_entity_soup(text in "[&#;xX0-9a-zA-Z<>\u{80}-\u{9f}\u{ff01}-\u{ff9f} '’ﬁ\u{301}\u{1b}\\[]{0,60}") {
        let cleaned = clean_caption(&text);
        prop_assert!(!cleaned.starts_with(' ') && !cleaned.ends_with(' '));
        let _ = html_unescape(&text);
    }

    #[test]
    fn spec_parsers_survive_random_text(text in "[{}.,0-9a-z:\"]{0,40}") {
        let _ = expand_braces(&text);
        let _ = parse_sizes_json(&text);
        let _ = split_member_name(&text);
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn image_decoding_survives_mutated_files(seed in any::<u64>(), png in any::<bool>(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6), cut in 0.3f64..1.0) {
        let mut rng = SampleRng::new(seed);
        let (w, h) = (1 + rng.below(40) as u32, 1 + rng.below(40) as u32);
        let pixels: Vec<u8> = (0..w * h * 3).map(|_| rng.below(256) as u8).collect();
        let mut out = std::io::Cursor::new(Vec::new());
        let format = if png { image::ImageFormat::Png } else { image::ImageFormat::Jpeg };
        image::RgbImage::from_raw(w, h, pixels).unwrap().write_to(&mut out, format).unwrap();
        let mut bytes = out.into_inner();
        for (position, value) in flips {
            let index = position % bytes.len();
            bytes[index] = value;
        }
        bytes.truncate(((bytes.len() as f64) * cut) as usize);
        if let Ok((rgb, width, height)) = decode_rgb(&bytes) {
            prop_assert_eq!(rgb.len(), width * height * 3);
            let mut image = vec![0f32; 3 * 8 * 8];
            eval_transform(RgbView { rgb: &rgb, width, height }, 8, &mut image);
            train_transform(RgbView { rgb: &rgb, width, height }, 8, &mut rng, &mut image);
            prop_assert!(image.iter().all(|v| v.is_finite()));
        }
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// Whole shards of mutated bytes through the loader: counts add up, nothing hangs or panics.
    #[test]
    fn loader_survives_mutated_shards(seed in any::<u64>(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..12), cut in 0.5f64..1.0) {
        let mut rng = SampleRng::new(seed);
        let mut writer = TarWriter::new(Vec::new());
        for i in 0..4 {
            let pixels: Vec<u8> = (0..12 * 10 * 3).map(|_| rng.below(256) as u8).collect();
            let mut png = std::io::Cursor::new(Vec::new());
            image::RgbImage::from_raw(12, 10, pixels).unwrap().write_to(&mut png, image::ImageFormat::Png).unwrap();
            writer.append(&format!("k{i}.png"), &png.into_inner()).unwrap();
            writer.append(&format!("k{i}.txt"), format!("sample {i}").as_bytes()).unwrap();
        }
        let mut bytes = writer.finish().unwrap();
        for (position, value) in flips {
            let index = position % bytes.len();
            bytes[index] = value;
        }
        bytes.truncate(((bytes.len() as f64) * cut) as usize);
        let dir = std::env::temp_dir().join(format!("clusterclip-fuzz-{}-{seed}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let shard = dir.join("s.tar");
        std::fs::write(&shard, &bytes).unwrap();
        let mut cfg = LoaderConfig::new(shard.to_str().unwrap(), 8, 8, 1000, 3);
        cfg.max_bad_fraction = 1.0;
        cfg.train = seed % 2 == 0;
        let mut loader = open_loader(&cfg).unwrap();
        let mut delivered = 0;
        while let Some(batch) = loader.next_batch().unwrap() {
            prop_assert_eq!(batch.images.len(), batch.n * 3 * 64);
            prop_assert_eq!(batch.tokens.len(), batch.n * 8);
            delivered += batch.n as u64;
        }
        prop_assert_eq!(delivered, loader.stats().samples);
        prop_assert!(loader.stats().samples <= 4 + 8);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
