//! Learning-rate schedules as OpenCLIP's `scheduler.py` (M2: linear warm-up, then cosine).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrScheduler {
    Cosine,
    Const,
}

impl LrScheduler {
    /// The `--lr-scheduler` value, as `parse` reads it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::Const => "const",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "cosine" => Ok(Self::Cosine),
            "const" => Ok(Self::Const),
            other => Err(format!(
                "--lr-scheduler: unknown schedule '{other}' (cosine or const)"
            )),
        }
    }
}

/// The learning rate at optimizer step `step` (0-based) of `total_steps`.
pub fn learning_rate(
    kind: LrScheduler,
    base_lr: f32,
    warmup: u64,
    total_steps: u64,
    step: u64,
) -> f32 {
    if step < warmup {
        return base_lr * (step + 1) as f32 / warmup as f32;
    }
    match kind {
        LrScheduler::Const => base_lr,
        LrScheduler::Cosine => {
            let e = (step - warmup) as f64;
            let es = total_steps.saturating_sub(warmup).max(1) as f64;
            (0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * base_lr as f64) as f32
        }
    }
}
