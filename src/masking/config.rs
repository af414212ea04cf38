//! Masking settings, their validation, and the integer counts they imply (M3.2, M3.4, M4).

use std::fmt;

/// Slack for turning a ratio into a count: ratios are decimal fractions, and without it
/// 100 · (1 − 0.9) = 9.999999999999998 would floor to 9.
const COUNT_SLACK: f64 = 1e-9;

/// Why a masking setting was refused; `Display` is the one line the user sees.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskError {
    /// A ratio outside [0, 1); `name` is the setting (and CLI flag) it came from.
    RatioOutOfRange { name: &'static str, value: f64 },
    /// `min_mask_ratio` above `max_mask_ratio`.
    MinAboveMax { min: f64, max: f64 },
    /// A similarity threshold outside [0, 1] (M3.3, M3.6).
    ThresholdOutOfRange { value: f32 },
    /// A `--threshold auto` target the keep-count bounds cannot realise (M3.4, M3.6).
    TargetOutsideBounds { target: f64, min: f64, max: f64 },
    /// A setting the flags cannot express together, named by its flags.
    Settings(String),
    /// Buffers whose lengths do not agree with the stated shape.
    Shape(String),
}

impl fmt::Display for MaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RatioOutOfRange { name, value } => {
                write!(f, "--{name} {value} is outside [0, 1)")
            }
            Self::MinAboveMax { min, max } => {
                write!(f, "--min-mask-ratio {min} is above --max-mask-ratio {max}")
            }
            Self::ThresholdOutOfRange { value } => {
                write!(f, "--threshold {value} is outside [0, 1]")
            }
            Self::TargetOutsideBounds { target, min, max } => write!(
                f,
                "--target-mask-ratio {target} is outside [--min-mask-ratio {min}, \
                 --max-mask-ratio {max}]: the keep count bounds the realised ratio (M3.4)"
            ),
            Self::Settings(what) => f.write_str(what),
            Self::Shape(what) => write!(f, "mask input shape: {what}"),
        }
    }
}

impl std::error::Error for MaskError {}

/// Checks that `value` lies in [0, 1); `name` is the CLI flag it came from.
pub fn check_ratio(name: &'static str, value: f64) -> Result<(), MaskError> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(MaskError::RatioOutOfRange { name, value })
    }
}

/// Which pixels cluster masking compares (M3.1; the study, M7, decides the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MaskFeatures {
    /// Patches of the CLIP-normalised image, as the authors' code: uniform patches of any grey
    /// correlate 0.8–1.0 with each other.
    #[default]
    Normalized,
    /// Patches of the image in [0, 1] before CLIP normalisation: uniform patches are flat.
    Rgb,
}

impl MaskFeatures {
    pub fn name(self) -> &'static str {
        match self {
            Self::Normalized => "normalized",
            Self::Rgb => "rgb",
        }
    }
}

impl fmt::Display for MaskFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MaskFeatures {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "normalized" => Ok(Self::Normalized),
            "rgb" => Ok(Self::Rgb),
            other => Err(format!("'{other}' is not normalized or rgb")),
        }
    }
}

/// Settings of cluster masking (M3). Defaults are the paper's best RGB run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClusterMaskConfig {
    /// Fraction of patches drawn as anchors (M3.2): 0.03 gives 6 of 196.
    pub anchor_ratio: f64,
    /// Similarity threshold r: a patch joins a cluster when sim > r (M3.3, released recipe 0.5).
    pub threshold: f32,
    /// Lower bound on the dropped fraction (M3.4, 0.3 in the paper's best run).
    pub min_mask_ratio: f64,
    /// Upper bound on the dropped fraction (our guard, M3.4).
    pub max_mask_ratio: f64,
    /// Which pixels the similarity compares (M3.1). The default is `Rgb`, where the study (M7,
    /// README "Does cluster masking help?") left it: on Fashion-MNIST at equal compute `rgb`
    /// beat the authors' `normalized` by 2.7 zero-shot points over 3 seeds, and only `rgb` lets
    /// `--threshold auto` reach a 0.5 mask ratio there and on builtin:shapes.
    pub features: MaskFeatures,
}

impl Default for ClusterMaskConfig {
    fn default() -> Self {
        Self {
            anchor_ratio: 0.03,
            threshold: 0.5,
            min_mask_ratio: 0.3,
            max_mask_ratio: 0.9,
            features: MaskFeatures::Rgb,
        }
    }
}

impl ClusterMaskConfig {
    pub fn validate(&self) -> Result<(), MaskError> {
        check_ratio("anchor-ratio", self.anchor_ratio)?;
        check_ratio("min-mask-ratio", self.min_mask_ratio)?;
        check_ratio("max-mask-ratio", self.max_mask_ratio)?;
        if self.min_mask_ratio > self.max_mask_ratio {
            return Err(MaskError::MinAboveMax {
                min: self.min_mask_ratio,
                max: self.max_mask_ratio,
            });
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(MaskError::ThresholdOutOfRange {
                value: self.threshold,
            });
        }
        Ok(())
    }

    /// Refuses a calibration target the keep-count bounds cannot realise: the realised ratio
    /// 1 − k/L never leaves [min_mask_ratio, max_mask_ratio] (up to rounding of k), so such a
    /// target would end at a bound whatever the threshold (M3.6).
    pub fn check_target(&self, target: f64) -> Result<(), MaskError> {
        check_ratio("target-mask-ratio", target)?;
        if target < self.min_mask_ratio || target > self.max_mask_ratio {
            return Err(MaskError::TargetOutsideBounds {
                target,
                min: self.min_mask_ratio,
                max: self.max_mask_ratio,
            });
        }
        Ok(())
    }

    /// K = L − floor(L · (1 − anchor_ratio)) (M3.2).
    pub fn anchor_count(&self, patches: usize) -> usize {
        patches - floor_count(patches, 1.0 - self.anchor_ratio)
    }

    /// The bounds of the batch keep count (M3.4): (floor, cap) with
    /// cap = floor(L · (1 − min_mask_ratio)) and floor = ceil(L · (1 − max_mask_ratio)).
    /// Pinned bounds (min = max = ρ) keep FLIP's k = round(L · (1 − ρ)), so cluster and random
    /// masking at ρ keep the same k (equal compute, M7).
    pub fn keep_bounds(&self, patches: usize) -> KeepBounds {
        if self.min_mask_ratio == self.max_mask_ratio {
            let k = random_keep_count(patches, self.min_mask_ratio);
            return KeepBounds { floor: k, cap: k };
        }
        KeepBounds {
            floor: ceil_count(patches, 1.0 - self.max_mask_ratio),
            cap: floor_count(patches, 1.0 - self.min_mask_ratio),
        }
    }
}

/// Limits on the batch keep count k (M3.4), in patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepBounds {
    pub floor: usize,
    pub cap: usize,
}

impl KeepBounds {
    /// k = max(min(cap, fewest unmasked patches of any image), floor) (M3.4). The floor wins when
    /// the two bounds cross (a min/max pair closer than 1/L).
    pub fn keep_count(&self, fewest_unmasked: usize) -> usize {
        self.cap.min(fewest_unmasked).max(self.floor)
    }
}

/// FLIP's keep count k = round(L · (1 − mask_ratio)) (M4), at least one patch so the encoder
/// always sees part of the image.
pub fn random_keep_count(patches: usize, mask_ratio: f64) -> usize {
    ((patches as f64 * (1.0 - mask_ratio)).round() as usize).clamp(1.min(patches), patches)
}

fn floor_count(patches: usize, fraction: f64) -> usize {
    ((patches as f64 * fraction + COUNT_SLACK).floor() as usize).min(patches)
}

fn ceil_count(patches: usize, fraction: f64) -> usize {
    ((patches as f64 * fraction - COUNT_SLACK).ceil().max(0.0) as usize).min(patches)
}
