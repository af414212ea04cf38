//! Run-folder pieces: OpenCLIP's run name, durations, the model config in checkpoint metadata,
//! the validation loss, and loss.png.

use clusterclip::eval::tasks::contrastive_loss;
use clusterclip::model::ClipConfig;
use clusterclip::train::checkpoint::{config_from_json, config_json};
use clusterclip::train::logs::{default_run_name, format_duration, utc_stamp};
use clusterclip::train::plot::{METRIC_COLOURS, TRAIN_LOSS, render_png};
use clusterclip::train::plot::{Panel, Series};

#[test]
fn run_names_follow_openclip() {
    assert_eq!(utc_stamp(0), "1970_01_01-00_00_00");
    assert_eq!(utc_stamp(1_700_000_000), "2023_11_14-22_13_20");
    assert_eq!(utc_stamp(951_782_400), "2000_02_29-00_00_00");
    let name = default_run_name("tiny", 0.001, 64, 2);
    assert!(
        name.ends_with("-model_tiny-lr_0.001-b_64-j_2-p_fp32"),
        "{name}"
    );
    assert_eq!(format_duration(42.4), "42s");
    assert_eq!(format_duration(185.0), "3m05s");
    assert_eq!(format_duration(3720.0), "1h02m");
}

#[test]
fn model_config_round_trips_through_checkpoint_metadata() {
    for preset in ["tiny", "s16", "b16"] {
        let config = ClipConfig::preset(preset).unwrap();
        assert_eq!(config_from_json(&config_json(&config)).unwrap(), config);
    }
    let mut broken = config_json(&ClipConfig::preset("tiny").unwrap());
    broken["vision"]
        .as_object_mut()
        .unwrap()
        .remove("patch_size");
    assert!(
        config_from_json(&broken)
            .unwrap_err()
            .contains("vision.patch_size")
    );
}

#[test]
fn validation_loss_is_symmetric_infonce() {
    // Two orthogonal pairs, perfectly matched: loss = ln(1 + e^-s) for scale s.
    let features = [1.0f32, 0.0, 0.0, 1.0];
    let loss = contrastive_loss(&features, &features, 2, 10.0, 2);
    assert!((loss - (1.0 + (-10f64).exp()).ln()).abs() < 1e-9, "{loss}");
    // Swapped texts: every image's caption scores lowest.
    let swapped = [0.0f32, 1.0, 1.0, 0.0];
    let loss = contrastive_loss(&features, &swapped, 2, 10.0, 2);
    assert!(
        (loss - (10.0 + (1.0 + (-10f64).exp()).ln())).abs() < 1e-9,
        "{loss}"
    );
    // Batches of one: the only caption is the match, whatever the features.
    assert!(contrastive_loss(&features, &swapped, 2, 10.0, 1).abs() < 1e-12);
}

#[test]
fn loss_plot_draws_both_panels() {
    let train = Series {
        points: (0..50).map(|i| (i as f64, 4.0 - i as f64 * 0.05)).collect(),
        colour: TRAIN_LOSS,
        line: true,
    };
    let metric = Series {
        points: vec![(10.0, 0.1), (50.0, 0.6)],
        colour: METRIC_COLOURS[0],
        line: true,
    };
    let png = render_png(&[
        Panel {
            series: vec![train],
            y_range: None,
        },
        Panel {
            series: vec![metric],
            y_range: Some((0.0, 1.0)),
        },
    ])
    .unwrap();
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    assert_eq!(w, 2 * h * 3 / 2, "two 3:2 panels side by side");
    let count = |colour: [u8; 3], left: bool| {
        img.enumerate_pixels()
            .filter(|(x, _, p)| p.0 == colour && ((*x < w / 2) == left))
            .count()
    };
    assert!(
        count(TRAIN_LOSS, true) > 100,
        "training loss drawn in the left panel"
    );
    assert_eq!(count(TRAIN_LOSS, false), 0);
    assert!(
        count(METRIC_COLOURS[0], false) > 100,
        "metric drawn in the right panel"
    );
}
