//! The mask settings, defined once: the strategy a step runs and the flags that choose it, shared
//! by `train`, `bench step`, `bench mask` and `mask` (issue 11). The flag set is a plain struct
//! here (the core builds without clap) that becomes a clap flag group with the `cli` feature.

use std::fmt;
use std::str::FromStr;

use super::config::{ClusterMaskConfig, MaskError, MaskFeatures, check_ratio};

/// How patches are dropped before the image encoder.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskStrategy {
    /// Plain CLIP (M4 baseline).
    None,
    /// FLIP: a fixed ratio of random patches (M4).
    Random { mask_ratio: f64 },
    /// Cluster masking on pixel similarity (M3.1–M3.4).
    Cluster(ClusterMaskConfig),
    /// Cluster masking mixing in patch-embedding similarity by training progress (M3.7).
    ClusterEmbed(ClusterMaskConfig),
}

impl MaskStrategy {
    pub fn kind(&self) -> MaskKind {
        match self {
            MaskStrategy::None => MaskKind::None,
            MaskStrategy::Random { .. } => MaskKind::Random,
            MaskStrategy::Cluster(_) => MaskKind::Cluster,
            MaskStrategy::ClusterEmbed(_) => MaskKind::ClusterEmbed,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The same strategy with cluster threshold r, as calibration settles it (M3.6).
    pub fn with_threshold(&self, threshold: f32) -> MaskStrategy {
        match self {
            MaskStrategy::Cluster(c) => {
                MaskStrategy::Cluster(ClusterMaskConfig { threshold, ..*c })
            }
            MaskStrategy::ClusterEmbed(c) => {
                MaskStrategy::ClusterEmbed(ClusterMaskConfig { threshold, ..*c })
            }
            other => other.clone(),
        }
    }

    /// The cluster settings, for the two cluster strategies.
    pub fn cluster(&self) -> Option<&ClusterMaskConfig> {
        match self {
            MaskStrategy::Cluster(c) | MaskStrategy::ClusterEmbed(c) => Some(c),
            _ => None,
        }
    }
}

/// The strategy names of `--mask`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskKind {
    None,
    Random,
    Cluster,
    ClusterEmbed,
}

impl MaskKind {
    pub const ALL: [MaskKind; 4] = [
        MaskKind::None,
        MaskKind::Random,
        MaskKind::Cluster,
        MaskKind::ClusterEmbed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MaskKind::None => "none",
            MaskKind::Random => "random",
            MaskKind::Cluster => "cluster",
            MaskKind::ClusterEmbed => "cluster-embed",
        }
    }
}

impl fmt::Display for MaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MaskKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        MaskKind::ALL
            .into_iter()
            .find(|k| k.name() == text)
            .ok_or_else(|| format!("'{text}' is not none, random, cluster or cluster-embed"))
    }
}

/// `--threshold`: a similarity r in [0, 1] (M3.3) or `auto`, calibrated to a target (M3.6).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Fixed(f32),
    Auto,
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Fixed(r) => write!(f, "{r}"),
            Threshold::Auto => f.write_str("auto"),
        }
    }
}

impl FromStr for Threshold {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "auto" {
            return Ok(Threshold::Auto);
        }
        text.parse::<f32>()
            .map(Threshold::Fixed)
            .map_err(|_| format!("'{text}' is neither a number nor 'auto'"))
    }
}

/// The mask flags, as given; `MaskFlags::default()` holds every default the CLI shows. Names
/// stay text until `plan` parses them, so a bad one is one error line naming its flag, like
/// every other setting (clap's own value errors add usage lines). The mask generator's seed is
/// each command's own `--seed` (train's also seeds the model, and a resumed run checks it), so
/// it is not repeated here.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct MaskFlags {
    /// Masking strategy: none, random (FLIP, M4), cluster (M3) or cluster-embed (M3.7).
    #[cfg_attr(
        feature = "cli",
        arg(long = "mask", alias = "strategy", value_name = "STRATEGY",
            default_value_t = MaskFlags::default().mask)
    )]
    pub mask: String,
    /// Dropped fraction of random masking (M4). Cluster masking at the same k (equal compute,
    /// M7): --min-mask-ratio and --max-mask-ratio both set to it.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = MaskFlags::default().mask_ratio))]
    pub mask_ratio: f64,
    /// Fraction of patches drawn as anchors (M3.2).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = MaskFlags::default().anchor_ratio))]
    pub anchor_ratio: f64,
    /// Similarity threshold r in [0, 1] (M3.3), or `auto` with --target-mask-ratio (M3.6).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = MaskFlags::default().threshold))]
    pub threshold: String,
    /// Realised mask ratio 1 − k/L that `--threshold auto` aims at, averaged over the first
    /// batches (M3.6); within [--min-mask-ratio, --max-mask-ratio].
    #[cfg_attr(feature = "cli", arg(long))]
    pub target_mask_ratio: Option<f64>,
    /// Least fraction of patches dropped (M3.4).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = MaskFlags::default().min_mask_ratio))]
    pub min_mask_ratio: f64,
    /// Most fraction of patches dropped (M3.4).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = MaskFlags::default().max_mask_ratio))]
    pub max_mask_ratio: f64,
    /// Pixels cluster masking compares (M3.1): normalized (the authors' code: CLIP-normalised
    /// patches) or rgb (pixels in [0, 1]: uniform patches are flat and never cluster).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = MaskFlags::default().mask_features))]
    pub mask_features: String,
}

impl Default for MaskFlags {
    fn default() -> Self {
        let cluster = ClusterMaskConfig::default();
        MaskFlags {
            mask: MaskKind::Cluster.to_string(),
            mask_ratio: 0.5, // FLIP's ratio (M4)
            anchor_ratio: cluster.anchor_ratio,
            threshold: Threshold::Fixed(cluster.threshold).to_string(),
            target_mask_ratio: None,
            min_mask_ratio: cluster.min_mask_ratio,
            max_mask_ratio: cluster.max_mask_ratio,
            mask_features: cluster.features.to_string(),
        }
    }
}

/// What the mask flags resolve to: the strategy, and the calibration target when the threshold
/// is `auto` (the strategy then holds the default r until calibration replaces it).
#[derive(Clone, Debug, PartialEq)]
pub struct MaskPlan {
    pub strategy: MaskStrategy,
    pub target_mask_ratio: Option<f64>,
}

impl MaskFlags {
    /// The one parser of the mask settings; the error names the flags.
    pub fn plan(&self) -> Result<MaskPlan, MaskError> {
        let flag = |name: &str, e: String| MaskError::Settings(format!("--{name}: {e}"));
        let kind: MaskKind = self.mask.parse().map_err(|e| flag("mask", e))?;
        let threshold: Threshold = self.threshold.parse().map_err(|e| flag("threshold", e))?;
        let features: MaskFeatures = self
            .mask_features
            .parse()
            .map_err(|e| flag("mask-features", e))?;
        let cluster = ClusterMaskConfig {
            anchor_ratio: self.anchor_ratio,
            threshold: match threshold {
                Threshold::Fixed(r) => r,
                Threshold::Auto => ClusterMaskConfig::default().threshold,
            },
            min_mask_ratio: self.min_mask_ratio,
            max_mask_ratio: self.max_mask_ratio,
            features,
        };
        let strategy = match kind {
            MaskKind::None => MaskStrategy::None,
            MaskKind::Random => {
                check_ratio("mask-ratio", self.mask_ratio)?;
                MaskStrategy::Random {
                    mask_ratio: self.mask_ratio,
                }
            }
            MaskKind::Cluster => MaskStrategy::Cluster(cluster),
            MaskKind::ClusterEmbed => MaskStrategy::ClusterEmbed(cluster),
        };
        if let Some(c) = strategy.cluster() {
            c.validate()?;
        }
        let target_mask_ratio = match (threshold, self.target_mask_ratio) {
            (Threshold::Auto, None) => {
                return Err(MaskError::Settings(
                    "--threshold auto needs --target-mask-ratio".into(),
                ));
            }
            (Threshold::Fixed(_), Some(_)) => {
                return Err(MaskError::Settings(
                    "--target-mask-ratio needs --threshold auto".into(),
                ));
            }
            (Threshold::Fixed(_), None) => None,
            (Threshold::Auto, Some(target)) => {
                let Some(c) = strategy.cluster() else {
                    return Err(MaskError::Settings(format!(
                        "--threshold auto calibrates cluster masking, not --mask {kind}"
                    )));
                };
                c.check_target(target)?;
                Some(target)
            }
        };
        Ok(MaskPlan {
            strategy,
            target_mask_ratio,
        })
    }
}
