//! Drawing a random scene from a generator: shape count, kinds, colours, sizes, positions that do
//! not overlap, and a background.

use super::caption::caption;
use super::rng::SplitMix64;
use super::scene::TEXTURE_TONES;
use super::{
    BACKGROUND_COLOURS, Background, Direction, PlacedShape, SHAPE_COLOURS, Scene, ShapeKind,
    SizeClass,
};

/// Gap kept between the image border and a shape, and between two shapes (fraction of side).
const PLACEMENT_MARGIN: f32 = 0.02;
const PLACEMENT_TRIES: usize = 24;
/// Probability of drawing 1, 2 and 3 shapes (a third that finds no room is dropped).
const SHAPE_COUNT_WEIGHTS: [f32; 3] = [0.4, 0.35, 0.25];
/// Plain backgrounds dominate: their uniform regions are what cluster masking groups (M3).
const PLAIN_BACKGROUND_CHANCE: f32 = 0.5;
const ZEROSHOT_DISTRACTOR_CHANCE: f32 = 0.3;

pub(super) fn draw_scene(rng: &mut SplitMix64) -> Scene {
    let roll = rng.unit();
    let count = if roll < SHAPE_COUNT_WEIGHTS[0] {
        1
    } else if roll < SHAPE_COUNT_WEIGHTS[0] + SHAPE_COUNT_WEIGHTS[1] {
        2
    } else {
        3
    };
    // The subject (first mentioned, the label) is the only shape that may be large, so the
    // largest shape is never a close call; a lone shape is small or large.
    let subject_size = if count == 1 && rng.chance(0.5) {
        SizeClass::Small
    } else {
        SizeClass::Large
    };
    let mut shapes: Vec<PlacedShape> = Vec::with_capacity(count);
    for size in [subject_size, SizeClass::Small, SizeClass::Small]
        .into_iter()
        .take(count)
    {
        let kind = rng.pick(&ShapeKind::ALL);
        let colour = rng.below(SHAPE_COLOURS.len());
        // A shape that finds no free spot is dropped; the subject always fits.
        if let Some(shape) = place_shape(rng, &shapes, kind, colour, size) {
            shapes.push(shape);
        }
    }
    finish_scene(rng, shapes)
}

pub(super) fn draw_zeroshot_scene(rng: &mut SplitMix64, class: usize) -> Scene {
    let kinds = ShapeKind::ALL.len();
    let (colour, kind) = (class / kinds, ShapeKind::ALL[class % kinds]);
    let mut shapes = vec![];
    shapes.extend(place_shape(rng, &shapes, kind, colour, SizeClass::Large));
    if rng.chance(ZEROSHOT_DISTRACTOR_CHANCE) {
        let other_kind = ShapeKind::ALL[(class % kinds + 1 + rng.below(kinds - 1)) % kinds];
        let other_colour = (colour + 1 + rng.below(SHAPE_COLOURS.len() - 1)) % SHAPE_COLOURS.len();
        let distractor = place_shape(rng, &shapes, other_kind, other_colour, SizeClass::Small);
        shapes.extend(distractor);
    }
    finish_scene(rng, shapes)
}

fn finish_scene(rng: &mut SplitMix64, shapes: Vec<PlacedShape>) -> Scene {
    let background = draw_background(rng);
    let caption = caption(rng, &shapes, &background);
    Scene {
        shapes,
        background,
        caption,
    }
}

/// A shape at a random spot inside the image that keeps clear of `placed`, or `None`.
fn place_shape(
    rng: &mut SplitMix64,
    placed: &[PlacedShape],
    kind: ShapeKind,
    colour: usize,
    size: SizeClass,
) -> Option<PlacedShape> {
    let (lo, hi) = size.radius_range();
    let radius = rng.range(lo, hi);
    let (min, max) = (radius + PLACEMENT_MARGIN, 1.0 - radius - PLACEMENT_MARGIN);
    (0..PLACEMENT_TRIES).find_map(|_| {
        let centre = [rng.range(min, max), rng.range(min, max)];
        let clear = placed.iter().all(|other| {
            let (dx, dy) = (centre[0] - other.centre[0], centre[1] - other.centre[1]);
            let gap = radius + other.radius + PLACEMENT_MARGIN;
            dx * dx + dy * dy > gap * gap
        });
        clear.then_some(PlacedShape {
            kind,
            colour,
            size,
            centre,
            radius,
        })
    })
}

fn draw_background(rng: &mut SplitMix64) -> Background {
    if rng.chance(PLAIN_BACKGROUND_CHANCE) {
        return Background::Plain {
            colour: rng.below(BACKGROUND_COLOURS.len()),
        };
    }
    let first = rng.below(TEXTURE_TONES.len());
    let second = (first + 1 + rng.below(TEXTURE_TONES.len() - 1)) % TEXTURE_TONES.len();
    let tones = [TEXTURE_TONES[first], TEXTURE_TONES[second]];
    let direction = rng.pick(&[
        Direction::Horizontal,
        Direction::Vertical,
        Direction::Diagonal,
    ]);
    match rng.below(4) {
        // Periods of at least a tenth of the side stay above 3 pixels at 32×32.
        0 => Background::Stripes {
            tones,
            direction,
            period: rng.range(0.1, 0.2),
            phase: rng.unit(),
        },
        1 => Background::Checker {
            tones,
            cell: rng.range(0.1, 0.2),
        },
        2 => Background::Noise {
            base: TEXTURE_TONES[1 + rng.below(2)],
            seed: rng.next_u64(),
        },
        _ => Background::Gradient { tones, direction },
    }
}
