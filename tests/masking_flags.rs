//! The mask flags are one set, parsed once (issue 11): `train`, `bench step`, `bench mask` and
//! `mask` read the same flags into the same settings, and cluster masking can be pinned to
//! random masking's keep count (M7).

use clap::Parser;
use clusterclip::cli::bench::BenchCommand;
use clusterclip::cli::mask::MaskArgs;
use clusterclip::cli::train::TrainArgs;
use clusterclip::masking::{
    ClusterMaskConfig, MaskFeatures, MaskFlags, MaskStrategy, random_keep_count,
};

#[derive(Parser)]
struct Bench {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Parser)]
struct Train {
    #[command(flatten)]
    args: TrainArgs,
}

#[derive(Parser)]
struct Mask {
    #[command(flatten)]
    args: MaskArgs,
}

/// The mask flags each command parses from `flags`.
fn flags_of_every_command(flags: &[&str]) -> Vec<(&'static str, MaskFlags)> {
    let with = |head: &[&'static str]| -> Vec<String> {
        head.iter()
            .chain(flags)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let step = match Bench::try_parse_from(with(&["bench", "step"]))
        .unwrap()
        .command
    {
        BenchCommand::Step(a) => a.mask,
        _ => unreachable!(),
    };
    let bench_mask = match Bench::try_parse_from(with(&["bench", "mask"]))
        .unwrap()
        .command
    {
        BenchCommand::Mask(a) => a.mask,
        _ => unreachable!(),
    };
    let train = Train::try_parse_from(with(&["train"])).unwrap().args.mask;
    let mask = Mask::try_parse_from(with(&["mask", "--image", "a.png"]))
        .unwrap()
        .args
        .mask;
    vec![
        ("bench step", step),
        ("bench mask", bench_mask),
        ("train", train),
        ("mask", mask),
    ]
}

#[test]
fn every_command_reads_the_same_mask_flags_with_the_same_defaults() {
    for (command, flags) in flags_of_every_command(&[]) {
        assert_eq!(flags, MaskFlags::default(), "{command}");
        assert_eq!(
            flags.plan().unwrap().strategy,
            MaskStrategy::Cluster(ClusterMaskConfig::default()),
            "{command}"
        );
    }
    let given = [
        "--mask",
        "cluster-embed",
        "--anchor-ratio",
        "0.05",
        "--threshold",
        "auto",
        "--target-mask-ratio",
        "0.6",
        "--min-mask-ratio",
        "0.4",
        "--max-mask-ratio",
        "0.8",
        "--mask-features",
        "rgb",
    ];
    let expected = ClusterMaskConfig {
        anchor_ratio: 0.05,
        min_mask_ratio: 0.4,
        max_mask_ratio: 0.8,
        features: MaskFeatures::Rgb,
        ..Default::default()
    };
    for (command, flags) in flags_of_every_command(&given) {
        let plan = flags.plan().unwrap();
        assert_eq!(
            plan.strategy,
            MaskStrategy::ClusterEmbed(expected),
            "{command}"
        );
        assert_eq!(plan.target_mask_ratio, Some(0.6), "{command}");
    }
    // `--strategy` is kept as a hidden alias of `--mask`.
    for (command, flags) in flags_of_every_command(&["--strategy", "random"]) {
        assert_eq!(flags.mask, "random", "{command}");
    }
}

#[test]
fn cluster_masking_pins_to_random_maskings_keep_count() {
    // M7: the same rho as --mask-ratio for random and as both bounds for cluster masking.
    for rho in ["0.5", "0.3", "0.75"] {
        let ratio: f64 = rho.parse().unwrap();
        let cluster = [
            "--mask",
            "cluster",
            "--min-mask-ratio",
            rho,
            "--max-mask-ratio",
            rho,
        ];
        for (command, flags) in flags_of_every_command(&cluster) {
            let plan = flags.plan().unwrap();
            let config = plan.strategy.cluster().copied().unwrap();
            for l in [49, 64, 196] {
                let bounds = config.keep_bounds(l);
                let k = random_keep_count(l, ratio);
                assert_eq!(
                    (bounds.floor, bounds.cap),
                    (k, k),
                    "{command} L {l} rho {rho}"
                );
            }
        }
        let random = flags_of_every_command(&["--mask", "random", "--mask-ratio", rho]);
        for (command, flags) in random {
            assert_eq!(
                flags.plan().unwrap().strategy,
                MaskStrategy::Random { mask_ratio: ratio },
                "{command}"
            );
        }
    }
}

#[test]
fn bad_mask_flags_name_the_flag_in_one_line() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["--mask", "blocks"],
            "--mask: 'blocks' is not none, random, cluster or cluster-embed",
        ),
        (
            &["--threshold", "high"],
            "--threshold: 'high' is neither a number nor 'auto'",
        ),
        (
            &["--mask-features", "lab"],
            "--mask-features: 'lab' is not normalized or rgb",
        ),
        (
            &["--threshold", "auto", "--target-mask-ratio", "0.2"],
            "--target-mask-ratio 0.2 is outside [--min-mask-ratio 0.3, --max-mask-ratio 0.9]: \
             the keep count bounds the realised ratio (M3.4)",
        ),
        (
            &[
                "--mask",
                "none",
                "--threshold",
                "auto",
                "--target-mask-ratio",
                "0.5",
            ],
            "--threshold auto calibrates cluster masking, not --mask none",
        ),
    ];
    for (flags, message) in cases {
        for (command, parsed) in flags_of_every_command(flags) {
            let err = parsed.plan().unwrap_err().to_string();
            assert_eq!(err, message, "{command} {flags:?}");
        }
    }
}
