//! The linear probe (M6): its metrics against brute force, its fit against the optimality
//! condition of the penalised objective, a separable case, and `clusterclip eval --task
//! linear_probe` end to end on a tiny model with its one-line errors.

mod common;

use std::collections::HashMap;

use clusterclip::Backend;
use clusterclip::eval::linear_probe::{
    LabelledFeatures, LinearProbe, ProbeOptions, choose_weight_decay, linear_probe,
    weight_decay_grid,
};
use common::Rng;
use common::cli::{clusterclip, error_line, stderr, temp_dir};
use common::data::{colour_folder, tiny_checkpoint};

/// (acc1, acc5, mean per-class recall) by enumeration: sort the classes by logit, a tie placing
/// the true class last, and look for it among the first k; recall averaged over the classes
/// that occur.
fn brute_force_metrics(logits: &[Vec<f64>], labels: &[usize]) -> (f64, f64, f64) {
    let mut hits = [0usize; 2];
    let mut per_class: HashMap<usize, (usize, usize)> = HashMap::new();
    for (row, &label) in logits.iter().zip(labels) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| {
            row[b]
                .total_cmp(&row[a])
                .then((a == label).cmp(&(b == label)))
        });
        let top1 = order[0] == label;
        hits[0] += usize::from(top1);
        hits[1] += usize::from(order.iter().take(5).any(|&c| c == label));
        let entry = per_class.entry(label).or_default();
        entry.0 += usize::from(top1);
        entry.1 += 1;
    }
    let n = labels.len() as f64;
    let recall: f64 = per_class
        .values()
        .map(|&(hit, total)| hit as f64 / total as f64)
        .sum::<f64>()
        / per_class.len() as f64;
    (hits[0] as f64 / n, hits[1] as f64 / n, recall)
}

fn probe_logits(probe: &LinearProbe, features: &[f32]) -> Vec<Vec<f64>> {
    features
        .chunks(probe.dim)
        .map(|x| {
            (0..probe.classes())
                .map(|c| {
                    probe.bias[c]
                        + probe.weights[c * probe.dim..(c + 1) * probe.dim]
                            .iter()
                            .zip(x)
                            .map(|(w, x)| w * *x as f64)
                            .sum::<f64>()
                })
                .collect()
        })
        .collect()
}

/// Six rows scored by an identity probe, so each row is its own logits: hits at ranks 0, 5, 4,
/// 0, 5 (a tie counts against the true class) and 0; class 3 never occurs.
#[test]
fn hand_made_case_scores_as_brute_force_and_by_hand() {
    let rows: [([f32; 6], usize); 6] = [
        ([5.0, 4.0, 3.0, 2.0, 1.0, 0.0], 0),
        ([5.0, 4.0, 3.0, 2.0, 1.0, 0.0], 5),
        ([5.0, 4.0, 3.0, 2.0, 1.0, 0.0], 4),
        ([0.0, 9.0, 0.0, 0.0, 0.0, 0.0], 1),
        ([9.0, 0.0, 0.0, 0.0, 0.0, 0.0], 1),
        ([0.0, 0.0, 1.0, 0.0, 0.0, 0.0], 2),
    ];
    let features: Vec<f32> = rows.iter().flat_map(|(x, _)| *x).collect();
    let labels: Vec<usize> = rows.iter().map(|(_, y)| *y).collect();
    let probe = LinearProbe {
        weights: (0..36).map(|i| f64::from(i % 7 == 0)).collect(),
        bias: vec![0.0; 6],
        dim: 6,
        weight_decay: 0.0,
    };
    let data = LabelledFeatures {
        features: &features,
        labels: &labels,
        dim: 6,
        classes: 6,
    };
    let m = probe.evaluate(&data).unwrap();
    // By hand: top-1 rows 0, 3, 5; top-5 also row 2; recalls 1, 1/2, 1, 0, 0 over 5 classes.
    assert_eq!(
        (m.acc1, m.acc5, m.mean_per_class_recall),
        (0.5, 4.0 / 6.0, 0.5)
    );
    let brute = brute_force_metrics(&probe_logits(&probe, &features), &labels);
    assert_eq!((m.acc1, m.acc5, m.mean_per_class_recall), brute);
}

/// A random probe with a bias on random features: the same three numbers as enumeration.
#[test]
fn random_probe_scores_as_brute_force() {
    let (rows, dim, classes) = (53, 7, 9);
    let mut rng = Rng::new(11);
    let probe = LinearProbe {
        weights: rng.vec(classes * dim).into_iter().map(f64::from).collect(),
        bias: rng.vec(classes).into_iter().map(f64::from).collect(),
        dim,
        weight_decay: 0.0,
    };
    let features = rng.vec(rows * dim);
    // Classes 0..7 only, so the per-class mean skips two absent classes.
    let labels: Vec<usize> = (0..rows).map(|_| rng.below(7) as usize).collect();
    let data = LabelledFeatures {
        features: &features,
        labels: &labels,
        dim,
        classes,
    };
    let m = probe.evaluate(&data).unwrap();
    let (acc1, acc5, recall) = brute_force_metrics(&probe_logits(&probe, &features), &labels);
    assert_eq!(m.acc1, acc1);
    assert_eq!(m.acc5, acc5);
    assert!((m.mean_per_class_recall - recall).abs() < 1e-12);
    assert!(acc1 > 0.0 && acc5 < 1.0, "a case that tests something");
}

/// Seeded uniform features [rows, dim] in [-1, 1) and labels unrelated to them.
fn noise(rows: usize, dim: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let features = rng.vec(rows * dim);
    let labels = (0..rows)
        .map(|_| rng.below(classes as u32) as usize)
        .collect();
    (features, labels)
}

/// The fit is the minimum of mean cross-entropy + λ/2 ‖W‖²: its gradient, recomputed here in
/// f64, vanishes (to the solver's 1e-5 plus f32 rounding of the features' products).
#[test]
fn fit_reaches_the_penalised_optimum() {
    let (rows, dim, classes) = (90, 6, 4);
    let (features, labels) = noise(rows, dim, classes, 5);
    let data = LabelledFeatures {
        features: &features,
        labels: &labels,
        dim,
        classes,
    };
    for weight_decay in [1e-3, 1e-1] {
        let probe = LinearProbe::fit(&data, weight_decay, &ProbeOptions::default()).unwrap();
        let logits = probe_logits(&probe, &features);
        let mut grad = vec![0f64; classes * (dim + 1)];
        for ((z, x), &y) in logits.iter().zip(features.chunks(dim)).zip(&labels) {
            let total: f64 = z.iter().map(|v| v.exp()).sum();
            for c in 0..classes {
                let residual = z[c].exp() / total - f64::from(c == y);
                for k in 0..dim {
                    grad[c * dim + k] += residual * x[k] as f64 / rows as f64;
                }
                grad[classes * dim + c] += residual / rows as f64;
            }
        }
        for (g, w) in grad.iter_mut().zip(&probe.weights) {
            *g += weight_decay * w;
        }
        let largest = grad.iter().fold(0f64, |m, g| m.max(g.abs()));
        assert!(largest < 2e-5, "λ {weight_decay}: gradient {largest:e}");
        // Not the trivial optimum: the data moved the weights.
        assert!(probe.weights.iter().any(|w| w.abs() > 1e-2));
    }
}

/// Features that are a fixed random linear map of the one-hot label (then L2-normalised, as
/// eval's are) are separable: the whole probe, weight decay search included, scores 100%.
#[test]
fn features_linear_in_the_one_hot_label_give_full_accuracy() {
    let (dim, classes) = (16, 10);
    let mut rng = Rng::new(3);
    let map = rng.vec(classes * dim);
    let make = |rows: usize| {
        let labels: Vec<usize> = (0..rows).map(|i| (i * 7) % classes).collect();
        let mut features: Vec<f32> = labels
            .iter()
            .flat_map(|&y| map[y * dim..(y + 1) * dim].to_vec())
            .collect();
        clusterclip::eval::normalize_rows(&mut features, dim);
        (features, labels)
    };
    let (train_x, train_y) = make(60);
    let (test_x, test_y) = make(30);
    let train = LabelledFeatures {
        features: &train_x,
        labels: &train_y,
        dim,
        classes,
    };
    let test = LabelledFeatures {
        features: &test_x,
        labels: &test_y,
        ..train
    };
    let result = linear_probe(&train, &test, &ProbeOptions::default()).unwrap();
    let m = &result.metrics;
    assert_eq!((m.acc1, m.acc5, m.mean_per_class_recall), (1.0, 1.0, 1.0));
    assert!(weight_decay_grid().contains(&result.weight_decay));
    // 7 coarse fits, then at most 2 new ones at each of the spans 8, 4, 2, 1.
    assert!(
        (7..=15).contains(&result.search.len()),
        "{:?}",
        result.search
    );
}

/// The search starts on CLIP_benchmark's 7 coarse points and repeats exactly for one seed;
/// another seed holds out other rows.
#[test]
fn weight_decay_search_is_seeded_and_deterministic() {
    let (rows, dim, classes) = (80, 8, 3);
    let (features, labels) = noise(rows, dim, classes, 9);
    let data = LabelledFeatures {
        features: &features,
        labels: &labels,
        dim,
        classes,
    };
    let options = |seed| ProbeOptions {
        seed,
        ..ProbeOptions::default()
    };
    let first = choose_weight_decay(&data, &options(1)).unwrap();
    let again = choose_weight_decay(&data, &options(1)).unwrap();
    let other = choose_weight_decay(&data, &options(2)).unwrap();
    assert_eq!(first, again);
    assert_ne!(first.1, other.1, "another seed holds out other rows");
    let grid = weight_decay_grid();
    let coarse: Vec<f64> = first.1.iter().take(7).map(|&(wd, _)| wd).collect();
    let expected: Vec<f64> = (0..7).map(|i| grid[16 * i]).collect();
    assert_eq!(coarse, expected, "CLIP_benchmark's coarse grid first");
}

/// A NaN feature is refused with the image it came from, not fitted.
#[test]
fn non_finite_features_are_refused() {
    let mut features = vec![0.5f32; 4 * 3];
    features[7] = f32::NAN;
    let labels = [0, 1, 0, 1];
    let data = LabelledFeatures {
        features: &features,
        labels: &labels,
        dim: 3,
        classes: 2,
    };
    let err = LinearProbe::fit(&data, 1e-2, &ProbeOptions::default()).unwrap_err();
    assert_eq!(err.to_string(), "image 2: its features are not finite");
}

// ---- `clusterclip eval --task linear_probe` ----

#[test]
fn eval_linear_probe_separates_colours_and_refuses_unlabelled_sets() {
    let dir = temp_dir("linear-probe");
    let checkpoint = dir.join("tiny.safetensors");
    tiny_checkpoint(&checkpoint);
    let mut rng = Rng::new(1);
    let colours = [
        ("blue", [20, 40, 200]),
        ("green", [30, 190, 40]),
        ("red", [200, 30, 20]),
    ];
    colour_folder(&dir.join("train"), &colours, 8, &mut rng);
    colour_folder(&dir.join("test"), &colours, 4, &mut rng);
    let spec = |name: &str| format!("imagefolder:{}", dir.join(name).display());
    let (ck, train, test) = (checkpoint.to_str().unwrap(), spec("train"), spec("test"));
    let args = |train: &str, test: &str| {
        [
            "eval",
            "--cpu",
            "--checkpoint",
            ck,
            "--task",
            "linear_probe",
            "--json",
            "--train-data",
            train,
            "--data",
            test,
        ]
        .map(str::to_string)
    };
    let run = |args: &[String]| clusterclip(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(&args(&train, &test));
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["acc1", "acc5", "mean_per_class_recall"] {
        assert_eq!(json[key].as_f64(), Some(1.0), "{key} in {json}");
    }
    let wd = json["weight_decay"].as_f64().unwrap();
    assert!(weight_decay_grid().contains(&wd), "{wd}");

    // A captions CSV has no labels: one line naming the flag and the file.
    let csv = dir.join("captions.csv");
    std::fs::write(&csv, "filepath\ttitle\ntrain/red/0.png\ta red square\n").unwrap();
    let csv = csv.to_str().unwrap().to_string();
    let line = error_line(&run(&args(&train, &csv)));
    assert!(
        line.starts_with("error: --data: ")
            && line.contains(&csv)
            && line.contains("no class labels"),
        "{line}"
    );
    let line = error_line(&run(&args(&csv, &test)));
    assert!(
        line.starts_with("error: --train-data: ") && line.contains(&csv),
        "{line}"
    );

    // A test class the probe never saw.
    colour_folder(
        &dir.join("test"),
        &[("violet", [150, 20, 200])],
        1,
        &mut rng,
    );
    let line = error_line(&run(&args(&train, &test)));
    assert!(
        line.starts_with("error: --data: ") && line.contains("class 'violet'"),
        "{line}"
    );

    // Flags out of place fail before the checkpoint is read.
    let line = error_line(&clusterclip(&[
        "eval",
        "--checkpoint",
        ck,
        "--task",
        "linear_probe",
        "--data",
        &test,
    ]));
    assert!(line.starts_with("error: --train-data: "), "{line}");
    let line = error_line(&clusterclip(&[
        "eval",
        "--checkpoint",
        ck,
        "--train-data",
        &train,
    ]));
    assert!(line.starts_with("error: --train-data is only"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `eval --output` writes CLIP_benchmark's results layout; `--classnames` and `--templates` in
/// its formats replace the folder names and the default prompts (dumped back as it does).
#[test]
fn eval_output_is_clip_benchmarks_layout_with_its_classnames_and_templates() {
    use clusterclip::data::loader::ReadOptions;
    use clusterclip::eval::tasks::{zeroshot_eval, zeroshot_set};
    let dir = temp_dir("benchmark-output");
    let checkpoint = dir.join("tiny.safetensors");
    tiny_checkpoint(&checkpoint);
    let mut rng = Rng::new(3);
    let colours = [
        ("blue", [20, 40, 200]),
        ("green", [30, 190, 40]),
        ("red", [200, 30, 20]),
    ];
    colour_folder(&dir.join("colours"), &colours, 4, &mut rng);
    let spec = format!("imagefolder:{}", dir.join("colours").display());
    let names = ["deep sea", "fresh grass", "fire truck"];
    let classnames = dir.join("classnames.json");
    let json = serde_json::json!({"colours": names, "cifar10": ["a", "b"]});
    std::fs::write(&classnames, json.to_string()).unwrap();
    let templates = dir.join("templates.json");
    let json = serde_json::json!({"colours": ["a photo of {c}.", "a {c} in the dark."]});
    std::fs::write(&templates, json.to_string()).unwrap();
    let output = dir.join("{dataset}_{model}_{task}_{language}.json");
    let ck = checkpoint.to_str().unwrap();
    let args = [
        "eval",
        "--cpu",
        "--checkpoint",
        ck,
        "--task",
        "zeroshot_classification",
        "--data",
        &spec,
        "--dataset-name",
        "colours",
        "--classnames",
        classnames.to_str().unwrap(),
        "--templates",
        templates.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--dump-classnames",
        "--dump-templates",
    ];
    let out = clusterclip(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let written = dir.join("colours_custom_zeroshot_classification_en.json");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&written).unwrap()).unwrap();
    let keys: Vec<&str> = result
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "classnames",
            "dataset",
            "language",
            "metrics",
            "model",
            "pretrained",
            "task",
            "templates"
        ]
    );
    assert_eq!(result["dataset"], "colours");
    assert_eq!(result["model"], "custom");
    assert_eq!(result["pretrained"], ck);
    assert_eq!(result["task"], "zeroshot_classification");
    assert_eq!(result["language"], "en");
    assert_eq!(result["classnames"], serde_json::json!(names));
    assert_eq!(
        result["templates"],
        serde_json::json!(["a photo of {c}.", "a {c} in the dark."])
    );
    // The metrics are those of the library with the same names and prompts.
    let clip = clusterclip::train::checkpoint::load_model(&checkpoint, None)
        .unwrap()
        .model(&Backend::Cpu);
    let mut set = zeroshot_set(&spec, &clip, None, &ReadOptions::default()).unwrap();
    set.classes = names.map(str::to_string).to_vec();
    set.templates = vec!["a photo of {}.".into(), "a {} in the dark.".into()];
    let m = zeroshot_eval(&clip, &set, 64).unwrap();
    assert_eq!(
        result["metrics"],
        serde_json::json!({"acc1": m.acc1, "acc5": m.acc5, "mean_per_class_recall": m.mean_per_class_recall})
    );
    // Names that do not fit the folders, and templates without {c}, are one line each.
    let short = dir.join("short.json");
    std::fs::write(&short, r#"["deep sea", "fresh grass"]"#).unwrap();
    let mut bad = args.map(str::to_string).to_vec();
    let at = bad.iter().position(|a| a == "--classnames").unwrap() + 1;
    bad[at] = short.display().to_string();
    let bad_refs: Vec<&str> = bad.iter().map(String::as_str).collect();
    assert_eq!(
        error_line(&clusterclip(&bad_refs)),
        format!(
            "error: --classnames {}: 2 names for the 3 classes of {spec}",
            short.display()
        )
    );
    std::fs::write(&short, r#"{"colours": ["a photo."]}"#).unwrap();
    let mut bad = args.map(str::to_string).to_vec();
    let at = bad.iter().position(|a| a == "--templates").unwrap() + 1;
    bad[at] = short.display().to_string();
    let bad_refs: Vec<&str> = bad.iter().map(String::as_str).collect();
    assert_eq!(
        error_line(&clusterclip(&bad_refs)),
        format!(
            "error: --templates {}: template 'a photo.' has no {{c}} for the class name",
            short.display()
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Retrieval with several captions per image (a TSV that repeats a filepath): the CLI's
/// metrics equal a brute-force count over the features, where an image scores a hit at k when
/// any of its captions is among its k best texts, and a caption when its image is.
#[test]
fn retrieval_with_several_captions_per_image_matches_a_brute_force_count() {
    use clusterclip::data::loader::ReadOptions;
    use clusterclip::eval::tasks::caption_set;
    use clusterclip::eval::{encode_images, encode_texts};
    let dir = temp_dir("multi-caption");
    let checkpoint = dir.join("tiny.safetensors");
    tiny_checkpoint(&checkpoint);
    let mut rng = Rng::new(9);
    let colours: Vec<(String, [u8; 3])> = (0..6)
        .map(|i| (format!("c{i}"), [40 * i as u8, 200 - 30 * i as u8, 90]))
        .collect();
    let named: Vec<(&str, [u8; 3])> = colours.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    colour_folder(&dir.join("images"), &named, 1, &mut rng);
    // 14 captions over 6 images, interleaved: the image of caption j is `owner[j]`.
    let owner = [0usize, 1, 0, 2, 3, 1, 4, 5, 2, 0, 3, 5, 4, 1];
    let words = ["a", "small", "bright", "dark", "round", "pale", "soft"];
    let mut tsv = String::from("filepath\ttitle\n");
    for (j, &i) in owner.iter().enumerate() {
        let caption = format!("{} {} thing {j}", words[j % 7], words[(j * 3 + i) % 7]);
        tsv += &format!("images/c{i}/0.png\t{caption}\n");
    }
    let captions = dir.join("captions.tsv");
    std::fs::write(&captions, tsv).unwrap();
    let out = clusterclip(&[
        "eval",
        "--cpu",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--task",
        "retrieval",
        "--data",
        captions.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let metrics: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();

    // Brute force: features of the 14 records, grouped by the owner list written above.
    let clip = clusterclip::train::checkpoint::load_model(&checkpoint, None)
        .unwrap()
        .model(&Backend::Cpu);
    let set = caption_set(
        captions.to_str().unwrap(),
        &clip,
        None,
        &ReadOptions::default(),
    )
    .unwrap();
    let features = set.encode(&clip, 8).unwrap();
    assert_eq!((features.captions(), features.images()), (14, 6));
    let first_seen: Vec<usize> = {
        let mut order = Vec::new();
        for &i in &owner {
            if !order.contains(&i) {
                order.push(i);
            }
        }
        order
    };
    let expected_map: Vec<usize> = owner
        .iter()
        .map(|i| first_seen.iter().position(|f| f == i).unwrap())
        .collect();
    assert_eq!(features.text_image, expected_map);
    // Streamed features are those of the records encoded whole.
    let (mut images, mut tokens) = (Vec::new(), Vec::new());
    set.for_each_batch(5, &mut |batch| {
        images.extend_from_slice(&batch.images);
        tokens.extend_from_slice(&batch.tokens);
        Ok(())
    })
    .unwrap();
    let dim = clip.config.embed_dim;
    let record_image = encode_images(&clip, &images, 8).unwrap();
    let text = encode_texts(&clip, &tokens, 8).unwrap();
    assert_eq!(features.text, text);
    for (j, &i) in features.text_image.iter().enumerate() {
        let streamed = &features.image[i * dim..(i + 1) * dim];
        let whole = &record_image[j * dim..(j + 1) * dim];
        let gap = streamed
            .iter()
            .zip(whole)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            gap < 1e-6,
            "caption {j}: its image's features differ by {gap}"
        );
    }
    let image = features.image;
    let score = |i: usize, j: usize| -> f64 {
        (0..dim)
            .map(|d| image[i * dim + d] as f64 * text[j * dim + d] as f64)
            .sum()
    };
    for k in [1usize, 5, 10] {
        let text_hits = (0..6)
            .filter(|&i| {
                let mut order: Vec<usize> = (0..14).collect();
                order.sort_by(|&a, &b| score(i, b).total_cmp(&score(i, a)));
                order[..k].iter().any(|&j| expected_map[j] == i)
            })
            .count();
        let image_hits = (0..14)
            .filter(|&j| {
                let mut order: Vec<usize> = (0..6).collect();
                order.sort_by(|&a, &b| score(b, j).total_cmp(&score(a, j)));
                order[..k.min(6)].contains(&expected_map[j])
            })
            .count();
        let got = |key: String| metrics[&key].as_f64().unwrap();
        assert_eq!(
            got(format!("text_retrieval_recall@{k}")),
            text_hits as f64 / 6.0,
            "image->text R@{k}"
        );
        assert_eq!(
            got(format!("image_retrieval_recall@{k}")),
            image_hits as f64 / 14.0,
            "text->image R@{k}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
