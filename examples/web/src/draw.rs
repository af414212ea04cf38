//! Drawing into the page's canvases: a masked picture (as `clusterclip mask --out` draws it:
//! dropped patches greyed, anchors outlined) and the loss curve.

use wasm_bindgen::{Clamped, JsCast};
use web_sys::{CanvasRenderingContext2d, HtmlCanvasElement, ImageData};

/// Dropped patches keep this fraction of their own colour, the rest is mid-grey (as the CLI).
const DROPPED_VISIBILITY: f32 = 0.25;
const GREY: f32 = 128.0;
const ANCHOR_OUTLINE: [u8; 3] = [230, 30, 30];
/// Pictures are scaled up by a whole factor to at least this side, so patches stay visible.
const MIN_SIDE: usize = 256;

fn canvas(id: &str) -> Result<(HtmlCanvasElement, CanvasRenderingContext2d), String> {
    let element = crate::document()
        .and_then(|d| d.get_element_by_id(id))
        .ok_or_else(|| format!("the page has no element #{id}"))?;
    let canvas: HtmlCanvasElement = element
        .dyn_into()
        .map_err(|_| format!("#{id} is not a canvas"))?;
    let context = canvas
        .get_context("2d")
        .ok()
        .flatten()
        .and_then(|c| c.dyn_into::<CanvasRenderingContext2d>().ok())
        .ok_or_else(|| format!("#{id}: no 2d context"))?;
    Ok((canvas, context))
}

/// The patches of one image to show: which are kept, which are anchors (both by patch index).
pub struct PatchMarks<'a> {
    pub kept: &'a [u32],
    pub anchors: &'a [u32],
}

/// `rgba` ([size, size, 4]) scaled up, with `marks` over it when given, into canvas `id`.
pub fn picture(
    id: &str,
    rgba: &[u8],
    size: usize,
    patch: usize,
    marks: Option<PatchMarks>,
) -> Result<(), String> {
    let scale = MIN_SIDE.div_ceil(size).max(1);
    let (side, patch_side, cols) = (size * scale, patch * scale, size / patch);
    let patches = cols * cols;
    let mut kept = vec![true; patches];
    let mut anchor = vec![false; patches];
    if let Some(marks) = &marks {
        kept.fill(false);
        marks.kept.iter().for_each(|&j| kept[j as usize] = true);
        marks
            .anchors
            .iter()
            .for_each(|&j| anchor[j as usize] = true);
    }
    let mut out = vec![255u8; 4 * side * side];
    for y in 0..side {
        for x in 0..side {
            let source = &rgba[4 * ((y / scale) * size + x / scale)..][..3];
            let j = (y / patch_side) * cols + x / patch_side;
            let (px, py) = (x % patch_side, y % patch_side);
            let on_edge = px == 0 || py == 0 || px == patch_side - 1 || py == patch_side - 1;
            let shown: [u8; 3] = if anchor[j] && on_edge {
                ANCHOR_OUTLINE
            } else if kept[j] {
                [source[0], source[1], source[2]]
            } else {
                std::array::from_fn(|c| {
                    (DROPPED_VISIBILITY * source[c] as f32 + (1.0 - DROPPED_VISIBILITY) * GREY)
                        as u8
                })
            };
            out[4 * (y * side + x)..][..3].copy_from_slice(&shown);
        }
    }
    let (canvas, context) = canvas(id)?;
    canvas.set_width(side as u32);
    canvas.set_height(side as u32);
    let data = ImageData::new_with_u8_clamped_array_and_sh(Clamped(&out), side as u32, side as u32)
        .map_err(|_| format!("#{id}: cannot make a {side}x{side} picture"))?;
    context
        .put_image_data(&data, 0.0, 0.0)
        .map_err(|_| format!("#{id}: cannot draw"))
}

/// The loss curve: `points` (step, loss) as a polyline scaled to canvas `id`, axes labelled.
pub fn curve(id: &str, points: &[(f64, f64)], label: &str) -> Result<(), String> {
    let (canvas, context) = canvas(id)?;
    let (width, height) = (canvas.width() as f64, canvas.height() as f64);
    let margin = 36.0;
    context.clear_rect(0.0, 0.0, width, height);
    context.set_fill_style_str("#333");
    context.set_font("12px sans-serif");
    let _ = context.fill_text(label, margin, 14.0);
    if points.len() < 2 {
        return Ok(());
    }
    let (x_max, mut y_min, mut y_max) = points.iter().fold(
        (1.0f64, f64::INFINITY, f64::NEG_INFINITY),
        |(xm, lo, hi), &(x, y)| (xm.max(x), lo.min(y), hi.max(y)),
    );
    if y_max - y_min < 1e-6 {
        y_min -= 0.5;
        y_max += 0.5;
    }
    let to_x = |x: f64| margin + x / x_max * (width - 1.5 * margin);
    let to_y = |y: f64| height - margin + (y_min - y) / (y_max - y_min) * (height - 2.0 * margin);
    let _ = context.fill_text(&format!("{y_max:.3}"), 2.0, to_y(y_max) + 4.0);
    let _ = context.fill_text(&format!("{y_min:.3}"), 2.0, to_y(y_min) + 4.0);
    let _ = context.fill_text(&format!("step {x_max:.0}"), width - 70.0, height - 8.0);
    context.set_stroke_style_str("#1f6feb");
    context.set_line_width(1.5);
    context.begin_path();
    for (i, &(x, y)) in points.iter().enumerate() {
        if i == 0 {
            context.move_to(to_x(x), to_y(y));
        } else {
            context.line_to(to_x(x), to_y(y));
        }
    }
    context.stroke();
    Ok(())
}
