//! What a scene is made of: palettes, shape kinds, sizes, backgrounds, and the scene itself.

use super::{LAYOUT_GRID, SceneLayout, ShapeSample};

/// A named colour of the palette.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamedColour {
    pub name: &'static str,
    pub rgb: [u8; 3],
}

const fn named(name: &'static str, rgb: [u8; 3]) -> NamedColour {
    NamedColour { name, rgb }
}

/// Shape colours: saturated and pairwise at least 90 apart in RGB, so a pixel's colour names it.
pub const SHAPE_COLOURS: [NamedColour; 8] = [
    named("red", [215, 38, 38]),
    named("orange", [245, 135, 20]),
    named("yellow", [240, 225, 30]),
    named("green", [40, 170, 60]),
    named("cyan", [30, 205, 215]),
    named("blue", [40, 70, 215]),
    named("purple", [140, 50, 180]),
    named("pink", [245, 125, 195]),
];

/// Plain background colours: neutral, so colour words in captions always belong to shapes.
pub const BACKGROUND_COLOURS: [NamedColour; 3] = [
    named("white", [235, 235, 235]),
    named("gray", [128, 128, 128]),
    named("black", [25, 25, 25]),
];

/// Neutral tones that textures alternate between.
pub(super) const TEXTURE_TONES: [[u8; 3]; 4] = [
    [220, 220, 220],
    [165, 165, 165],
    [100, 100, 100],
    [45, 45, 45],
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShapeKind {
    Circle,
    Square,
    Triangle,
    Star,
    Cross,
    Ring,
    Heart,
    Diamond,
}

impl ShapeKind {
    pub const ALL: [ShapeKind; 8] = [
        ShapeKind::Circle,
        ShapeKind::Square,
        ShapeKind::Triangle,
        ShapeKind::Star,
        ShapeKind::Cross,
        ShapeKind::Ring,
        ShapeKind::Heart,
        ShapeKind::Diamond,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
            ShapeKind::Star => "star",
            ShapeKind::Cross => "cross",
            ShapeKind::Ring => "ring",
            ShapeKind::Heart => "heart",
            ShapeKind::Diamond => "diamond",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SizeClass {
    Small,
    Large,
}

impl SizeClass {
    pub fn name(self) -> &'static str {
        match self {
            SizeClass::Small => "small",
            SizeClass::Large => "large",
        }
    }

    /// Circumradius range, as a fraction of the image side.
    pub(super) fn radius_range(self) -> (f32, f32) {
        match self {
            SizeClass::Small => (0.10, 0.14),
            SizeClass::Large => (0.20, 0.27),
        }
    }
}

/// One shape in a scene. Coordinates are fractions of the image side, y pointing down.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlacedShape {
    pub kind: ShapeKind,
    /// Index into [`SHAPE_COLOURS`].
    pub colour: usize,
    pub size: SizeClass,
    pub centre: [f32; 2],
    /// Every pixel of the shape lies within this distance of `centre`.
    pub radius: f32,
}

impl PlacedShape {
    /// Index into [`zeroshot_classes`]: colour-major, shape-minor.
    pub fn class(&self) -> usize {
        self.colour * ShapeKind::ALL.len() + self.kind as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Horizontal,
    Vertical,
    Diagonal,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Background {
    /// Index into [`BACKGROUND_COLOURS`].
    Plain {
        colour: usize,
    },
    /// `period` is a fraction of the image side; `phase` a fraction of a period.
    Stripes {
        tones: [[u8; 3]; 2],
        direction: Direction,
        period: f32,
        phase: f32,
    },
    Checker {
        tones: [[u8; 3]; 2],
        cell: f32,
    },
    /// Grey blocks of `1 / NOISE_CELLS` of the side around `base`, drawn from `seed`.
    Noise {
        base: [u8; 3],
        seed: u64,
    },
    Gradient {
        tones: [[u8; 3]; 2],
        direction: Direction,
    },
}

/// Caption words of the textured backgrounds, in [`Background`] order.
pub(super) const TEXTURE_WORDS: [&str; 4] = ["striped", "checkered", "noisy", "gradient"];

impl Background {
    /// The word a caption uses for it: "on a {word} background".
    pub fn word(&self) -> &'static str {
        match self {
            Background::Plain { colour } => BACKGROUND_COLOURS[*colour].name,
            Background::Stripes { .. } => TEXTURE_WORDS[0],
            Background::Checker { .. } => TEXTURE_WORDS[1],
            Background::Noise { .. } => TEXTURE_WORDS[2],
            Background::Gradient { .. } => TEXTURE_WORDS[3],
        }
    }
}

/// A generated scene: shapes (largest first), background and caption, at no fixed resolution.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub shapes: Vec<PlacedShape>,
    pub background: Background,
    pub caption: String,
}

impl Scene {
    /// Class of the largest (first-mentioned) shape.
    pub fn label(&self) -> usize {
        self.shapes[0].class()
    }

    /// The key that assigns the scene to a split (see [`SceneLayout`]).
    pub fn layout(&self) -> SceneLayout {
        let cell = |t: f32| ((t * LAYOUT_GRID) as u8).min(LAYOUT_GRID as u8 - 1);
        SceneLayout {
            shapes: self
                .shapes
                .iter()
                .map(|s| {
                    (
                        s.kind,
                        s.colour,
                        s.size,
                        cell(s.centre[0]),
                        cell(s.centre[1]),
                    )
                })
                .collect(),
            background: self.background.word(),
        }
    }

    pub fn sample(&self, size: usize) -> ShapeSample {
        ShapeSample {
            rgb: self.render(size),
            size,
            caption: self.caption.clone(),
            label: self.label(),
        }
    }
}
