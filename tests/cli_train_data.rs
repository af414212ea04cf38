//! `clusterclip train` reading a CSV through the reader flags it shares with `data` and `eval`:
//! custom separator and columns, the bad-record line after each epoch, `--max-bad-fraction`
//! stopping the run, and a wrong column failing with one line. Each run is two steps of 4.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use clusterclip::data::records::{ReadOrder, index_order};
use common::cli::{clusterclip, error_line, stderr, temp_dir};

/// Samples per training step.
const BATCH: usize = 4;
/// Good samples two steps use.
const RUN_SAMPLES: usize = 2 * BATCH;
/// The reader flags for the CSVs written here.
const CSV_FLAGS: [&str; 6] = [
    "--csv-separator",
    ",",
    "--csv-img-key",
    "path",
    "--csv-caption-key",
    "caption",
];

/// A row of the CSV: what its image file is.
#[derive(Clone, Copy, PartialEq)]
enum Row {
    Good,
    /// The path names no file.
    MissingFile,
    /// The file holds bytes that are no image.
    Corrupt,
}

/// `dir/data.csv` with columns `caption,path` (the image column second, so the reader must find
/// it by name), one row per entry of `rows`; returns the CSV's path.
fn write_csv(dir: &Path, rows: &[Row]) -> PathBuf {
    let mut text = String::from("caption,path\n");
    for (i, row) in rows.iter().enumerate() {
        let name = format!("img{i:02}.png");
        match row {
            Row::Good => {
                let pixels: Vec<u8> = (0..24 * 20 * 3).map(|p| (p * 7 + i * 31) as u8).collect();
                image::RgbImage::from_raw(24, 20, pixels)
                    .unwrap()
                    .save(dir.join(&name))
                    .unwrap();
            }
            Row::MissingFile => {}
            Row::Corrupt => std::fs::write(dir.join(&name), b"not a png at all").unwrap(),
        }
        text.push_str(&format!("a red square number {i},{name}\n"));
    }
    let path = dir.join("data.csv");
    std::fs::write(&path, text).unwrap();
    path
}

/// Two steps of 4 of the tiny preset on `csv` read with `reader` flags, no masking (the data
/// path is under test), on the adapter the binary chooses, as tests/cli_train.rs.
fn train_on(csv: &Path, logs: &Path, reader: &[&str], extra: &[&str]) -> Output {
    let batch = BATCH.to_string();
    let samples = RUN_SAMPLES.to_string();
    let mut args = vec![
        "train",
        "--train-data",
        csv.to_str().unwrap(),
        "--batch-size",
        &batch,
        "--samples-per-epoch",
        &samples,
        "--epochs",
        "1",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--mask",
        "none",
        "--logs",
        logs.to_str().unwrap(),
        "--name",
        "run",
        "--log-every-n-steps",
        "1",
        "--workers",
        "1",
    ];
    args.extend_from_slice(reader);
    args.extend_from_slice(extra);
    clusterclip(&args)
}

/// The one `data: epoch` line of `out.log`.
fn data_line(logs: &Path) -> String {
    let log = std::fs::read_to_string(logs.join("run/out.log")).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("data: epoch"))
        .collect();
    assert_eq!(lines.len(), 1, "one data line per epoch:\n{log}");
    lines[0].to_string()
}

#[test]
fn csv_with_comma_and_custom_columns_trains_and_validates() {
    let dir = temp_dir("custom");
    let csv = write_csv(&dir, &[Row::Good; 12]);
    let logs = dir.join("logs");
    let spec = csv.to_str().unwrap();
    let out = train_on(
        &csv,
        &logs,
        &CSV_FLAGS,
        &["--val-data", spec, "--eval-samples", "8"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let params: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(logs.join("run/params.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            &params["csv_separator"],
            &params["csv_img_key"],
            &params["csv_caption_key"]
        ),
        (&",".into(), &"path".into(), &"caption".into())
    );
    let line = data_line(&logs);
    assert_eq!(
        line,
        format!("data: epoch 1: no bad records in {RUN_SAMPLES}")
    );
    let results = std::fs::read_to_string(logs.join("run/results.jsonl")).unwrap();
    let result: serde_json::Value = serde_json::from_str(results.lines().last().unwrap()).unwrap();
    assert!(
        result["metrics"]["val"]["clip_val_loss"].as_f64().unwrap() > 0.0,
        "--val-data read with the same flags: {result}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_rows_are_counted_in_the_epoch_line() {
    let dir = temp_dir("bad-rows");
    // 9 good rows: two steps of 4 stay in the first pass.
    let mut rows = vec![Row::Good; 12];
    rows[1] = Row::MissingFile;
    rows[4] = Row::Corrupt;
    rows[7] = Row::MissingFile;
    let csv = write_csv(&dir, &rows);
    let logs = dir.join("logs");
    // 3 of 12 bad: over the default 1%, under 50%.
    let out = train_on(&csv, &logs, &CSV_FLAGS, &["--max-bad-fraction", "0.5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The loader reads pass 0 (seed 0) in this order until two batches are full.
    let order: Vec<usize> = index_order(rows.len(), ReadOrder::Shuffled { seed: 0 }).collect();
    let mut good = 0;
    let read: Vec<usize> = order
        .into_iter()
        .take_while(|&i| {
            let more = good < RUN_SAMPLES;
            good += usize::from(rows[i] == Row::Good);
            more
        })
        .collect();
    let count = |kind: Row| read.iter().filter(|&&i| rows[i] == kind).count();
    let (missing, corrupt) = (count(Row::MissingFile), count(Row::Corrupt));
    let bad = missing + corrupt;
    assert!(bad > 0, "the test's rows should put a bad one in the run");
    let line = data_line(&logs);
    assert!(
        line.starts_with(&format!(
            "data: epoch 1: {bad} bad of {} records skipped (",
            RUN_SAMPLES + bad
        )),
        "{line}"
    );
    if missing > 0 {
        assert!(
            line.contains(&format!("image file missing {missing}")),
            "{line}"
        );
    }
    if corrupt > 0 {
        assert!(
            line.contains(&format!("image does not decode {corrupt}"))
                && line.contains("data.csv:line 6: image does not decode"),
            "{line}"
        );
    }
    assert!(line.contains("data.csv:line "), "offenders named: {line}");
    let printed = stderr(&out);
    assert!(printed.contains(&line), "printed too:\n{printed}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn max_bad_fraction_stops_the_run_naming_the_spec() {
    let dir = temp_dir("too-many");
    let mut rows = vec![Row::MissingFile; 12];
    rows.extend([Row::Good; 4]);
    let csv = write_csv(&dir, &rows);
    let logs = dir.join("logs");
    let line = error_line(&train_on(
        &csv,
        &logs,
        &CSV_FLAGS,
        &["--max-bad-fraction", "0.1"],
    ));
    assert!(
        line.contains(csv.to_str().unwrap())
            && line.contains("12 of 16 records are bad")
            && line.contains("--max-bad-fraction 0.1"),
        "{line}"
    );
    // A new run refuses the folder of the stopped one (issue 10): start afresh.
    std::fs::remove_dir_all(&logs).unwrap();
    let out = train_on(&csv, &logs, &CSV_FLAGS, &["--max-bad-fraction", "0.8"]);
    assert!(
        out.status.success(),
        "12 of 16 is under 80%: {}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_column_or_flag_fails_with_one_line() {
    let dir = temp_dir("column");
    let csv = write_csv(&dir, &[Row::Good; 8]);
    let logs = dir.join("logs");
    let wrong_column = ["--csv-separator", ",", "--csv-img-key", "image"];
    let line = error_line(&train_on(&csv, &logs, &wrong_column, &[]));
    assert!(
        line.contains("no column \"image\"")
            && line.contains("--csv-img-key")
            && line.contains(csv.to_str().unwrap()),
        "{line}"
    );
    for flags in [["--csv-separator", "ab"], ["--max-bad-fraction", "1.5"]] {
        let line = error_line(&train_on(&csv, &logs, &flags, &[]));
        assert!(line.contains(flags[0]), "{line}");
    }
    let out = train_on(&csv, &logs, &["--dataset-type", "parquet"], &[]);
    assert!(
        !out.status.success() && stderr(&out).contains("unknown dataset type \"parquet\""),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
