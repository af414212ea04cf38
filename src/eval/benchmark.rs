//! CLIP_benchmark's files: the results JSON `clip_benchmark eval --output` writes
//! (`{"dataset", "model", "pretrained", "task", "metrics", "language"}`, read by its `build`
//! command), and its classnames and zero-shot templates files (a JSON object from dataset name
//! to a list, as `--custom_classname_file` / `--custom_template_file` take; templates fill
//! `{c}`).

use std::path::Path;

/// CLIP_benchmark's name of an `eval --task`.
pub fn task_name(task: &str) -> &'static str {
    match task {
        "zeroshot" | "zeroshot_classification" => "zeroshot_classification",
        "retrieval" | "zeroshot_retrieval" => "zeroshot_retrieval",
        _ => "linear_probe",
    }
}

/// The fields of one results file.
pub struct BenchmarkRecord<'a> {
    pub dataset: &'a str,
    pub model: &'a str,
    pub pretrained: &'a str,
    /// CLIP_benchmark's task name ([`task_name`]).
    pub task: &'a str,
    pub language: &'a str,
}

impl BenchmarkRecord<'_> {
    pub fn json(&self, metrics: &serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "dataset": self.dataset,
            "model": self.model,
            "pretrained": self.pretrained,
            "task": self.task,
            "metrics": metrics,
            "language": self.language,
        })
    }

    /// `--output` with CLIP_benchmark's placeholders filled: `{dataset}` and `{pretrained}`
    /// with '/' as '_' (its slugs; `pretrained` is the file name of a path), `{model}`,
    /// `{task}`, `{language}`.
    pub fn output_path(&self, template: &str) -> String {
        let pretrained = Path::new(self.pretrained)
            .file_name()
            .map_or(self.pretrained.to_string(), |n| {
                n.to_string_lossy().into_owned()
            });
        template
            .replace("{dataset}", &self.dataset.replace('/', "_"))
            .replace("{model}", self.model)
            .replace("{pretrained_full_path}", &self.pretrained.replace('/', "_"))
            .replace("{pretrained}", &pretrained)
            .replace("{task}", self.task)
            .replace("{language}", self.language)
    }
}

/// The list for `dataset` in a CLIP_benchmark classnames or templates file: the object's entry
/// for `dataset`, its only entry, or the file itself when it is a bare list. `flag` names the
/// file in errors.
pub fn read_list_file(path: &Path, dataset: &str, flag: &str) -> Result<Vec<String>, String> {
    let at = || format!("{flag} {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", at()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON ({e})", at()))?;
    let list = match &json {
        serde_json::Value::Array(_) => &json,
        serde_json::Value::Object(map) => match (map.get(dataset), map.len()) {
            (Some(list), _) => list,
            (None, 1) => map.values().next().expect("one entry"),
            (None, _) => {
                let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                return Err(format!(
                    "{}: no entry '{dataset}' (--dataset-name) among {}",
                    at(),
                    keys.join(", ")
                ));
            }
        },
        _ => return Err(format!("{}: expected a JSON object or list", at())),
    };
    let items = list.as_array().ok_or_else(|| {
        format!(
            "{}: the entry is not a list (class-specific templates, as CuPL's, are not supported)",
            at()
        )
    })?;
    let strings = items
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| format!("{}: the list holds a non-string", at()))?;
    if strings.is_empty() {
        return Err(format!("{}: the list is empty", at()));
    }
    Ok(strings)
}

/// CLIP_benchmark's templates (`{c}` for the class) in this crate's form (`{}`); a template
/// without `{c}` is refused, as it would give every class the same prompt.
pub fn templates_from_benchmark(
    templates: Vec<String>,
    path: &Path,
) -> Result<Vec<String>, String> {
    templates
        .into_iter()
        .map(|t| {
            if t.contains("{c}") {
                Ok(t.replace("{c}", "{}"))
            } else {
                Err(format!(
                    "--templates {}: template '{t}' has no {{c}} for the class name",
                    path.display()
                ))
            }
        })
        .collect()
}
