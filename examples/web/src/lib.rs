//! clusterclip in a browser tab (issue 12): the library's own WGSL kernels, model and tokenizer,
//! compiled to wasm32 and run on the browser's WebGPU. Three panels: the cluster mask of the
//! training kernels over an image (M3) beside random masking (M4), zero-shot ranking with a
//! checkpoint, and pre-training on built-in shapes. The page's JavaScript only wires its
//! controls to the exports of [`Demo`]; every number comes from here.
//!
//! Every export that touches the GPU returns a Promise: reads are `map_async` futures, awaited
//! on the browser's event loop (a blocking read would hang the tab). Results go out as JSON
//! strings; errors as one line naming what was wrong.
#![cfg(target_arch = "wasm32")]

mod draw;
mod image_source;
mod mask_panel;
mod train_panel;
mod weights;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use clusterclip::gpu::{BackendChoice, Gpu, GpuOptions};
use clusterclip::graph::Backend;
use clusterclip::model::Clip;

use image_source::SourceImage;
use train_panel::{TrainSession, TrainSettings};

/// Id of the page element that shows errors and panics.
const ERROR_ELEMENT: &str = "error";

/// A panic shows on the page and in the console (the test fails on either), instead of an
/// `unreachable` trap that leaves a dead page.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        let message = format!("clusterclip panicked: {info}");
        web_sys::console::error_1(&message.as_str().into());
        if let Some(element) = document().and_then(|d| d.get_element_by_id(ERROR_ELEMENT)) {
            element.set_text_content(Some(&message));
        }
    }));
}

fn document() -> Option<web_sys::Document> {
    web_sys::window()?.document()
}

/// A JavaScript Error holding one line.
fn js_error(message: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&message.to_string()).into()
}

/// Milliseconds since the page opened (`performance.now()`; `std::time::Instant` panics here).
fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now())
}

/// What the page holds between calls. Futures clone what they need out of it before awaiting,
/// so no borrow lives across an await.
struct State {
    gpu: Arc<Gpu>,
    image: SourceImage,
    /// The Zero-shot panel's model (a loaded or the shipped checkpoint).
    zero_shot: Option<Rc<Clip>>,
    /// The Train panel's run; taken out while a step runs.
    training: Option<TrainSession>,
    training_busy: bool,
}

/// The demo: one WebGPU device and the three panels' state.
#[wasm_bindgen]
pub struct Demo {
    state: Rc<RefCell<State>>,
}

#[wasm_bindgen]
impl Demo {
    /// Opens WebGPU with its default limits; without WebGPU the error says what to enable.
    pub fn open() -> js_sys::Promise {
        future_to_promise(async {
            let has_webgpu = web_sys::window()
                .map(|w| w.navigator())
                .and_then(|n| js_sys::Reflect::get(&n, &"gpu".into()).ok())
                .is_some_and(|gpu| !gpu.is_undefined() && !gpu.is_null());
            if !has_webgpu {
                return Err(js_error(
                    "this browser offers no WebGPU (navigator.gpu is missing): use Chrome or Edge \
                     113+ over https or localhost, or enable it (chrome://flags/#enable-unsafe-webgpu, \
                     Firefox: dom.webgpu.enabled, Safari: Develop > Feature Flags > WebGPU)",
                ));
            }
            let options = GpuOptions {
                backend: BackendChoice::BrowserWebGpu,
                ..GpuOptions::default()
            };
            let gpu = Gpu::new_async(&options).await.map_err(|e| {
                js_error(format!(
                    "WebGPU is present but gave no device ({e}); on a machine without a GPU start \
                     Chrome with --enable-unsafe-webgpu --use-webgpu-adapter=swiftshader"
                ))
            })?;
            let state = State {
                gpu,
                image: SourceImage::shapes(0),
                zero_shot: None,
                training: None,
                training_busy: false,
            };
            Ok(Demo {
                state: Rc::new(RefCell::new(state)),
            }
            .into())
        })
    }

    /// The adapter and the limits the device was opened with, as JSON.
    pub fn device_json(&self) -> String {
        let state = self.state.borrow();
        let limits = state.gpu.device.limits();
        serde_json::json!({
            "adapter": state.gpu.describe(),
            "max_storage_buffer_binding_size": limits.max_storage_buffer_binding_size,
            "max_buffer_size": limits.max_buffer_size,
            "max_compute_workgroup_storage_size": limits.max_compute_workgroup_storage_size,
            "max_compute_invocations_per_workgroup": limits.max_compute_invocations_per_workgroup,
            "max_storage_buffers_per_shader_stage": limits.max_storage_buffers_per_shader_stage,
        })
        .to_string()
    }

    /// Makes built-in shapes image `index` (the test split) the current image; returns its caption.
    pub fn use_shapes_image(&self, index: u32) -> String {
        let image = SourceImage::shapes(index as u64);
        let caption = image.description();
        self.state.borrow_mut().image = image;
        caption
    }

    /// Makes a dropped or picked file the current image; a file that is not an image is refused
    /// with its name and the decoder's reason, and the previous image stays.
    pub fn use_image_file(&self, bytes: &[u8], name: &str) -> Result<String, JsValue> {
        let image = SourceImage::decode(bytes, name).map_err(js_error)?;
        let description = image.description();
        self.state.borrow_mut().image = image;
        Ok(description)
    }

    /// Draws the current image as the zero-shot model sees it (64 px before one is loaded)
    /// into canvas `id`.
    pub fn draw_current_image(&self, id: &str) -> Result<(), JsValue> {
        let state = self.state.borrow();
        let size = state
            .zero_shot
            .as_ref()
            .map_or(64, |clip| clip.config.vision.image_size);
        let rgba = image_source::picture_rgba(&state.image.normalised(size), size);
        draw::picture(id, &rgba, size, size, None).map_err(js_error)
    }

    /// Cluster mask of the current image at `size` px with `patch` px patches, from the training
    /// kernels, drawn over it, and random masking at the same keep count beside it (M7). Returns
    /// the mask as JSON (the fields of `clusterclip mask --json`, plus `random_kept`).
    #[allow(clippy::too_many_arguments)]
    pub fn mask(
        &self,
        size: u32,
        patch: u32,
        threshold: f64,
        anchor_ratio: f64,
        min_mask_ratio: f64,
        max_mask_ratio: f64,
        seed: f64,
        features: String,
    ) -> js_sys::Promise {
        let (gpu, image) = {
            let state = self.state.borrow();
            (state.gpu.clone(), state.image.clone())
        };
        let settings = mask_panel::MaskSettings {
            size: size as usize,
            patch: patch as usize,
            threshold,
            anchor_ratio,
            min_mask_ratio,
            max_mask_ratio,
            seed: seed as u64,
            features,
        };
        future_to_promise(async move {
            mask_panel::run(&gpu, &image, &settings)
                .await
                .map(|json| json.into())
                .map_err(js_error)
        })
    }

    /// Loads safetensors weights for the Zero-shot panel; returns a description of the model.
    pub fn load_weights(&self, bytes: &[u8], name: &str) -> Result<String, JsValue> {
        let backend = Backend::Gpu(self.state.borrow().gpu.clone());
        let clip = weights::read(bytes, name, &backend).map_err(js_error)?;
        let description = weights::describe(&clip.config, name);
        self.state.borrow_mut().zero_shot = Some(Rc::new(clip));
        Ok(description)
    }

    /// Ranks `classes` (comma- or line-separated) against the current image with the loaded
    /// weights (prompt-ensembled over the built-in templates); JSON, best first.
    pub fn zero_shot(&self, classes: String) -> js_sys::Promise {
        let (clip, image) = {
            let state = self.state.borrow();
            (state.zero_shot.clone(), state.image.clone())
        };
        future_to_promise(async move {
            let clip = clip.ok_or_else(|| js_error("load a checkpoint first"))?;
            weights::zero_shot(&clip, &image, &classes)
                .await
                .map(|json| json.into())
                .map_err(js_error)
        })
    }

    /// Normalised features of the current image and of each text in the JSON list `texts`
    /// (`{"image_features": [[..]], "text_features": [[..], ..]}`, as `clusterclip embed`).
    pub fn features(&self, texts: String) -> js_sys::Promise {
        let (clip, image) = {
            let state = self.state.borrow();
            (state.zero_shot.clone(), state.image.clone())
        };
        future_to_promise(async move {
            let clip = clip.ok_or_else(|| js_error("load a checkpoint first"))?;
            let texts: Vec<String> = serde_json::from_str(&texts)
                .map_err(|e| js_error(format!("texts: not a JSON list of strings ({e})")))?;
            weights::features_json(&clip, &image, &texts)
                .await
                .map(|json| json.into())
                .map_err(js_error)
        })
    }

    /// Starts a new training run (replacing any); returns its description.
    #[allow(clippy::too_many_arguments)]
    pub fn train_new(
        &self,
        preset: String,
        mask: String,
        batch_size: u32,
        epochs: u32,
        samples_per_epoch: u32,
        lr: f64,
        warmup: u32,
        seed: f64,
    ) -> Result<String, JsValue> {
        let mut state = self.state.borrow_mut();
        if state.training_busy {
            return Err(js_error("a training step is running; pause first"));
        }
        let settings = TrainSettings {
            preset,
            mask,
            batch_size: batch_size as usize,
            epochs: epochs as u64,
            samples_per_epoch: samples_per_epoch as u64,
            lr: lr as f32,
            warmup: warmup as u64,
            seed: seed as u64,
        };
        let session =
            TrainSession::new(settings, Backend::Gpu(state.gpu.clone())).map_err(js_error)?;
        let description = session.describe();
        state.training = Some(session);
        Ok(description)
    }

    /// One optimizer step of the current run (and the zero-shot evaluation when it ends an
    /// epoch); returns the step's report as JSON and redraws the loss curve.
    pub fn train_step(&self) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let mut session = {
                let mut s = state.borrow_mut();
                if s.training_busy {
                    return Err(js_error("a training step is already running"));
                }
                let session = s
                    .training
                    .take()
                    .ok_or_else(|| js_error("start a run first"))?;
                s.training_busy = true;
                session
            };
            let report = session.step().await;
            let mut s = state.borrow_mut();
            s.training = Some(session);
            s.training_busy = false;
            report.map(|json| json.into()).map_err(js_error)
        })
    }

    /// The current run's weights as a model-only safetensors state_dict (OpenCLIP names, the
    /// configuration in the metadata), which `clusterclip eval --checkpoint` reads.
    pub fn train_weights(&self) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let clip = {
                let s = state.borrow();
                if s.training_busy {
                    return Err(js_error("a training step is running; pause first"));
                }
                s.training
                    .as_ref()
                    .map(|t| t.clip())
                    .ok_or_else(|| js_error("start a run first"))?
            };
            let bytes = weights::state_dict(&clip).await.map_err(js_error)?;
            Ok(js_sys::Uint8Array::from(bytes.as_slice()).into())
        })
    }

    /// Uses the current run's weights in the Zero-shot panel.
    pub fn zero_shot_from_training(&self) -> Result<String, JsValue> {
        let mut s = self.state.borrow_mut();
        let clip = s
            .training
            .as_ref()
            .map(|t| Rc::new(t.clip()))
            .ok_or_else(|| js_error("start a run first"))?;
        let description = weights::describe(&clip.config, "the Train panel's run");
        s.zero_shot = Some(clip);
        Ok(description)
    }
}
