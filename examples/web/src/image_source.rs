//! The current image of the Mask and Zero-shot panels: a built-in shapes image, rendered at
//! whatever size a model or the mask geometry asks, or a file the user dropped, decoded here
//! (the `image` crate, as the CLI decodes) and cropped by OpenCLIP's evaluation transform.

use clusterclip::data::image_ops::{CLIP_MEAN, CLIP_STD, RgbView, eval_transform, normalise_rgb};
use clusterclip::data::shapes;

/// Largest decoded image, in pixels: a photo from a phone fits, a decompression bomb does not.
const MAX_PIXELS: u64 = 40_000_000;

#[derive(Clone)]
pub enum SourceImage {
    /// `shapes::test_sample(index, size)`.
    Shapes(u64),
    /// A decoded file: RGB bytes, row-major.
    File {
        name: String,
        rgb: Vec<u8>,
        width: usize,
        height: usize,
    },
}

impl SourceImage {
    pub fn shapes(index: u64) -> SourceImage {
        SourceImage::Shapes(index)
    }

    /// Decodes PNG, JPEG, GIF, BMP or WebP bytes; the error names the file and says why.
    pub fn decode(bytes: &[u8], name: &str) -> Result<SourceImage, String> {
        let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("{name}: cannot read ({e})"))?;
        if reader.format().is_none() {
            return Err(format!(
                "{name}: not an image this page reads (PNG, JPEG, GIF, BMP or WebP)"
            ));
        }
        let (width, height) = reader
            .into_dimensions()
            .map_err(|e| format!("{name}: not a readable image ({e})"))?;
        if width as u64 * height as u64 > MAX_PIXELS {
            return Err(format!(
                "{name}: {width}x{height} pixels is over this page's {MAX_PIXELS} pixel limit"
            ));
        }
        let decoded = image::load_from_memory(bytes)
            .map_err(|e| format!("{name}: not a readable image ({e})"))?
            .into_rgb8();
        let (width, height) = (decoded.width() as usize, decoded.height() as usize);
        if width == 0 || height == 0 {
            return Err(format!("{name}: the image is empty"));
        }
        Ok(SourceImage::File {
            name: name.to_string(),
            rgb: decoded.into_raw(),
            width,
            height,
        })
    }

    /// What the page shows under the image.
    pub fn description(&self) -> String {
        match self {
            SourceImage::Shapes(index) => format!(
                "builtin:shapes-test #{index}: \"{}\"",
                shapes::test_sample(*index, 32).caption
            ),
            SourceImage::File {
                name,
                width,
                height,
                ..
            } => format!("{name} ({width}x{height}, centre crop)"),
        }
    }

    /// The model input: normalised [3, size, size].
    pub fn normalised(&self, size: usize) -> Vec<f32> {
        let mut out = vec![0f32; 3 * size * size];
        match self {
            SourceImage::Shapes(index) => {
                normalise_rgb(&shapes::test_sample(*index, size).rgb, size, &mut out)
            }
            SourceImage::File {
                rgb, width, height, ..
            } => eval_transform(
                RgbView {
                    rgb,
                    width: *width,
                    height: *height,
                },
                size,
                &mut out,
            ),
        }
        out
    }
}

/// The picture of a normalised [3, size, size] input, RGBA row-major (what the model sees).
pub fn picture_rgba(normalised: &[f32], size: usize) -> Vec<u8> {
    let plane = size * size;
    let mut rgba = vec![255u8; 4 * plane];
    for i in 0..plane {
        for c in 0..3 {
            let unit = normalised[c * plane + i] * CLIP_STD[c] + CLIP_MEAN[c];
            rgba[4 * i + c] = (unit * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
    rgba
}
