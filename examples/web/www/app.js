// The page's glue: it wires controls to the wasm exports of `Demo` (examples/web/src/lib.rs)
// and shows what they return. No model, tokenizer or shader lives here.
import init, { Demo } from "./pkg/clusterclip_web.js";

const $ = (id) => document.getElementById(id);
const showError = (e) => { $("error").textContent = String(e && e.message ? e.message : e); };
const clearError = () => { $("error").textContent = ""; };
// Unhandled rejections and errors reach the page (and the browser test) as one line.
window.addEventListener("error", (e) => showError(e.message));
window.addEventListener("unhandledrejection", (e) => showError(e.reason));

const SHAPES_IMAGES = 8;
const SHIPPED_WEIGHTS = "assets/shapes-nano.safetensors";

async function main() {
  await init();
  const demo = await Demo.open();
  window.demo = demo; // the browser test drives the same exports
  $("adapter").textContent = "WebGPU: " + JSON.parse(demo.device_json()).adapter;

  // ---- Mask ----
  for (let i = 0; i < SHAPES_IMAGES; i++) {
    $("shapes-index").add(new Option("shapes #" + i, String(i)));
  }
  const sliders = ["threshold", "anchor-ratio", "min-mask-ratio", "max-mask-ratio"];
  let pending = false, again = false;
  async function updateMask() {
    if (pending) { again = true; return; }
    pending = true;
    try {
      for (const id of sliders) $(id + "-value").textContent = $(id).value;
      const [size, patch] = $("geometry").value.split(",").map(Number);
      const mask = JSON.parse(await demo.mask(size, patch, +$("threshold").value,
        +$("anchor-ratio").value, +$("min-mask-ratio").value, +$("max-mask-ratio").value,
        +$("mask-seed").value, $("mask-features").value));
      $("cluster-ratio").textContent =
        `k = ${mask.keep_count} of ${mask.patches}, 1 − k/L = ${mask.mask_ratio.toFixed(3)}`;
      $("random-ratio").textContent =
        `k = ${mask.random_keep_count}, 1 − k/L = ${mask.random_mask_ratio.toFixed(3)}`;
      clearError();
    } catch (e) { showError(e); }
    pending = false;
    if (again) { again = false; updateMask(); }
  }
  async function imageChanged(description) {
    $("image-description").textContent = description;
    await updateMask();
    await drawZeroShotImage();
  }
  for (const id of [...sliders, "geometry", "mask-seed", "mask-features"]) {
    $(id).addEventListener("input", updateMask);
  }
  $("shapes-index").addEventListener("change",
    () => imageChanged(demo.use_shapes_image(+$("shapes-index").value)));
  async function useFile(file) {
    try {
      const bytes = new Uint8Array(await file.arrayBuffer());
      await imageChanged(demo.use_image_file(bytes, file.name));
    } catch (e) { showError(e); }
  }
  $("image-file").addEventListener("change", (e) => e.target.files[0] && useFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files[0]) useFile(e.dataTransfer.files[0]);
  });

  // ---- Zero-shot ----
  async function drawZeroShotImage() {
    try { await demo.draw_current_image("zs-image"); } catch (e) { showError(e); }
  }
  async function loadWeights(bytes, name) {
    try {
      $("model-description").textContent = demo.load_weights(bytes, name);
      clearError();
      await drawZeroShotImage();
      await rank();
    } catch (e) { showError(e); }
  }
  async function rank() {
    try {
      const rows = JSON.parse(await demo.zero_shot($("classes").value));
      $("ranking").innerHTML = "<tr><th>class</th><th>cosine</th><th>share</th></tr>";
      for (const r of rows) {
        const tr = $("ranking").insertRow();
        tr.insertCell().textContent = r.class;
        tr.insertCell().textContent = r.cosine.toFixed(3);
        tr.insertCell().textContent = (100 * r.probability).toFixed(1) + "%";
      }
      clearError();
    } catch (e) { showError(e); }
  }
  $("load-shipped").addEventListener("click", async () => {
    const response = await fetch(SHIPPED_WEIGHTS);
    if (!response.ok) { showError(`${SHIPPED_WEIGHTS}: ${response.status} ${response.statusText}`); return; }
    await loadWeights(new Uint8Array(await response.arrayBuffer()), SHIPPED_WEIGHTS);
  });
  $("weights-file").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (file) await loadWeights(new Uint8Array(await file.arrayBuffer()), file.name);
  });
  $("use-training").addEventListener("click", async () => {
    try { $("model-description").textContent = demo.zero_shot_from_training(); await rank(); }
    catch (e) { showError(e); }
  });
  $("rank").addEventListener("click", rank);

  // ---- Train ----
  let running = false;
  async function trainLoop() {
    while (running) {
      let report;
      try { report = JSON.parse(await demo.train_step()); } catch (e) { showError(e); break; }
      if (report.done && report.loss === undefined) break;
      $("train-step").textContent = `${report.step} / ${report.total_steps} (epoch ${report.epoch})`;
      $("train-loss-value").textContent = report.loss.toFixed(4);
      $("train-speed").textContent =
        `${report.images_per_second.toFixed(1)} (mean ${report.mean_images_per_second.toFixed(1)})`;
      $("train-mask-ratio").textContent = report.mask_ratio.toFixed(3);
      if (report.zero_shot_top1 !== null) {
        $("train-zeroshot").textContent = `${(100 * report.zero_shot_top1).toFixed(1)}% ` +
          `(epoch ${report.epoch}, ${report.zero_shot_images} images, 64 classes)`;
      }
      if (report.done) break;
    }
    running = false;
    $("train-start").textContent = "Resume"; $("train-start").disabled = false;
    $("train-pause").disabled = true;
  }
  let started = false;
  $("train-start").addEventListener("click", () => {
    try {
      if (!started) {
        $("train-description").textContent = demo.train_new($("train-preset").value,
          $("train-mask").value, +$("train-batch").value, +$("train-epochs").value,
          +$("train-samples").value, +$("train-lr").value, +$("train-warmup").value,
          +$("train-seed").value);
        started = true;
        $("train-download").disabled = false;
      }
      clearError();
      running = true;
      $("train-start").disabled = true; $("train-pause").disabled = false;
      trainLoop();
    } catch (e) { showError(e); }
  });
  $("train-pause").addEventListener("click", () => { running = false; });
  for (const id of ["train-preset", "train-mask", "train-batch", "train-epochs", "train-samples",
                    "train-lr", "train-warmup", "train-seed"]) {
    $(id).addEventListener("change", () => { if (!running) { started = false; $("train-start").textContent = "Start"; } });
  }
  $("train-download").addEventListener("click", async () => {
    try {
      const bytes = await demo.train_weights();
      const url = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
      const a = document.createElement("a");
      a.href = url; a.download = "clusterclip-web.safetensors"; a.click();
      URL.revokeObjectURL(url);
    } catch (e) { showError(e); }
  });

  await imageChanged(demo.use_shapes_image(0));
  window.demoReady = true;
}

main().catch((e) => {
  showError(e);
  $("adapter").textContent = "No WebGPU device.";
});
