//! The image half of a sample, on decoded RGB bytes (pure computation, also for the browser):
//! crop boxes as torchvision picks them, PIL's antialiased bicubic resampling, CLIP mean/std
//! normalisation, written as f32 CHW `[3, size, size]`.
//! Training: RandomResizedCrop(scale 0.9–1.0, ratio 3/4–4/3) (M2); evaluation: resize of the
//! shorter side to `size` and a centre crop, as OpenCLIP's eval transform.

/// CLIP's per-channel mean and standard deviation of [0, 1] RGB (M2), digit for digit as
/// published (some digits are below f32 precision).
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The per-channel `(v - mean) / std` of [0, 1] RGB that images get before the model:
/// CLIP's by default, OpenCLIP's `--image-mean` / `--image-std` otherwise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalisation {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Normalisation {
    fn default() -> Self {
        Normalisation::CLIP
    }
}

impl Normalisation {
    pub const CLIP: Normalisation = Normalisation {
        mean: CLIP_MEAN,
        std: CLIP_STD,
    };

    /// OpenCLIP's `--image-mean` / `--image-std` (nargs='+'): three values, or one for every
    /// channel (torchvision's Normalize broadcasts a single value); an absent flag keeps CLIP's.
    /// The error is one line naming the flag.
    pub fn from_flags(mean: Option<&[f32]>, std: Option<&[f32]>) -> Result<Self, String> {
        let per_channel = |flag: &str, values: Option<&[f32]>, default: [f32; 3]| match values {
            None => Ok(default),
            Some(&[v]) => Ok([v; 3]),
            Some(&[r, g, b]) => Ok([r, g, b]),
            Some(other) => Err(format!(
                "{flag} takes 3 values (R G B) or 1 for all channels, got {}",
                other.len()
            )),
        };
        let norm = Normalisation {
            mean: per_channel("--image-mean", mean, CLIP_MEAN)?,
            std: per_channel("--image-std", std, CLIP_STD)?,
        };
        norm.validate()?;
        Ok(norm)
    }

    /// Finite means and positive, finite standard deviations.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(format!("--image-mean {m} must be a finite number"));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("--image-std {s} must be positive"));
        }
        Ok(())
    }

    /// [`train_transform`] with these statistics.
    pub fn train_transform(
        &self,
        image: RgbView,
        size: usize,
        rng: &mut SampleRng,
        out: &mut [f32],
    ) {
        let crop = random_resized_crop_box(image.width, image.height, rng);
        let full = Window {
            left: 0,
            top: 0,
            size,
        };
        resample_normalise(image, crop, (size, size), full, self, out);
    }

    /// [`eval_transform`] with these statistics.
    pub fn eval_transform(&self, image: RgbView, size: usize, out: &mut [f32]) {
        let (w, h) = (image.width.max(1), image.height.max(1));
        let (out_w, out_h) = if w <= h {
            (size, size * h / w)
        } else {
            (size * w / h, size)
        };
        let window = Window {
            // Python's round (ties to even), as torchvision's CenterCrop.
            left: ((out_w - size) as f64 / 2.0).round_ties_even() as usize,
            top: ((out_h - size) as f64 / 2.0).round_ties_even() as usize,
            size,
        };
        let full = CropBox {
            left: 0,
            top: 0,
            width: image.width,
            height: image.height,
        };
        resample_normalise(image, full, (out_w, out_h), window, self, out);
    }

    /// [`normalise_rgb`] with these statistics.
    pub fn normalise_rgb(&self, rgb: &[u8], size: usize, out: &mut [f32]) {
        let plane = size * size;
        for (i, pixel) in rgb.chunks_exact(3).take(plane).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (pixel[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
    }
}
/// RandomResizedCrop area range of the paper's recipe (M2) and torchvision's default ratio range.
pub const CROP_SCALE: (f64, f64) = (0.9, 1.0);
pub const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// torchvision's number of tries before falling back to a centre crop.
const CROP_TRIES: usize = 10;
/// Keys's cubic with a = -0.5, PIL's BICUBIC; nonzero on (-2, 2).
const BICUBIC_A: f32 = -0.5;
const BICUBIC_SUPPORT: f64 = 2.0;

/// A decoded image: `rgb` holds `height * width * 3` bytes, rows top to bottom (HWC).
#[derive(Clone, Copy, Debug)]
pub struct RgbView<'a> {
    pub rgb: &'a [u8],
    pub width: usize,
    pub height: usize,
}

/// A rectangle of source pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub left: usize,
    pub top: usize,
    pub width: usize,
    pub height: usize,
}

/// SplitMix64: a tiny seeded generator for crop choices and shuffling (not for the masks).
#[derive(Clone, Debug)]
pub struct SampleRng(u64);

impl SampleRng {
    /// The generator of one sample: a function of the run's seed and the sample's stream index.
    pub fn for_sample(seed: u64, index: u64) -> Self {
        let mut rng = SampleRng(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next_u64();
        rng
    }

    pub fn new(seed: u64) -> Self {
        SampleRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [0, n); 0 when n is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            ((self.next_u64() as u128 * n as u128) >> 64) as usize
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params` with [`CROP_SCALE`] and [`CROP_RATIO`].
pub fn random_resized_crop_box(width: usize, height: usize, rng: &mut SampleRng) -> CropBox {
    let area = (width * height) as f64;
    let (log_lo, log_hi) = (CROP_RATIO.0.ln(), CROP_RATIO.1.ln());
    for _ in 0..CROP_TRIES {
        let target_area = area * (CROP_SCALE.0 + (CROP_SCALE.1 - CROP_SCALE.0) * rng.uniform());
        let aspect = (log_lo + (log_hi - log_lo) * rng.uniform()).exp();
        let w = (target_area * aspect).sqrt().round() as usize;
        let h = (target_area / aspect).sqrt().round() as usize;
        if w > 0 && w <= width && h > 0 && h <= height {
            let top = rng.below(height - h + 1);
            let left = rng.below(width - w + 1);
            return CropBox {
                left,
                top,
                width: w,
                height: h,
            };
        }
    }
    let in_ratio = width as f64 / height.max(1) as f64;
    let (w, h) = if in_ratio < CROP_RATIO.0 {
        (
            width,
            ((width as f64 / CROP_RATIO.0).round() as usize).min(height),
        )
    } else if in_ratio > CROP_RATIO.1 {
        (
            ((height as f64 * CROP_RATIO.1).round() as usize).min(width),
            height,
        )
    } else {
        (width, height)
    };
    CropBox {
        left: (width - w) / 2,
        top: (height - h) / 2,
        width: w,
        height: h,
    }
}

/// Training transform: RandomResizedCrop to `size`, CLIP-normalised, into `out`, which must hold
/// `3 * size * size` values.
pub fn train_transform(image: RgbView, size: usize, rng: &mut SampleRng, out: &mut [f32]) {
    Normalisation::CLIP.train_transform(image, size, rng, out);
}

/// Evaluation transform: shorter side resized to `size` (the longer to `size * long / short`,
/// truncated, as torchvision), centre crop of `size`, CLIP-normalised, into `out`, which must hold
/// `3 * size * size` values.
pub fn eval_transform(image: RgbView, size: usize, out: &mut [f32]) {
    Normalisation::CLIP.eval_transform(image, size, out);
}

/// The part of the resized image that is kept: `size` x `size` from (left, top).
#[derive(Clone, Copy, Debug)]
struct Window {
    left: usize,
    top: usize,
    size: usize,
}

/// Source taps of one output pixel along one axis: first source index and normalised weights.
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

fn bicubic(x: f32) -> f32 {
    let x = x.abs();
    if x < 1.0 {
        ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * BICUBIC_A
    } else {
        0.0
    }
}

/// PIL's `precompute_coeffs` for output pixels `range` of a resize of source span
/// [box_start, box_start + box_len) (in a source axis of `in_size`) to `out_size`: the filter
/// widens by the scale when shrinking, which is PIL's antialiasing.
fn axis_taps(
    in_size: usize,
    box_start: usize,
    box_len: usize,
    out_size: usize,
    range: std::ops::Range<usize>,
) -> Vec<Taps> {
    let scale = box_len as f64 / out_size.max(1) as f64;
    let filter_scale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filter_scale;
    range
        .map(|out| {
            let center = box_start as f64 + (out as f64 + 0.5) * scale;
            let first = ((center - support + 0.5) as isize).max(0) as usize;
            let end = ((center + support + 0.5) as isize).clamp(0, in_size as isize) as usize;
            let mut weights: Vec<f32> = (first..end.max(first))
                .map(|x| bicubic(((x as f64 - center + 0.5) / filter_scale) as f32))
                .collect();
            let total: f32 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            Taps { first, weights }
        })
        .collect()
}

/// Resizes `crop` of `image` to `out_size` with PIL's bicubic, keeps `window`, and writes
/// `(v / 255 - mean) / std` as CHW into `out`. Like PIL on 8-bit images, both passes round and
/// clamp to bytes, so the values are those of torchvision's `ToTensor` after the PIL resize.
/// An empty image or crop writes the normalised value of black.
fn resample_normalise(
    image: RgbView,
    crop: CropBox,
    out_size: (usize, usize),
    window: Window,
    norm: &Normalisation,
    out: &mut [f32],
) {
    let size = window.size;
    let plane = size * size;
    let valid = image.width > 0
        && image.height > 0
        && image.rgb.len() >= image.width * image.height * 3
        && crop.width > 0
        && crop.height > 0
        && crop.left + crop.width <= image.width
        && crop.top + crop.height <= image.height;
    if !valid {
        for c in 0..3 {
            out[c * plane..(c + 1) * plane].fill(-norm.mean[c] / norm.std[c]);
        }
        return;
    }
    let columns = axis_taps(
        image.width,
        crop.left,
        crop.width,
        out_size.0,
        window.left..window.left + size,
    );
    let rows = axis_taps(
        image.height,
        crop.top,
        crop.height,
        out_size.1,
        window.top..window.top + size,
    );
    let row_lo = rows.iter().map(|t| t.first).min().unwrap_or(0);
    let row_hi = rows
        .iter()
        .map(|t| t.first + t.weights.len())
        .max()
        .unwrap_or(0);
    // Horizontal pass over the source rows the window needs: [row][column][channel].
    let mut horizontal = vec![0f32; (row_hi - row_lo) * size * 3];
    let mut src = vec![0f32; image.width * 3];
    for y in row_lo..row_hi {
        let bytes = &image.rgb[y * image.width * 3..(y + 1) * image.width * 3];
        src.iter_mut().zip(bytes).for_each(|(f, &b)| *f = b as f32);
        let dst = &mut horizontal[(y - row_lo) * size * 3..(y - row_lo + 1) * size * 3];
        for (taps, out_pixel) in columns.iter().zip(dst.chunks_exact_mut(3)) {
            let pixels = &src[taps.first * 3..(taps.first + taps.weights.len()) * 3];
            let mut acc = [0f32; 3];
            for (&w, p) in taps.weights.iter().zip(pixels.chunks_exact(3)) {
                acc[0] += w * p[0];
                acc[1] += w * p[1];
                acc[2] += w * p[2];
            }
            out_pixel.copy_from_slice(&acc.map(to_byte_value));
        }
    }
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * norm.std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| norm.mean[c] / norm.std[c]);
    // Vertical pass a whole row at a time, so the inner loop is contiguous and vectorises.
    let row_len = size * 3;
    let mut acc = vec![0f32; row_len];
    for (y, taps) in rows.iter().enumerate() {
        acc.fill(0.0);
        for (k, &w) in taps.weights.iter().enumerate() {
            let row = taps.first + k - row_lo;
            let src = &horizontal[row * row_len..(row + 1) * row_len];
            for (a, &v) in acc.iter_mut().zip(src) {
                *a += w * v;
            }
        }
        for (x, pixel) in acc.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + y * size + x] = to_byte_value(pixel[c]) * scale[c] - shift[c];
            }
        }
    }
}

/// A resampled value as PIL stores it: clamped to a byte, rounded half up.
fn to_byte_value(value: f32) -> f32 {
    ((value.clamp(0.0, 255.0) + 0.5) as u32) as f32
}

/// CLIP-normalises an HWC RGB image that already has the model's size, into CHW `out`.
pub fn normalise_rgb(rgb: &[u8], size: usize, out: &mut [f32]) {
    Normalisation::CLIP.normalise_rgb(rgb, size, out);
}
