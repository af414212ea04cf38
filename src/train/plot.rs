//! `loss.png`: training loss (left panel; validation loss as dots) and validation metrics in
//! [0, 1] (right panel), drawn with the `image` crate alone. Axis extremes are written with a
//! 3×5 pixel font, so the picture needs no font files.

use image::{ImageFormat, Rgb, RgbImage};

const PANEL_W: u32 = 480;
const PANEL_H: u32 = 320;
const MARGIN: u32 = 36;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const AXIS: Rgb<u8> = Rgb([60, 60, 60]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);

/// One curve.
pub struct Series {
    pub points: Vec<(f64, f64)>,
    pub colour: [u8; 3],
    /// Joined by lines (true) or drawn as dots.
    pub line: bool,
}

/// One panel: its curves and, when fixed, its y range.
pub struct Panel {
    pub series: Vec<Series>,
    pub y_range: Option<(f64, f64)>,
}

/// Colours of the curves, documented where the plot is described.
pub const TRAIN_LOSS: [u8; 3] = [31, 119, 180];
pub const VAL_LOSS: [u8; 3] = [214, 39, 40];
pub const METRIC_COLOURS: [[u8; 3]; 4] = [
    [44, 160, 44],
    [152, 223, 138],
    [255, 127, 14],
    [148, 103, 189],
];

/// 3×5 glyphs, rows top to bottom, 3 bits each (MSB left).
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        _ => return None,
    })
}

fn put(img: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, colour);
    }
}

/// Text at (x, y), top-left, 2× scale.
fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, colour: Rgb<u8>) {
    for (i, c) in s.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3 {
                if bits >> (2 - col) & 1 == 1 {
                    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                        put(
                            img,
                            x + i as i64 * 8 + col * 2 + dx,
                            y + r as i64 * 2 + dy,
                            colour,
                        );
                    }
                }
            }
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), colour: Rgb<u8>) {
    let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
    for s in 0..=steps {
        put(
            img,
            x0 + (x1 - x0) * s / steps,
            y0 + (y1 - y0) * s / steps,
            colour,
        );
    }
}

fn short(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-2) {
        format!("{v:.1e}")
    } else {
        format!("{v:.2}")
    }
}

fn draw_panel(img: &mut RgbImage, left: u32, panel: &Panel) {
    let finite = |v: &f64| v.is_finite();
    let xs = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(finite);
    let ys = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(finite);
    let (x_lo, x_hi) = (0.0, xs.fold(1.0f64, f64::max));
    let (y_lo, y_hi) = panel.y_range.unwrap_or_else(|| {
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
        if lo > hi {
            (0.0, 1.0)
        } else if hi - lo < 1e-9 {
            (lo - 0.5, hi + 0.5)
        } else {
            (lo, hi)
        }
    });
    let (x0, y0) = (i64::from(left + MARGIN), i64::from(PANEL_H - MARGIN));
    let (w, h) = (
        i64::from(PANEL_W - 2 * MARGIN),
        i64::from(PANEL_H - 2 * MARGIN),
    );
    for k in 1..4 {
        let y = y0 - h * k / 4;
        line(img, (x0, y), (x0 + w, y), GRID);
    }
    line(img, (x0, y0), (x0 + w, y0), AXIS);
    line(img, (x0, y0), (x0, y0 - h), AXIS);
    text(img, x0 - 4, y0 - h - 14, &short(y_hi), AXIS);
    text(img, x0 - 4, y0 + 6, &short(y_lo), AXIS);
    text(img, x0 + w - 40, y0 + 6, &format!("{x_hi:.0}"), AXIS);
    let map = |(x, y): (f64, f64)| {
        let px = x0 + ((x - x_lo) / (x_hi - x_lo) * w as f64).round() as i64;
        let py = y0 - ((y.clamp(y_lo, y_hi) - y_lo) / (y_hi - y_lo) * h as f64).round() as i64;
        (px, py)
    };
    for series in &panel.series {
        let colour = Rgb(series.colour);
        let points: Vec<(i64, i64)> = series
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&p| map(p))
            .collect();
        if series.line {
            for pair in points.windows(2) {
                line(img, pair[0], pair[1], colour);
            }
        }
        for &(x, y) in &points {
            let r = if series.line { 0 } else { 2 };
            for dx in -r..=r {
                for dy in -r..=r {
                    put(img, x + dx, y + dy, colour);
                }
            }
        }
    }
}

/// The panels side by side, as PNG bytes.
pub fn render_png(panels: &[Panel]) -> Result<Vec<u8>, String> {
    let mut img = RgbImage::from_pixel(PANEL_W * panels.len().max(1) as u32, PANEL_H, WHITE);
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut img, i as u32 * PANEL_W, panel);
    }
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, ImageFormat::Png)
        .map_err(|e| format!("loss.png: {e}"))?;
    Ok(bytes.into_inner())
}

/// `loss.png` of a run: training loss with validation loss dots; metrics (in [0, 1]) in the
/// colours of [`METRIC_COLOURS`], in the order given.
pub fn write_loss_plot(
    path: &std::path::Path,
    train_loss: &[(u64, f32)],
    val_loss: &[(u64, f64)],
    metrics: &[Vec<(u64, f64)>],
) -> Result<(), String> {
    let loss_panel = Panel {
        series: vec![
            Series {
                points: train_loss
                    .iter()
                    .map(|&(s, l)| (s as f64, l as f64))
                    .collect(),
                colour: TRAIN_LOSS,
                line: true,
            },
            Series {
                points: val_loss.iter().map(|&(s, l)| (s as f64, l)).collect(),
                colour: VAL_LOSS,
                line: false,
            },
        ],
        y_range: None,
    };
    let metric_panel = Panel {
        series: metrics
            .iter()
            .zip(METRIC_COLOURS.iter().cycle())
            .map(|(points, &colour)| Series {
                points: points.iter().map(|&(s, v)| (s as f64, v)).collect(),
                colour,
                line: true,
            })
            .collect(),
        y_range: Some((0.0, 1.0)),
    };
    crate::model::io::write_bytes_atomic(path, &render_png(&[loss_panel, metric_panel])?)
}
