//! Hostile data inputs from the 2026-12 trial (shared/trials/hostile-inputs-2026-12.md, issue
//! 10): nothing hangs, a lost shard weighs what it held, make-shards never mixes or half-writes
//! a dataset, and the readers take what users hand them (.tar.gz, a folder of shards).

use clusterclip::data::error::DataError;
use clusterclip::data::image_ops::SampleRng;
use clusterclip::data::loader::{
    Batch, DataStats, ENDLESS_BAD_STREAK, LoaderConfig, check_max_bad_fraction, open_loader,
};
use clusterclip::data::records::{MAX_IMAGE_FILE_BYTES, RecordKeys};
use clusterclip::data::shards::{MakeShardsConfig, make_shards};
use clusterclip::data::spec::{DataSource, DatasetType, read_image_folder, resolve_spec};
use clusterclip::data::tar::{TarReader, TarWriter};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SIZE: usize = 8;
const CONTEXT: usize = 8;
/// A guard that works stops these streams in well under a second; the bound only has to
/// separate "stops" from "spins forever" on a loaded 2-core machine.
const HANG_LIMIT: Duration = Duration::from_secs(60);

fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!(
        "clusterclip-hardening-{}-{name}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rgb_pixels(seed: u64, width: u32, height: u32) -> Vec<u8> {
    let mut rng = SampleRng::new(seed);
    (0..width * height * 3)
        .map(|_| rng.below(256) as u8)
        .collect()
}

fn encoded(seed: u64, width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_raw(width, height, rgb_pixels(seed, width, height)).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn png(seed: u64) -> Vec<u8> {
    encoded(seed, 12, 10, image::ImageFormat::Png)
}

/// `count` samples `{prefix}{i}.png` + `.txt`.
fn write_shard(path: &Path, prefix: &str, count: u64) -> Vec<u8> {
    let mut writer = TarWriter::new(Vec::new());
    for i in 0..count {
        writer.append(&format!("{prefix}{i}.png"), &png(i)).unwrap();
        writer
            .append(
                &format!("{prefix}{i}.txt"),
                format!("caption {i}").as_bytes(),
            )
            .unwrap();
    }
    let bytes = writer.finish().unwrap();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn config(spec: &str, max_bad_fraction: f64) -> LoaderConfig {
    let mut cfg = LoaderConfig::new(spec, SIZE, CONTEXT, 1000, 4);
    cfg.train = false;
    cfg.max_bad_fraction = max_bad_fraction;
    cfg
}

fn read_all(cfg: &LoaderConfig) -> Result<(Vec<Batch>, DataStats), DataError> {
    let mut loader = open_loader(cfg)?;
    let mut batches = Vec::new();
    while let Some(batch) = loader.next_batch()? {
        batches.push(batch);
    }
    Ok((batches, loader.stats().clone()))
}

fn bad_count(stats: &DataStats, kind: &str) -> u64 {
    stats
        .bad_by_kind
        .iter()
        .find(|(k, _)| k == kind)
        .map_or(0, |(_, n)| *n)
}

/// Runs `work` on a thread and fails the test if it does not end within [`HANG_LIMIT`] (the
/// thread is left behind; the test process ends with the test).
fn within_limit<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(HANG_LIMIT)
        .unwrap_or_else(|_| panic!("still running after {HANG_LIMIT:?}: hangs"))
}

/// The first batch of an endless (resampled) stream over `spec`, or its error.
fn first_resampled_batch(spec: String, max_bad_fraction: f64) -> Result<usize, String> {
    within_limit(move || {
        let mut cfg = config(&spec, max_bad_fraction);
        cfg.resampled = true;
        cfg.train = true;
        let mut loader = open_loader(&cfg).map_err(|e| e.to_string())?;
        let batch = loader.next_batch().map_err(|e| e.to_string())?;
        Ok(batch.map_or(0, |b| b.n))
    })
}

// Item 1: nothing hangs.

#[test]
fn resampled_stream_of_bad_records_stops_at_the_bad_fraction() {
    let dir = temp_dir("resampled-bad");
    write_shard(&dir.join("s-0.tar"), "k", 6);
    let spec = format!("{}/s-0.tar", dir.display());
    // Good shards read with a text key they do not have: every record lacks its caption.
    let err = within_limit({
        let spec = spec.clone();
        move || {
            let mut cfg = config(&spec, 0.01);
            cfg.resampled = true;
            cfg.keys.text_key = "caption".to_string();
            open_loader(&cfg).unwrap().next_batch().err().unwrap()
        }
    });
    match err {
        DataError::TooManyBad { bad, seen, .. } => assert_eq!((bad, seen), (1000, 1000)),
        other => panic!("{other}"),
    }
}

#[test]
fn resampled_stream_of_bad_records_stops_even_when_all_may_be_bad() {
    let dir = temp_dir("resampled-streak");
    let csv = dir.join("missing.tsv");
    std::fs::write(&csv, "filepath\ttitle\nnope0.png\ta\nnope1.png\tb\n").unwrap();
    let err = first_resampled_batch(csv.display().to_string(), 1.0).unwrap_err();
    assert!(
        err.contains(&format!(
            "the last {ENDLESS_BAD_STREAK} records of an endless stream were all bad"
        )) && err.contains("image file missing"),
        "{err}"
    );
}

#[test]
fn resampled_empty_shards_stop_instead_of_spinning() {
    let dir = temp_dir("resampled-empty");
    std::fs::write(dir.join("zero-bytes.tar"), b"").unwrap();
    std::fs::write(dir.join("end-blocks.tar"), [0u8; 1024]).unwrap();
    for name in ["zero-bytes.tar", "end-blocks.tar"] {
        let spec = format!("{}/{name}", dir.display());
        let err = first_resampled_batch(spec.clone(), 0.01).unwrap_err();
        assert!(
            err.contains("1000 of 1000 records are bad") && err.contains("shard holds no sample"),
            "{name}: {err}"
        );
        // Read once, an empty shard is one bad record, not a hang or a silent pass.
        let (_, stats) = read_all(&config(&spec, 1.0)).unwrap();
        assert_eq!((stats.samples, stats.bad), (0, 1), "{name}");
        assert_eq!(
            stats.first_offenders,
            [format!("{spec}: shard holds no sample")]
        );
    }
    // sizes.json decides: a shard listed with 0 samples is fine, one listed with 7 lost them.
    std::fs::write(
        dir.join("sizes.json"),
        r#"{"zero-bytes.tar": 0, "end-blocks.tar": 7}"#,
    )
    .unwrap();
    let spec = format!("{0}/zero-bytes.tar::{0}/end-blocks.tar", dir.display());
    let (_, stats) = read_all(&config(&spec, 1.0)).unwrap();
    assert_eq!((stats.samples, stats.bad), (0, 7), "{}", stats.summary());
}

/// `clusterclip ARGS`, killed after [`HANG_LIMIT`]: (exit code, stdout, stderr).
fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_clusterclip"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > HANG_LIMIT {
            child.kill().unwrap();
            panic!("clusterclip {args:?} still running after {HANG_LIMIT:?}: hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (
        output.status.code(),
        text(output.stdout),
        text(output.stderr),
    )
}

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    lines[0]
}

#[test]
fn cli_resampled_stats_of_bad_shards_end_with_one_line() {
    let dir = temp_dir("cli-resampled");
    write_shard(&dir.join("shard-0.tar"), "k", 4);
    let spec = format!("{}/shard-{{0..0}}.tar", dir.display());
    let (code, _, err) = run_cli(&[
        "data",
        "stats",
        &spec,
        "--text-key",
        "caption",
        "--dataset-resampled",
        "--limit",
        "100",
    ]);
    assert_eq!(code, Some(1));
    let line = one_error_line(&err);
    assert!(
        line.starts_with("error: data spec") && line.contains("were all bad"),
        "{line}"
    );
}

// Item 4: make-shards neither mixes datasets nor leaves partial ones, and writes what reads back.

/// A TSV of `count` PNG rows (seeds from `seed0`) with captions.
fn write_png_csv(dir: &Path, name: &str, seed0: u64, count: u64) -> PathBuf {
    let mut text = String::from("filepath\ttitle\n");
    for i in 0..count {
        let file = format!("{name}-{i}.png");
        std::fs::write(dir.join(&file), png(seed0 + i)).unwrap();
        text.push_str(&format!("{file}\t{name} photo {i}\n"));
    }
    let csv = dir.join(format!("{name}.tsv"));
    std::fs::write(&csv, text).unwrap();
    csv
}

fn shards_config(csv: &Path, out: &Path, shard_size: usize) -> MakeShardsConfig {
    MakeShardsConfig {
        csv: csv.to_path_buf(),
        out_dir: out.to_path_buf(),
        shard_size,
        keys: RecordKeys::default(),
        max_bad_fraction: 0.01,
    }
}

/// Every file under `dir`, with its bytes, sorted by name.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn make_shards_refuses_a_folder_that_holds_a_dataset() {
    let dir = temp_dir("shards-reuse");
    let big = write_png_csv(&dir, "big", 0, 9);
    let small = write_png_csv(&dir, "small", 100, 3);
    let header_only = dir.join("header.tsv");
    std::fs::write(&header_only, "filepath\ttitle\n").unwrap();
    let out = dir.join("ms");
    let report = make_shards(&shards_config(&big, &out, 2)).unwrap();
    assert_eq!((report.samples, report.shards.len()), (9, 5));
    let before = snapshot(&out);
    assert_eq!(before.len(), 6, "5 shards and sizes.json");
    for csv in [&small, &header_only] {
        let err = make_shards(&shards_config(csv, &out, 4))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("--out {} is not empty", out.display())),
            "{err}"
        );
        assert!(
            snapshot(&out) == before,
            "{} changed the old dataset",
            csv.display()
        );
    }
    // An empty folder is fine, and a CSV without rows is an error that writes nothing.
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = make_shards(&shards_config(&header_only, &empty, 4))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no sample to write (it holds no row)"),
        "{err}"
    );
    assert!(snapshot(&empty).is_empty());
    let report = make_shards(&shards_config(&small, &empty, 4)).unwrap();
    assert_eq!(report.shards, [empty.join("shard-000000.tar")]);
    assert_eq!(snapshot(&empty).len(), 2);
}

#[test]
fn make_shards_that_fail_leave_nothing_behind() {
    let dir = temp_dir("shards-fail");
    let csv = write_png_csv(&dir, "rows", 0, 9);
    let mut text = std::fs::read_to_string(&csv).unwrap();
    text.push_str("gone.png\tmissing image\n");
    std::fs::write(&csv, text).unwrap();
    let out = dir.join("nested/out");
    let err = make_shards(&shards_config(&csv, &out, 2)).unwrap_err();
    assert!(err.to_string().contains("1 of 10 records are bad"), "{err}");
    assert!(!out.exists(), "no partial shards");
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("nested")).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "no staging folder left: {leftovers:?}"
    );
}

#[test]
fn make_shards_stores_bmp_gif_and_tiff_as_png_that_read_back() {
    let dir = temp_dir("shards-formats");
    let formats = [
        ("bmp", image::ImageFormat::Bmp),
        ("gif", image::ImageFormat::Gif),
        ("tif", image::ImageFormat::Tiff),
        ("jpg", image::ImageFormat::Jpeg),
    ];
    let mut text = String::from("filepath\ttitle\n");
    for (i, (ext, format)) in formats.iter().enumerate() {
        std::fs::write(
            dir.join(format!("{i}.{ext}")),
            encoded(i as u64, 12, 10, *format),
        )
        .unwrap();
        text.push_str(&format!("{i}.{ext}\ta {ext} image\n"));
    }
    let csv = dir.join("formats.tsv");
    std::fs::write(&csv, text).unwrap();
    let out = dir.join("out");
    let report = make_shards(&shards_config(&csv, &out, 10)).unwrap();
    assert_eq!((report.samples, report.reencoded), (4, 3));
    let members: Vec<(String, Vec<u8>)> =
        TarReader::new(std::fs::File::open(&report.shards[0]).unwrap())
            .map(|m| m.map(|m| (m.name, m.data)).unwrap())
            .filter(|(name, _)| !name.ends_with(".txt") && !name.ends_with(".json"))
            .collect();
    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "000000000.png",
            "000000001.png",
            "000000002.png",
            "000000003.jpg"
        ]
    );
    // Lossless: the PNG holds the pixels the source decodes to (GIF's palette included).
    for (i, (ext, _)) in formats.iter().take(3).enumerate() {
        let source = image::open(dir.join(format!("{i}.{ext}")))
            .unwrap()
            .into_rgb8();
        let stored = image::load_from_memory(&members[i].1).unwrap().into_rgb8();
        assert!(source == stored, "{ext}");
    }
    let (_, stats) = read_all(&config(&report.spec, 0.0)).unwrap();
    assert_eq!((stats.samples, stats.bad), (4, 0), "{}", stats.summary());
}

// Item 5: counting.

#[test]
fn a_lost_shard_counts_the_samples_sizes_json_gives_it() {
    let dir = temp_dir("lost-shard");
    for i in 0..4 {
        write_shard(&dir.join(format!("shard-{i}.tar")), &format!("s{i}-"), 5);
    }
    std::fs::write(
        dir.join("sizes.json"),
        r#"{"shard-0.tar": 5, "shard-1.tar": 5, "shard-2.tar": 5, "shard-3.tar": 5}"#,
    )
    .unwrap();
    let mut rng = SampleRng::new(7);
    let garbage: Vec<u8> = (0..20_000).map(|_| rng.below(256) as u8).collect();
    std::fs::write(dir.join("shard-1.tar"), garbage).unwrap();
    // Shard 2 cut inside its third sample's image: two samples read, three lost.
    let bytes = write_shard(&dir.join("full.tar"), "s2-", 5);
    let (png0, png1) = (png(0).len(), png(1).len());
    let member = |len: usize| 512 + len.div_ceil(512) * 512;
    let cut = member(png0) + member(9) + member(png1) + member(9) + 512 + 40;
    std::fs::write(dir.join("shard-2.tar"), &bytes[..cut]).unwrap();
    let spec = format!("{}/shard-{{0..3}}.tar", dir.display());

    let (_, stats) = read_all(&config(&spec, 1.0)).unwrap();
    assert_eq!(
        (stats.samples, stats.bad),
        (12, 5 + 3),
        "{}",
        stats.summary()
    );
    assert_eq!(bad_count(&stats, "garbled tar header"), 5);
    assert_eq!(bad_count(&stats, "tar cut off mid-member"), 3);
    assert!(
        stats
            .summary()
            .contains("5 samples lost (count from sizes.json)"),
        "{}",
        stats.summary()
    );
    let err = read_all(&config(&spec, 0.01)).unwrap_err().to_string();
    assert!(err.contains("8 of 20 records are bad"), "{err}");

    // Without sizes.json the loss cannot be known: one record, and the message says so.
    std::fs::remove_file(dir.join("sizes.json")).unwrap();
    let (_, stats) = read_all(&config(&spec, 1.0)).unwrap();
    assert_eq!((stats.samples, stats.bad), (12, 2));
    assert!(
        stats
            .summary()
            .contains("no sizes.json lists it, so counted as 1"),
        "{}",
        stats.summary()
    );
}

#[test]
fn a_lost_shard_read_first_does_not_decide_the_share_alone() {
    let dir = temp_dir("lost-first");
    std::fs::write(dir.join("shard-0.tar"), vec![0xA5u8; 4096]).unwrap();
    let image = png(1);
    let mut writer = TarWriter::new(Vec::new());
    for i in 0..10_000 {
        writer.append(&format!("k{i:05}.png"), &image).unwrap();
        writer.append(&format!("k{i:05}.txt"), b"a photo").unwrap();
    }
    std::fs::write(dir.join("shard-1.tar"), writer.finish().unwrap()).unwrap();
    std::fs::write(
        dir.join("sizes.json"),
        r#"{"shard-0.tar": 1000, "shard-1.tar": 10000}"#,
    )
    .unwrap();
    // 1000 of the first 1000 records are lost, yet 1000 of 11 000 (9.1%) is under 10%.
    let spec = format!("{}/shard-{{0..1}}.tar", dir.display());
    let (_, stats) = read_all(&config(&spec, 0.1)).unwrap();
    assert_eq!((stats.samples, stats.bad), (10_000, 1000));
    let err = read_all(&config(&spec, 0.09)).unwrap_err().to_string();
    assert!(err.contains("1000 of 11000 records are bad"), "{err}");
}

#[test]
fn a_truncated_jpeg_is_a_bad_record() {
    let dir = temp_dir("truncated-jpeg");
    let whole = encoded(3, 64, 64, image::ImageFormat::Jpeg);
    std::fs::write(dir.join("whole.jpg"), &whole).unwrap();
    std::fs::write(dir.join("half.jpg"), &whole[..whole.len() / 2]).unwrap();
    let csv = dir.join("t.tsv");
    std::fs::write(&csv, "filepath\ttitle\nwhole.jpg\twhole\nhalf.jpg\thalf\n").unwrap();
    let (_, stats) = read_all(&config(csv.to_str().unwrap(), 1.0)).unwrap();
    assert_eq!((stats.samples, stats.bad), (1, 1), "{}", stats.summary());
    assert_eq!(
        stats.first_offenders,
        [format!(
            "{}:line 3: image does not decode (JPEG cut off: no end-of-image marker after its last scan)",
            csv.display()
        )]
    );
}

#[test]
fn max_bad_fraction_has_one_validator_that_make_shards_and_stats_use() {
    for good in [0.0, 0.01, 1.0] {
        assert!(check_max_bad_fraction(good).is_ok());
    }
    for bad in [f64::NAN, 5.0, -0.1, f64::INFINITY] {
        assert!(check_max_bad_fraction(bad).is_err(), "{bad}");
    }
    let dir = temp_dir("fraction");
    let csv = write_png_csv(&dir, "rows", 0, 3);
    let out = dir.join("out");
    for value in ["nan", "5"] {
        let (code, _, err) = run_cli(&[
            "data",
            "make-shards",
            "--csv",
            csv.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-bad-fraction",
            value,
        ]);
        assert_eq!(code, Some(1), "{value}");
        let line = one_error_line(&err);
        assert!(line.contains("must be in [0, 1]"), "{line}");
        assert!(!out.exists());
    }
    // data stats counts the pass, then applies the limit when one is given.
    let mut text = std::fs::read_to_string(&csv).unwrap();
    text.push_str("gone.png\tmissing\n");
    std::fs::write(&csv, text).unwrap();
    let stats_args = ["data", "stats", csv.to_str().unwrap(), "--image-size", "8"];
    let (code, out, _) = run_cli(&stats_args);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("3 samples, 1 bad"), "{out}");
    let (code, out, err) = run_cli(&[&stats_args[..], &["--max-bad-fraction", "0.2"]].concat());
    assert_eq!(code, Some(1));
    assert!(out.starts_with("3 samples, 1 bad"), "{out}");
    let line = one_error_line(&err);
    assert!(
        line.contains("1 of 4 records are bad (25.00%, over --max-bad-fraction 0.2)"),
        "{line}"
    );
    let (code, _, err) = run_cli(&[&stats_args[..], &["--max-bad-fraction", "0.25"]].concat());
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run_cli(&[&stats_args[..], &["--max-bad-fraction", "nan"]].concat());
    assert_eq!(code, Some(1));
    assert!(one_error_line(&err).contains("must be in [0, 1]"));
}

// Item 6: bounded reads.

#[test]
fn image_files_over_the_cap_are_bad_records_naming_file_and_cap() {
    let dir = temp_dir("huge");
    let sparse = dir.join("sparse.png");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(MAX_IMAGE_FILE_BYTES + 1)
        .unwrap();
    let mut rows = format!("filepath\ttitle\n{}\tsparse\n", sparse.display());
    let zero = Path::new("/dev/zero");
    if zero.exists() {
        rows.push_str("/dev/zero\tendless\n");
    }
    let csv = dir.join("huge.tsv");
    std::fs::write(&csv, rows).unwrap();
    let (_, stats) = within_limit(move || read_all(&config(csv.to_str().unwrap(), 1.0)).unwrap());
    let expected = if zero.exists() { 2 } else { 1 };
    assert_eq!(bad_count(&stats, "image file too large"), expected);
    assert!(
        stats.first_offenders[0].ends_with(&format!(
            "image file {} is over the 64 MiB cap per image",
            sparse.display()
        )),
        "{:?}",
        stats.first_offenders
    );
}

// Item 9: image folders and shard formats.

#[cfg(unix)]
#[test]
fn image_folder_symlink_loops_are_walked_once_and_empty_classes_dropped() {
    let dir = temp_dir("imagefolder");
    for class in ["cat", "dog", "empty"] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
    }
    std::fs::write(dir.join("cat/0.png"), png(0)).unwrap();
    std::fs::write(dir.join("dog/0.png"), png(1)).unwrap();
    std::os::unix::fs::symlink("..", dir.join("cat/up")).unwrap();
    std::os::unix::fs::symlink(".", dir.join("dog/self")).unwrap();
    let folder = read_image_folder(&dir).unwrap();
    assert_eq!(folder.classes, ["cat", "dog"]);
    assert_eq!(
        folder.items,
        [(dir.join("cat/0.png"), 0), (dir.join("dog/0.png"), 1)]
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn gzipped_shards_read_like_plain_ones() {
    let dir = temp_dir("tar-gz");
    let bytes = write_shard(&dir.join("plain.tar"), "k", 5);
    std::fs::write(dir.join("a.tar.gz"), gzip(&bytes)).unwrap();
    std::fs::write(dir.join("b.tgz"), gzip(&bytes)).unwrap();
    let (plain, _) = read_all(&config(&format!("{}/plain.tar", dir.display()), 0.0)).unwrap();
    for name in ["a.tar.gz", "b.tgz"] {
        let (batches, stats) =
            read_all(&config(&format!("{}/{name}", dir.display()), 0.0)).unwrap();
        assert_eq!((stats.samples, stats.bad), (5, 0), "{name}");
        for (a, b) in plain.iter().zip(&batches) {
            assert_eq!((&a.images, &a.tokens), (&b.images, &b.tokens), "{name}");
        }
    }
    // A gzip stream cut short is one bad record, not a garbled header.
    let cut = gzip(&bytes);
    std::fs::write(dir.join("cut.tar.gz"), &cut[..cut.len() / 2]).unwrap();
    let (_, stats) = read_all(&config(&format!("{}/cut.tar.gz", dir.display()), 1.0)).unwrap();
    assert_eq!(
        bad_count(&stats, "shard unreadable"),
        1,
        "{}",
        stats.summary()
    );
    assert_eq!(bad_count(&stats, "garbled tar header"), 0);
}

#[test]
fn a_small_gzip_shard_claiming_a_huge_member_stops_at_the_cap() {
    let dir = temp_dir("gzip-bomb");
    let mut writer = TarWriter::new(Vec::new());
    for i in 0..2 {
        writer.append(&format!("k{i}.png"), &png(i)).unwrap();
        writer.append(&format!("k{i}.txt"), b"caption").unwrap();
    }
    let huge = MAX_IMAGE_FILE_BYTES as usize + (1 << 20);
    writer.append("big.png", &vec![0u8; huge]).unwrap();
    let compressed = gzip(&writer.finish().unwrap());
    assert!(
        compressed.len() < huge / 100,
        "a bomb: {} bytes",
        compressed.len()
    );
    let shard = dir.join("bomb.tar.gz");
    std::fs::write(&shard, compressed).unwrap();
    let (_, stats) = read_all(&config(shard.to_str().unwrap(), 1.0)).unwrap();
    assert_eq!((stats.samples, stats.bad), (2, 1), "{}", stats.summary());
    assert!(
        stats.first_offenders[0].contains(&format!(
            "tar member \"big.png\" holds {huge} bytes, over the 64 MiB cap"
        )),
        "{:?}",
        stats.first_offenders
    );
}

#[test]
fn a_folder_of_shards_is_read_as_webdataset() {
    let dir = temp_dir("shard-folder");
    for i in [1, 0] {
        write_shard(&dir.join(format!("shard-{i:06}.tar")), &format!("s{i}-"), 3);
    }
    std::fs::write(
        dir.join("sizes.json"),
        r#"{"shard-000000.tar": 3, "shard-000001.tar": 3}"#,
    )
    .unwrap();
    let spec = dir.display().to_string();
    for dataset_type in [DatasetType::Auto, DatasetType::WebDataset] {
        match resolve_spec(&spec, dataset_type).unwrap() {
            DataSource::WebDataset {
                shards,
                num_samples,
            } => {
                assert_eq!(
                    shards,
                    [dir.join("shard-000000.tar"), dir.join("shard-000001.tar")]
                );
                assert_eq!(num_samples, Some(6));
            }
            other => panic!("{other:?}"),
        }
    }
    let err = resolve_spec(&format!("imagefolder:{spec}"), DatasetType::Auto)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("it holds shards: pass it with --dataset-type webdataset"),
        "{err}"
    );
}
