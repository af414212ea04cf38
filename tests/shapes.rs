//! The built-in `builtin:shapes` dataset: determinism, held-out splits, captions that match the
//! pixels, zero-shot coverage and uniform regions for cluster masking.

use std::collections::HashSet;

use clusterclip::data::shapes::{
    self, BACKGROUND_COLOURS, Background, SHAPE_COLOURS, ShapeKind, SizeClass, Split, TEST_SIZE,
    VAL_SIZE, ZEROSHOT_TEMPLATES,
};

const SEEDS: [u64; 3] = [0, 1, 12345];

fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Pixels exactly equal to `rgb` (shape interiors hold the exact palette colour).
fn count_colour(sample: &shapes::ShapeSample, rgb: [u8; 3]) -> usize {
    sample.rgb.chunks_exact(3).filter(|p| *p == rgb).count()
}

#[test]
fn same_key_gives_same_bytes_and_different_indices_differ() {
    for size in [32, 64] {
        let a = shapes::train_sample(7, 41, size);
        assert_eq!(a, shapes::train_sample(7, 41, size));
        assert_eq!(a.rgb.len(), size * size * 3);
        assert_ne!(a.rgb, shapes::train_sample(7, 42, size).rgb);
        assert_ne!(a.rgb, shapes::train_sample(8, 41, size).rgb);
        assert_eq!(shapes::val_sample(3, size), shapes::val_sample(3, size));
        assert_eq!(
            shapes::zeroshot_sample(3, size),
            shapes::zeroshot_sample(3, size)
        );
    }
    // Pinned bytes and captions of a few samples of every split: any change to the generator (which
    // changes every dataset built on it) shows up here, as does a platform difference.
    let mut hash = 0u64;
    let samples = (0..16).map(|i| shapes::train_sample(0, i, 32));
    let samples = samples.chain((0..8).map(|i| shapes::val_sample(i, 32)));
    let samples = samples.chain((0..8).map(|i| shapes::test_sample(i, 32)));
    for sample in samples.chain((0..16).map(|i| shapes::zeroshot_sample(i, 32))) {
        for byte in sample.rgb.iter().chain(sample.caption.as_bytes()) {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
    assert_eq!(hash, 0xbebd_837b_cd82_bfd7);
    assert_eq!(
        shapes::train_sample(0, 0, 32).caption,
        "a cyan star and a green ring"
    );
}

#[test]
fn sizes_32_64_224_render() {
    for size in [32, 64, 224] {
        for index in 0..20 {
            let sample = shapes::train_sample(1, index, size);
            assert_eq!(sample.size, size);
            assert_eq!(sample.rgb.len(), size * size * 3);
        }
    }
}

#[test]
fn captions_name_the_labelled_class_first_and_use_the_vocabulary() {
    let classes = shapes::zeroshot_classes();
    let vocabulary: HashSet<&str> = shapes::vocabulary().into_iter().collect();
    let mut forms = HashSet::new();
    for index in 0..2000 {
        let scene = shapes::scene(Split::Train { seed: 3 }, index);
        let caption = &scene.caption;
        let class_words: Vec<&str> = classes[scene.label()].split(' ').collect();
        let first = scene.shapes[0];
        assert_eq!(class_words[0], SHAPE_COLOURS[first.colour].name);
        assert_eq!(class_words[1], first.kind.name());
        // The labelled shape is the first colour and the first shape word of the caption.
        let caption_words = words(caption);
        let first_colour = caption_words
            .iter()
            .find(|w| SHAPE_COLOURS.iter().any(|c| c.name == **w));
        let first_kind = caption_words
            .iter()
            .find(|w| ShapeKind::ALL.iter().any(|k| k.name() == **w));
        assert_eq!(first_colour, Some(&class_words[0]), "{caption}");
        assert_eq!(first_kind, Some(&class_words[1]), "{caption}");
        // Only the subject may be large, so the label is never a close call between two shapes.
        for shape in &scene.shapes[1..] {
            assert_eq!(shape.size, SizeClass::Small, "{caption}");
            assert!(shape.radius < first.radius, "{caption}");
        }
        for word in &caption_words {
            assert!(
                vocabulary.contains(word),
                "{word:?} of {caption:?} not in the vocabulary"
            );
        }
        let relation = ["above", "below", "left", "right"]
            .iter()
            .find(|r| caption_words.contains(r));
        forms.insert((scene.shapes.len(), caption.contains(':'), relation.copied()));
    }
    // 1 shape; 2 and 3 shapes with a colon list, a plain list and each of the four relations.
    assert!(forms.len() >= 10, "too few caption forms: {forms:?}");
    for template in ZEROSHOT_TEMPLATES {
        for word in words(template) {
            assert!(
                vocabulary.contains(word),
                "template word {word:?} not in the vocabulary"
            );
        }
    }
}

#[test]
fn relations_match_positions() {
    // "A {relation} B": A is the larger shape, the relation follows their larger offset.
    let relations = ["to the left of", "to the right of", "above", "below"];
    let mut checked = 0;
    for index in 0..500 {
        let scene = shapes::scene(Split::Val, index);
        let stated: Vec<&str> = relations
            .iter()
            .copied()
            .filter(|r| scene.caption.contains(r))
            .collect();
        if scene.shapes.len() != 2 || stated.is_empty() {
            continue;
        }
        let [a, b] = [scene.shapes[0], scene.shapes[1]];
        let (dx, dy) = (a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]);
        let expected = match (dx.abs() >= dy.abs(), dx < 0.0, dy < 0.0) {
            (true, true, _) => "to the left of",
            (true, false, _) => "to the right of",
            (false, _, true) => "above",
            (false, _, false) => "below",
        };
        assert_eq!(stated, [expected], "{:?}", scene.caption);
        checked += 1;
    }
    assert!(checked > 20, "only {checked} relation captions checked");
}

#[test]
fn labelled_shape_is_painted_in_its_named_colour() {
    let size = 64;
    for index in 0..300 {
        let scene = shapes::scene(Split::Test, index);
        let sample = scene.sample(size);
        let first = scene.shapes[0];
        let colour = SHAPE_COLOURS[first.colour].rgb;
        // Smallest area is the triangle's 1.3 r² (r = circumradius); rasterising loses the edge.
        let radius_px = first.radius * size as f32;
        let min_area = (1.3 * radius_px * radius_px - 4.0 * radius_px) as usize;
        let painted = count_colour(&sample, colour);
        assert!(
            painted >= min_area,
            "{index}: {painted} px of {colour:?} < {min_area} ({:?})",
            scene.caption
        );
    }
}

#[test]
fn shape_areas_match_their_outlines() {
    // One large shape of each kind on a plain background, rendered at 224. Its area in units of
    // r² (r = circumradius), read back from pixels (each pixel's coverage recovered from its blend
    // of shape and background colour), must match the outline's analytic area.
    let pi = std::f32::consts::PI;
    let expected = [
        (ShapeKind::Circle, 0.64 * pi),
        (ShapeKind::Square, 1.36 * 1.36),
        (ShapeKind::Triangle, 0.75 * 3f32.sqrt()),
        (ShapeKind::Star, 5.0 * 0.45 * 0.587_785),
        (ShapeKind::Cross, 2.0 * 1.8 * 0.6 - 0.36),
        (ShapeKind::Ring, (0.81 - 0.25) * pi),
        // Unit square plus the outer halves of two discs of radius 0.5.
        (ShapeKind::Heart, 1.0 + 0.25 * pi),
        (ShapeKind::Diamond, 1.4),
    ];
    let size = 224;
    let mut seen = HashSet::new();
    for index in 0..400 {
        let scene = shapes::scene(Split::ZeroShot, index);
        let Background::Plain { colour: background } = scene.background else {
            continue;
        };
        if scene.shapes.len() != 1 {
            continue;
        }
        let shape = scene.shapes[0];
        let (fg, bg) = (
            SHAPE_COLOURS[shape.colour].rgb,
            BACKGROUND_COLOURS[background].rgb,
        );
        let channel = (0..3).max_by_key(|&c| fg[c].abs_diff(bg[c])).unwrap();
        let contrast = f32::from(fg[channel]) - f32::from(bg[channel]);
        let covered: f32 = (scene.render(size).chunks_exact(3))
            .map(|p| ((f32::from(p[channel]) - f32::from(bg[channel])) / contrast).clamp(0.0, 1.0))
            .sum();
        let radius_px = shape.radius * size as f32;
        let area = expected.iter().find(|(k, _)| *k == shape.kind).unwrap().1;
        let ratio = covered / (area * radius_px * radius_px);
        // Rounding each blended pixel to 8 bits and the 1-pixel ramp leave well under 1%.
        assert!(
            (0.99..=1.01).contains(&ratio),
            "{:?}: area ratio {ratio}",
            shape.kind
        );
        seen.insert(shape.kind);
    }
    assert_eq!(seen.len(), expected.len());
}

#[test]
fn every_zeroshot_class_is_reachable_and_labelled_correctly() {
    let classes = shapes::zeroshot_classes();
    assert_eq!(classes.len(), 64);
    assert_eq!(classes[0], "red circle");
    assert_eq!(classes.iter().collect::<HashSet<_>>().len(), 64);
    let mut seen = vec![0usize; classes.len()];
    for index in 0..256 {
        let sample = shapes::zeroshot_sample(index, 32);
        let scene = shapes::scene(Split::ZeroShot, index);
        assert_eq!(sample.label, scene.label());
        assert_eq!(scene.shapes[0].size, SizeClass::Large);
        assert!(scene.shapes.len() <= 2);
        if let Some(distractor) = scene.shapes.get(1) {
            assert_ne!(distractor.colour, scene.shapes[0].colour);
            assert_ne!(distractor.kind, scene.shapes[0].kind);
            assert_eq!(distractor.size, SizeClass::Small);
        }
        assert!(
            sample.caption.contains(&classes[sample.label]),
            "{}",
            sample.caption
        );
        seen[sample.label] += 1;
    }
    assert!(
        seen.iter().all(|&n| n == 4),
        "classes are not balanced: {seen:?}"
    );
}

#[test]
fn held_out_layouts_never_occur_in_training() {
    let mut train_layouts = HashSet::new();
    for seed in SEEDS {
        for index in 0..4000 {
            train_layouts.insert(shapes::scene(Split::Train { seed }, index).layout());
        }
    }
    let held_out = (0..VAL_SIZE as u64)
        .map(|i| (Split::Val, i))
        .chain((0..TEST_SIZE as u64).map(|i| (Split::Test, i)))
        .chain((0..256).map(|i| (Split::ZeroShot, i)));
    let mut val_layouts = HashSet::new();
    let mut test_layouts = HashSet::new();
    for (split, index) in held_out {
        let layout = shapes::scene(split, index).layout();
        assert!(
            !train_layouts.contains(&layout),
            "{split:?} {index} has a training layout"
        );
        if split == Split::Val {
            val_layouts.insert(layout);
        } else {
            test_layouts.insert(layout);
        }
    }
    assert!(val_layouts.is_disjoint(&test_layouts));
    // Sanity: single-shape layouts are few enough that training repeats them, so the check bites.
    let single = train_layouts.iter().filter(|l| l.shapes.len() == 1).count();
    assert!(single < 12 * 4000 / 2, "{single}");
    // Held-out samples do not depend on the training seed, and differ from training images.
    let train_bytes: HashSet<Vec<u8>> = (0..500)
        .map(|i| shapes::train_sample(0, i, 32).rgb)
        .collect();
    for index in 0..VAL_SIZE as u64 {
        assert!(!train_bytes.contains(&shapes::val_sample(index, 32).rgb));
    }
}

#[test]
fn plain_backgrounds_leave_large_uniform_regions() {
    // Share of pixels whose 3×3 neighbourhood is one colour: the regions cluster masking groups.
    let size = 64;
    let mut uniform = 0usize;
    let mut total = 0usize;
    for index in 0..200 {
        let scene = shapes::scene(Split::Train { seed: 5 }, index);
        if !matches!(scene.background, Background::Plain { .. }) {
            continue;
        }
        let rgb = scene.render(size);
        let pixel = |x: usize, y: usize| &rgb[(y * size + x) * 3..(y * size + x) * 3 + 3];
        for y in 1..size - 1 {
            for x in 1..size - 1 {
                let centre = pixel(x, y);
                let flat =
                    (y - 1..=y + 1).all(|yy| (x - 1..=x + 1).all(|xx| pixel(xx, yy) == centre));
                uniform += usize::from(flat);
                total += 1;
            }
        }
    }
    let share = uniform as f64 / total as f64;
    assert!(share > 0.85, "uniform share {share}");
}

#[test]
fn palette_colours_are_distinct() {
    for (i, a) in SHAPE_COLOURS.iter().enumerate() {
        for b in &SHAPE_COLOURS[i + 1..] {
            let d2: i32 = (0..3)
                .map(|c| (i32::from(a.rgb[c]) - i32::from(b.rgb[c])).pow(2))
                .sum();
            assert!(d2 >= 90 * 90, "{} and {} too close", a.name, b.name);
        }
        for bg in shapes::BACKGROUND_COLOURS {
            let d2: i32 = (0..3)
                .map(|c| (i32::from(a.rgb[c]) - i32::from(bg.rgb[c])).pow(2))
                .sum();
            assert!(d2 >= 90 * 90, "{} on {} too close", a.name, bg.name);
        }
    }
}

#[test]
fn a_224_sample_renders_in_milliseconds() {
    let start = std::time::Instant::now();
    for index in 0..50 {
        std::hint::black_box(shapes::train_sample(9, index, 224));
    }
    let per_sample = start.elapsed().as_secs_f64() / 50.0;
    // Generous for debug builds on a busy 2-core machine; release is well under 1 ms at 64.
    assert!(per_sample < 0.05, "{per_sample} s per 224 sample");
}
