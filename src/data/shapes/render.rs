//! Rasterising a scene: backgrounds per pixel, shapes as signed distance functions blended over
//! their bounding boxes. Only IEEE-exact operations (+, −, ×, ÷, sqrt, floor, round), so every platform
//! produces the same bytes.

use super::rng::hash_words;
use super::{
    BACKGROUND_COLOURS, Background, Direction, PlacedShape, SHAPE_COLOURS, Scene, ShapeKind,
};

impl Scene {
    /// `[size, size, 3]` RGB, row-major. Shape edges are anti-aliased over one pixel; interiors
    /// hold the exact palette colour.
    pub fn render(&self, size: usize) -> Vec<u8> {
        let mut rgb = vec![0u8; size * size * 3];
        let side = size as f32;
        for y in 0..size {
            let v = (y as f32 + 0.5) / side;
            for x in 0..size {
                let u = (x as f32 + 0.5) / side;
                let at = (y * size + x) * 3;
                rgb[at..at + 3].copy_from_slice(&self.background.colour_at(u, v));
            }
        }
        for shape in &self.shapes {
            paint_shape(&mut rgb, size, shape);
        }
        rgb
    }
}

/// Noise blocks per image side: resolution independent, so a 32 and a 224 render agree.
const NOISE_CELLS: f32 = 32.0;
/// Largest deviation of a noise block from its base tone.
const NOISE_AMPLITUDE: i32 = 40;

impl Background {
    /// Colour at `(u, v)`, fractions of the side with v pointing down.
    fn colour_at(&self, u: f32, v: f32) -> [u8; 3] {
        match *self {
            Background::Plain { colour } => BACKGROUND_COLOURS[colour].rgb,
            Background::Stripes {
                tones,
                direction,
                period,
                phase,
            } => {
                let t = direction.coordinate(u, v) / period + phase;
                tones[usize::from(t - t.floor() >= 0.5)]
            }
            Background::Checker { tones, cell } => {
                let parity = ((u / cell).floor() + (v / cell).floor()) as i64 & 1;
                tones[parity as usize]
            }
            Background::Noise { base, seed } => {
                let cell = [(u * NOISE_CELLS) as u64, (v * NOISE_CELLS) as u64];
                let span = (2 * NOISE_AMPLITUDE + 1) as u64;
                let offset =
                    (hash_words(&[seed, cell[0], cell[1]]) % span) as i32 - NOISE_AMPLITUDE;
                base.map(|c| (i32::from(c) + offset).clamp(0, 255) as u8)
            }
            Background::Gradient { tones, direction } => {
                let t = direction.coordinate(u, v);
                std::array::from_fn(|c| lerp_u8(tones[0][c], tones[1][c], t))
            }
        }
    }
}

impl Direction {
    /// Position across the image along this direction, in [0, 1].
    fn coordinate(self, u: f32, v: f32) -> f32 {
        match self {
            Direction::Horizontal => v,
            Direction::Vertical => u,
            Direction::Diagonal => 0.5 * (u + v),
        }
    }
}

fn lerp_u8(a: u8, b: u8, t: f32) -> u8 {
    (f32::from(a) + (f32::from(b) - f32::from(a)) * t)
        .round()
        .clamp(0.0, 255.0) as u8
}

// Shape outlines in shape units: the shape fits the unit disc, y points up, and distances are
// signed (negative inside).

const STAR: [[f32; 2]; 10] = [
    [0.0, 1.0],
    [-0.2645, 0.3641],
    [-0.9511, 0.3090],
    [-0.4280, -0.1391],
    [-0.5878, -0.8090],
    [0.0, -0.45],
    [0.5878, -0.8090],
    [0.4280, -0.1391],
    [0.9511, 0.3090],
    [0.2645, 0.3641],
];
const TRIANGLE: [[f32; 2]; 3] = [[0.0, 1.0], [-0.866, -0.5], [0.866, -0.5]];
const SQUARE: [[f32; 2]; 4] = [[-0.68, -0.68], [0.68, -0.68], [0.68, 0.68], [-0.68, 0.68]];
const DIAMOND: [[f32; 2]; 4] = [[0.0, 1.0], [-0.7, 0.0], [0.0, -1.0], [0.7, 0.0]];
/// Arms 0.9 long and 0.6 thick.
const CROSS: [[f32; 2]; 12] = [
    [-0.3, 0.9],
    [0.3, 0.9],
    [0.3, 0.3],
    [0.9, 0.3],
    [0.9, -0.3],
    [0.3, -0.3],
    [0.3, -0.9],
    [-0.3, -0.9],
    [-0.3, -0.3],
    [-0.9, -0.3],
    [-0.9, 0.3],
    [-0.3, 0.3],
];
const CIRCLE_RADIUS: f32 = 0.8;
/// Ring: centre line radius and half thickness (outer 0.9, inner 0.5).
const RING_MID: f32 = 0.7;
const RING_HALF_WIDTH: f32 = 0.2;
/// Heart: a square turned 45° (half diagonal `HEART_HALF_DIAGONAL`) with a disc of radius 0.5 on
/// each upper edge, shifted down by `HEART_DROP` so the outline spans y in [-0.78, 0.78].
const HEART_HALF_DIAGONAL: f32 = std::f32::consts::FRAC_1_SQRT_2;
const HEART_DROP: f32 = 0.25 - HEART_HALF_DIAGONAL / 4.0;
const HEART_SQUARE: [[f32; 2]; 4] = [
    [0.0, HEART_HALF_DIAGONAL - HEART_DROP],
    [-HEART_HALF_DIAGONAL, -HEART_DROP],
    [0.0, -HEART_HALF_DIAGONAL - HEART_DROP],
    [HEART_HALF_DIAGONAL, -HEART_DROP],
];
const HEART_LOBES: [[f32; 2]; 2] = [
    [
        -HEART_HALF_DIAGONAL / 2.0,
        HEART_HALF_DIAGONAL / 2.0 - HEART_DROP,
    ],
    [
        HEART_HALF_DIAGONAL / 2.0,
        HEART_HALF_DIAGONAL / 2.0 - HEART_DROP,
    ],
];
const HEART_LOBE_RADIUS: f32 = 0.5;

fn signed_distance(kind: ShapeKind, p: [f32; 2]) -> f32 {
    let length = |q: [f32; 2]| (q[0] * q[0] + q[1] * q[1]).sqrt();
    match kind {
        ShapeKind::Circle => length(p) - CIRCLE_RADIUS,
        ShapeKind::Square => polygon_distance(&SQUARE, p),
        ShapeKind::Triangle => polygon_distance(&TRIANGLE, p),
        ShapeKind::Star => polygon_distance(&STAR, p),
        ShapeKind::Cross => polygon_distance(&CROSS, p),
        ShapeKind::Ring => (length(p) - RING_MID).abs() - RING_HALF_WIDTH,
        ShapeKind::Diamond => polygon_distance(&DIAMOND, p),
        ShapeKind::Heart => HEART_LOBES
            .iter()
            .map(|c| length([p[0] - c[0], p[1] - c[1]]) - HEART_LOBE_RADIUS)
            .fold(polygon_distance(&HEART_SQUARE, p), f32::min),
    }
}

/// Exact signed distance to a simple polygon: nearest edge, sign by even-odd crossings.
fn polygon_distance(vertices: &[[f32; 2]], p: [f32; 2]) -> f32 {
    let mut nearest_squared = f32::INFINITY;
    let mut inside = false;
    let mut j = vertices.len() - 1;
    for (i, v) in vertices.iter().enumerate() {
        let w = vertices[j];
        let edge = [w[0] - v[0], w[1] - v[1]];
        let to_p = [p[0] - v[0], p[1] - v[1]];
        let t = ((to_p[0] * edge[0] + to_p[1] * edge[1]) / (edge[0] * edge[0] + edge[1] * edge[1]))
            .clamp(0.0, 1.0);
        let off = [to_p[0] - edge[0] * t, to_p[1] - edge[1] * t];
        nearest_squared = nearest_squared.min(off[0] * off[0] + off[1] * off[1]);
        if (v[1] > p[1]) != (w[1] > p[1]) && p[0] < v[0] + (p[1] - v[1]) * edge[0] / edge[1] {
            inside = !inside;
        }
        j = i;
    }
    let distance = nearest_squared.sqrt();
    if inside { -distance } else { distance }
}

/// Blends the shape over its bounding box; coverage falls from 1 to 0 across one pixel of edge.
fn paint_shape(rgb: &mut [u8], size: usize, shape: &PlacedShape) {
    let side = size as f32;
    let pixels_per_unit = shape.radius * side;
    let to_pixel_range = |centre: f32| {
        let lo = ((centre - shape.radius) * side - 1.0).floor().max(0.0) as usize;
        let hi = (((centre + shape.radius) * side + 1.0).ceil() as usize).min(size);
        lo..hi
    };
    let colour = SHAPE_COLOURS[shape.colour].rgb;
    for y in to_pixel_range(shape.centre[1]) {
        // Flip y so the shape tables point up on screen.
        let local_y = (shape.centre[1] - (y as f32 + 0.5) / side) / shape.radius;
        for x in to_pixel_range(shape.centre[0]) {
            let local_x = ((x as f32 + 0.5) / side - shape.centre[0]) / shape.radius;
            let distance_px = signed_distance(shape.kind, [local_x, local_y]) * pixels_per_unit;
            let coverage = (0.5 - distance_px).clamp(0.0, 1.0);
            if coverage == 0.0 {
                continue;
            }
            let at = (y * size + x) * 3;
            for c in 0..3 {
                rgb[at + c] = lerp_u8(rgb[at + c], colour[c], coverage);
            }
        }
    }
}
