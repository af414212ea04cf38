//! Captions from scene attributes: varied wording over a small closed vocabulary.

use super::rng::SplitMix64;
use super::{Background, PlacedShape, SHAPE_COLOURS};

/// Caption words other than colour, shape, size and background names.
pub(super) const CAPTION_WORDS: &[&str] = &[
    "a",
    "above",
    "an",
    "and",
    "background",
    "below",
    "image",
    "is",
    "it",
    "left",
    "of",
    "on",
    "one",
    "picture",
    "right",
    "shapes",
    "the",
    "there",
    "three",
    "to",
    "two",
    "with",
];
const CAPTION_PREFIXES: &[&str] = &["", "", "a picture of ", "an image of ", "there is "];
/// Share of noun phrases that say "one" instead of "a"/"an", as the zero-shot prompts do.
const ONE_DETERMINER_CHANCE: f32 = 0.25;
const BACKGROUND_MENTION_CHANCE: f32 = 0.5;
const SIZE_MENTION_CHANCE: f32 = 0.5;

pub(super) fn caption(
    rng: &mut SplitMix64,
    shapes: &[PlacedShape],
    background: &Background,
) -> String {
    let with_size = rng.chance(SIZE_MENTION_CHANCE);
    let mut np =
        |shape: &PlacedShape| noun_phrase(rng.chance(ONE_DETERMINER_CHANCE), shape, with_size);
    let body = match shapes {
        [] => unreachable!("the first shape always fits an empty image"),
        [a] => np(a),
        [a, b] => {
            let (a_np, b_np) = (np(a), np(b));
            match rng.below(3) {
                0 => format!("{a_np} {} {b_np}", relation(a, b)),
                1 => format!("two shapes: {a_np} and {b_np}"),
                _ => format!("{a_np} and {b_np}"),
            }
        }
        [a, b, c, ..] => {
            let (a_np, b_np, c_np) = (np(a), np(b), np(c));
            match rng.below(3) {
                0 => format!(
                    "{a_np} with {b_np} {} it and {c_np} {} it",
                    relation(b, a),
                    relation(c, a)
                ),
                1 => format!("three shapes: {a_np}, {b_np} and {c_np}"),
                _ => format!("{a_np}, {b_np} and {c_np}"),
            }
        }
    };
    let prefix = if body.contains(':') {
        ""
    } else {
        rng.pick(CAPTION_PREFIXES)
    };
    let mut caption = format!("{prefix}{body}");
    if rng.chance(BACKGROUND_MENTION_CHANCE) {
        caption.push_str(&format!(" on a {} background", background.word()));
    }
    caption
}

fn noun_phrase(say_one: bool, shape: &PlacedShape, with_size: bool) -> String {
    let colour = SHAPE_COLOURS[shape.colour].name;
    let words = if with_size {
        format!("{} {colour} {}", shape.size.name(), shape.kind.name())
    } else {
        format!("{colour} {}", shape.kind.name())
    };
    let determiner = if say_one {
        "one"
    } else if words.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{determiner} {words}")
}

/// Where `a` is relative to `b`, along the axis of their larger separation.
fn relation(a: &PlacedShape, b: &PlacedShape) -> &'static str {
    let (dx, dy) = (a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]);
    match (dx.abs() >= dy.abs(), dx < 0.0, dy < 0.0) {
        (true, true, _) => "to the left of",
        (true, false, _) => "to the right of",
        (false, _, true) => "above",
        (false, _, false) => "below",
    }
}
