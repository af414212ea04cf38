//! `builtin:shapes`: a procedurally generated image-caption dataset that needs no download.
//!
//! Each image holds 1–3 flat-coloured shapes (8 kinds, 8 colours, small or large) on a plain or
//! textured background; its caption names their attributes and relative positions from a small
//! closed vocabulary ([`vocabulary`]). Flat shapes on plain backgrounds give cluster masking
//! coherent regions to find (M3.1: patches inside one region correlate, flat patches stay alone).
//!
//! Every sample is a pure function of its key (split, seed, index): a counter-based splitmix64
//! stream, so any index can be generated on its own, in any order, in the browser or on a thread.
//! Rendering uses only IEEE-exact float operations (no trigonometry), so native and wasm32 builds
//! produce the same bytes.
//!
//! Held-out splits: a scene's [`SceneLayout`] (what a caption can name, plus an 8×8 grid cell per
//! shape) hashes to one of 16 buckets: bucket 0 is validation, bucket 1 test (and zero-shot), the
//! rest training. Every generator redraws until its scene lands in its own bucket, so no
//! validation or test scene shares its layout with a training scene of any seed: an image is
//! never repeated, nor repeated with its shapes moved within their cells or its texture changed.

/// One image with its caption. `rgb` is `[size, size, 3]`, row-major, top row first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeSample {
    pub rgb: Vec<u8>,
    pub size: usize,
    pub caption: String,
    /// Class of the largest (first-mentioned) shape: an index into [`zeroshot_classes`].
    pub label: usize,
}

/// Number of validation samples (indices `0..VAL_SIZE`).
pub const VAL_SIZE: usize = 512;
/// Number of test samples (indices `0..TEST_SIZE`).
pub const TEST_SIZE: usize = 1024;

/// Zero-shot prompts. None puts an article right before `{}` ("a orange circle" is a phrase no
/// caption uses); every word in them also occurs in training captions.
pub const ZEROSHOT_TEMPLATES: &[&str] = &[
    "a picture of one {}",
    "an image of one {}",
    "there is one {}",
    "one {}",
    "one large {}",
    "one {} on a background",
];

mod caption;
mod draw;
mod render;
mod rng;
mod scene;

pub use scene::{
    BACKGROUND_COLOURS, Background, Direction, NamedColour, PlacedShape, SHAPE_COLOURS, Scene,
    ShapeKind, SizeClass,
};

use caption::CAPTION_WORDS;
use draw::{draw_scene, draw_zeroshot_scene};
use rng::{SplitMix64, hash_words};
use scene::TEXTURE_WORDS;

/// Training sample `index` of the endless stream for `seed`.
pub fn train_sample(seed: u64, index: u64, size: usize) -> ShapeSample {
    scene(Split::Train { seed }, index).sample(size)
}

/// Validation sample; the split is indices `0..VAL_SIZE` (later indices are held out too).
pub fn val_sample(index: u64, size: usize) -> ShapeSample {
    scene(Split::Val, index).sample(size)
}

/// Test sample; the split is indices `0..TEST_SIZE` (later indices are held out too).
pub fn test_sample(index: u64, size: usize) -> ShapeSample {
    scene(Split::Test, index).sample(size)
}

/// Zero-shot image: one large shape of class `index % zeroshot_classes().len()` (so any run of
/// consecutive indices is class-balanced), sometimes with a small distractor of another colour
/// and kind. Drawn from the held-out test layouts.
pub fn zeroshot_sample(index: u64, size: usize) -> ShapeSample {
    scene(Split::ZeroShot, index).sample(size)
}

/// "red circle", "red square", ...: every colour × shape, colour-major ([`PlacedShape::class`]).
pub fn zeroshot_classes() -> Vec<String> {
    SHAPE_COLOURS
        .iter()
        .flat_map(|c| {
            ShapeKind::ALL
                .iter()
                .map(move |k| format!("{} {}", c.name, k.name()))
        })
        .collect()
}

/// Every word a caption or zero-shot prompt can contain, sorted and unique.
pub fn vocabulary() -> Vec<&'static str> {
    let mut words: Vec<&'static str> = CAPTION_WORDS.to_vec();
    words.extend(SHAPE_COLOURS.iter().map(|c| c.name));
    words.extend(BACKGROUND_COLOURS.iter().map(|c| c.name));
    words.extend(TEXTURE_WORDS);
    words.extend(ShapeKind::ALL.iter().map(|k| k.name()));
    words.extend([SizeClass::Small.name(), SizeClass::Large.name()]);
    words.sort_unstable();
    words.dedup();
    words
}

/// The scene for `index` of `split`. Redraws (with the attempt number in the key) until the
/// scene's layout falls in the split's bucket: 1.14 draws on average for training, 16 for the
/// held-out splits; drawing a scene costs far less than rendering it.
pub fn scene(split: Split, index: u64) -> Scene {
    let (tag, stream_seed) = split.stream();
    for attempt in 0u64.. {
        let mut rng = SplitMix64::keyed(&[tag, stream_seed, index, attempt]);
        let scene = match split {
            Split::ZeroShot => {
                let class = (index % (SHAPE_COLOURS.len() * ShapeKind::ALL.len()) as u64) as usize;
                draw_zeroshot_scene(&mut rng, class)
            }
            _ => draw_scene(&mut rng),
        };
        if split.accepts(scene.layout().bucket()) {
            return scene;
        }
    }
    unreachable!("every split owns at least one layout bucket")
}

/// Which stream a scene comes from. Validation, test and zero-shot streams ignore the training
/// seed: they are the same for every run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train { seed: u64 },
    Val,
    Test,
    ZeroShot,
}

/// Held-out bucket count: 1/16 of layouts for validation, 1/16 for test, 14/16 for training.
const LAYOUT_BUCKETS: u64 = 16;
const VAL_BUCKET: u64 = 0;
const TEST_BUCKET: u64 = 1;
/// Grid cells per side used to compare shape positions between splits.
const LAYOUT_GRID: f32 = 8.0;

impl Split {
    /// (stream tag, stream seed) for the generator's key.
    fn stream(self) -> (u64, u64) {
        match self {
            Split::Train { seed } => (1, seed),
            Split::Val => (2, 0x7661_6c69_6461_7465),
            Split::Test => (3, 0x7465_7374_2d73_6574),
            Split::ZeroShot => (4, 0x7a65_726f_7368_6f74),
        }
    }

    fn accepts(self, bucket: u64) -> bool {
        match self {
            Split::Train { .. } => bucket != VAL_BUCKET && bucket != TEST_BUCKET,
            Split::Val => bucket == VAL_BUCKET,
            Split::Test | Split::ZeroShot => bucket == TEST_BUCKET,
        }
    }
}

/// What decides a scene's split: every attribute a caption can name, plus each shape's cell on an
/// 8×8 grid. Sub-cell offsets, exact radii and texture phases are left out on purpose, so a
/// held-out scene is not a slightly shifted copy of a training scene.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SceneLayout {
    /// (kind, colour, size, grid x, grid y) per shape, largest first.
    pub shapes: Vec<(ShapeKind, usize, SizeClass, u8, u8)>,
    /// The background's caption word.
    pub background: &'static str,
}

impl SceneLayout {
    /// Our own hash: std's `DefaultHasher` may change between Rust versions.
    fn bucket(&self) -> u64 {
        let mut words = vec![self.shapes.len() as u64];
        for &(kind, colour, size, x, y) in &self.shapes {
            words.extend([
                kind as u64,
                colour as u64,
                size as u64,
                u64::from(x),
                u64::from(y),
            ]);
        }
        words.extend(self.background.bytes().map(u64::from));
        hash_words(&words) % LAYOUT_BUCKETS
    }
}
