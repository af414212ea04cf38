//! Zero-shot class prompts for real data (M6): class text embeddings are averaged over these
//! templates. The first is CLIP's plain prompt; the other seven are OpenCLIP's
//! `SIMPLE_IMAGENET_TEMPLATES`, the subset CLIP's authors found to do as well as all 80.

pub const ZERO_SHOT_TEMPLATES: &[&str] = &[
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
];

/// Every template filled with `class_name`.
pub fn class_prompts(class_name: &str) -> Vec<String> {
    ZERO_SHOT_TEMPLATES
        .iter()
        .map(|template| template.replace("{}", class_name))
        .collect()
}

/// An image-folder name as a class name: `_` read as a space ("ankle_boot" -> "ankle boot").
pub fn class_name_from_folder(folder: &str) -> String {
    folder.replace('_', " ")
}
