// The browser test of issue 12: serves examples/web/www on 127.0.0.1, drives Debian's headless
// Chromium with WebGPU on SwiftShader over the DevTools protocol, and compares the page with
// the native CLI: mask indices exactly, features within 1e-4, three training losses within
// 1e-4 relative. Bad inputs must give one clear error, the page no uncaught error or panic;
// a screenshot of each panel goes to $OUT_DIR. Usage: node test.mjs (see ../test.sh).
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

import { launch, openPage } from "./cdp.mjs";
import { IMAGES } from "./images.mjs";
import { serve } from "../serve.mjs";

const here = fileURLToPath(new URL(".", import.meta.url));
const root = join(here, "..", "..", "..");
const cli = process.env.CLUSTERCLIP_BIN || join(root, "target", "release", "clusterclip");
const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
const outDir = process.env.OUT_DIR || join(here, "out");
const port = Number(process.env.PORT || 8765);
const SHIPPED = join(root, "examples", "web", "www", "assets", "shapes-nano.safetensors");

// Mask cases: image, geometry and the sliders (the CLI's flags).
const MASK_CASES = [
  { image: "shapes.png", size: 64, patch: 8, threshold: 0.5, anchor: 0.03, min: 0.3, max: 0.9, seed: 0, features: "normalized" },
  { image: "stripes.png", size: 32, patch: 8, threshold: 0.3, anchor: 0.1, min: 0.2, max: 0.8, seed: 7, features: "rgb" },
  { image: "blocks.png", size: 224, patch: 16, threshold: 0.7, anchor: 0.05, min: 0.4, max: 0.95, seed: 123, features: "normalized" },
];
const PROMPTS = ["one red circle", "a picture of one blue square", "one large green triangle on a background"];
// Training compared with `clusterclip train --steps 3`: the Train panel's defaults.
const TRAIN = { preset: "nano", mask: "cluster", batch: 16, epochs: 4, samples: 1600, lr: 0.001, warmup: 20, seed: 0, steps: 3 };
const FEATURE_TOLERANCE = 1e-4;
const LOSS_TOLERANCE = 1e-4;

const failures = [];
const check = (ok, line) => { console.log(`${ok ? "ok  " : "FAIL"} ${line}`); if (!ok) failures.push(line); };
const run = (args) => execFileSync(cli, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

// ---- native references ----
const work = mkdtempSync(join(tmpdir(), "clusterclip-web-test-"));
for (const [name, bytes] of Object.entries(IMAGES)) writeFileSync(join(work, name), bytes);
const nativeMasks = MASK_CASES.map((c) => JSON.parse(run(["mask", "--image", join(work, c.image),
  "--image-size", String(c.size), "--patch-size", String(c.patch), "--threshold", String(c.threshold),
  "--anchor-ratio", String(c.anchor), "--min-mask-ratio", String(c.min), "--max-mask-ratio", String(c.max),
  "--seed", String(c.seed), "--mask-features", c.features, "--json"])));
const nativeFeatures = JSON.parse(run(["embed", "--checkpoint", SHIPPED, "--image", join(work, "shapes.png"),
  ...PROMPTS.flatMap((p) => ["--text", p])]));
const trainStarted = Date.now();
run(["train", "--model", TRAIN.preset, "--mask", TRAIN.mask, "--batch-size", String(TRAIN.batch),
  "--epochs", String(TRAIN.epochs), "--train-num-samples", String(TRAIN.samples), "--lr", String(TRAIN.lr),
  "--warmup", String(TRAIN.warmup), "--seed", String(TRAIN.seed), "--steps", String(TRAIN.steps),
  "--log-every-n-steps", "1", "--val-frequency", "0", "--zeroshot-frequency", "0",
  "--logs", work, "--name", "native"]);
const nativeTrainSeconds = (Date.now() - trainStarted) / 1000;
const nativeLosses = lossesOf(join(work, "native"));
const nativeSpeed = speedOf(join(work, "native", "out.log"));

// The losses of a run: exact f32 from the checkpoint's loss history when one holds it, else
// the progress lines' 4 decimals (then the comparison allows their rounding, 5e-5).
function lossesOf(dir) {
  const checkpoints = join(dir, "checkpoints");
  for (const file of readdirSync(checkpoints).filter((f) => f.endsWith(".safetensors"))) {
    const bytes = readFileSync(join(checkpoints, file));
    const headerLength = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString("utf8"));
    const entry = header["train.loss_history.loss"];
    if (entry && entry.dtype === "F32") {
      const [start, end] = entry.data_offsets.map((o) => o + 8 + headerLength);
      const data = bytes.subarray(start, end);
      return { rounding: 0, values: Array.from({ length: data.length / 4 }, (_, i) => data.readFloatLE(4 * i)) };
    }
  }
  const log = readFileSync(join(dir, "out.log"), "utf8");
  return { rounding: 5e-5, values: [...log.matchAll(/^step \d+\/\d+ .*\| loss ([0-9.]+) \|/gm)].map((m) => Number(m[1])) };
}

// Images/s of the native run's last progress line (steps after the first, whose shader
// compilation would dominate).
function speedOf(log) {
  const speeds = [...readFileSync(log, "utf8").matchAll(/\| ([0-9.]+) img\/s \|/g)].map((m) => Number(m[1]));
  return speeds.at(-1);
}

// ---- the page ----
const server = await serve(port);
const profile = mkdtempSync(join(tmpdir(), "clusterclip-chromium-"));
const browser = await launch(chromium, [
  // WebGPU on SwiftShader (Chromium's CPU Vulkan) on a machine without a GPU; without these two
  // flags navigator.gpu exists but offers no adapter.
  "--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader",
  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
  `--user-data-dir=${profile}`, "--window-size=1200,900", "about:blank",
]);
const pageErrors = [];
browser.on((message) => {
  const p = message.params || {};
  if (message.method === "Runtime.exceptionThrown") {
    pageErrors.push(`uncaught: ${p.exceptionDetails.exception?.description || p.exceptionDetails.text}`);
  } else if (message.method === "Runtime.consoleAPICalled" && p.type === "error") {
    pageErrors.push(`console.error: ${p.args.map((a) => a.value ?? a.description).join(" ")}`);
  } else if (message.method === "Log.entryAdded" && p.entry.level === "error") {
    pageErrors.push(`log: ${p.entry.text}`);
  }
});
const url = `http://127.0.0.1:${port}/`;

try {
  const page = await openPage(browser);
  await page.send("Runtime.enable");
  await page.send("Log.enable");
  await page.send("Page.enable");
  await page.send("Emulation.setDeviceMetricsOverride", { width: 1200, height: 900, deviceScaleFactor: 1, mobile: false });
  await page.send("Page.navigate", { url });
  await waitFor(page, "window.demoReady === true || document.getElementById('error').textContent !== ''", 120);
  const opened = await page.evaluate("document.getElementById('error').textContent");
  if (opened) throw new Error(`the page did not open: ${opened}`);
  const device = JSON.parse(await page.evaluate("window.demo.device_json()"));
  console.log(`page: ${device.adapter}`);
  check(device.max_storage_buffer_binding_size <= 134217728 && device.max_buffer_size <= 268435456,
    `device limits within WebGPU's defaults (binding ${device.max_storage_buffer_binding_size}, buffer ${device.max_buffer_size})`);

  // Mask: the page's indices (training kernels on WebGPU) against `clusterclip mask --json`.
  for (const [i, c] of MASK_CASES.entries()) {
    const b64 = IMAGES[c.image].toString("base64");
    const mask = JSON.parse(await page.evaluate(`(async () => {
      const bytes = Uint8Array.from(atob("${b64}"), (ch) => ch.charCodeAt(0));
      window.demo.use_image_file(bytes, "${c.image}");
      return await window.demo.mask(${c.size}, ${c.patch}, ${c.threshold}, ${c.anchor}, ${c.min}, ${c.max}, ${c.seed}, "${c.features}");
    })()`));
    const native = nativeMasks[i];
    const same = ["kept", "anchors", "masked"].every((k) => JSON.stringify(mask[k]) === JSON.stringify(native[k]))
      && mask.keep_count === native.keep_count;
    check(same, `mask ${i + 1} (${c.image}, ${c.size}/${c.patch} px, r ${c.threshold}, seed ${c.seed}): ` +
      `page k = ${mask.keep_count} of ${mask.patches}, CLI k = ${native.keep_count}; kept, anchors and masked ` +
      `${same ? "identical" : `differ: page ${JSON.stringify(mask.kept)} CLI ${JSON.stringify(native.kept)}`}`);
    check(mask.random_keep_count === mask.keep_count, `mask ${i + 1}: random masking beside it keeps the same k (${mask.random_keep_count})`);
  }
  // Leave the panel as a user finds it, for the screenshot.
  await page.evaluate(`(async () => {
    document.getElementById("shapes-index").value = "3";
    document.getElementById("shapes-index").dispatchEvent(new Event("change"));
    await new Promise((r) => setTimeout(r, 3000));
  })()`);
  await screenshot(page, "mask-panel", "mask");

  // Zero-shot: the shipped checkpoint's features against `clusterclip embed`.
  const shipped = readFileSync(SHIPPED).toString("base64");
  const features = JSON.parse(await page.evaluate(`(async () => {
    const bytes = Uint8Array.from(atob("${shipped}"), (ch) => ch.charCodeAt(0));
    window.demo.load_weights(bytes, "shapes-nano.safetensors");
    const image = Uint8Array.from(atob("${IMAGES["shapes.png"].toString("base64")}"), (ch) => ch.charCodeAt(0));
    window.demo.use_image_file(image, "shapes.png");
    return await window.demo.features(${JSON.stringify(JSON.stringify(PROMPTS))});
  })()`));
  const diff = (a, b) => Math.max(...a.flatMap((row, i) => row.map((x, j) => Math.abs(x - b[i][j]))));
  const imageDiff = diff(features.image_features, nativeFeatures.image_features);
  const textDiff = diff(features.text_features, nativeFeatures.text_features);
  check(imageDiff <= FEATURE_TOLERANCE, `image features (unit vectors of ${features.image_features[0].length}): max |page − CLI| = ${imageDiff.toExponential(2)} (tolerance ${FEATURE_TOLERANCE})`);
  check(textDiff <= FEATURE_TOLERANCE, `text features of ${PROMPTS.length} prompts: max |page − CLI| = ${textDiff.toExponential(2)} (tolerance ${FEATURE_TOLERANCE})`);
  await page.evaluate(`(async () => {
    document.getElementById("load-shipped").click();
    await new Promise((r) => setTimeout(r, 500));
    document.getElementById("shapes-index").value = "0";
    document.getElementById("shapes-index").dispatchEvent(new Event("change"));
    await new Promise((r) => setTimeout(r, 3000));
    document.getElementById("rank").click();
    await new Promise((r) => setTimeout(r, 3000));
  })()`);
  await screenshot(page, "zeroshot-panel", "zeroshot");

  // Bad input: one clear error each, naming the file, and the page stays alive.
  const refused = async (label, expression, expect) => {
    let message = null;
    try { await page.evaluate(expression); } catch (e) { message = e.message.split("\n")[0]; }
    check(message !== null && message.includes(expect), `${label} refused: "${message}"`);
  };
  await refused("a file that is not an image",
    `window.demo.use_image_file(new TextEncoder().encode("name,caption\\n"), "notes.csv")`, "notes.csv");
  await refused("a corrupt checkpoint",
    `window.demo.load_weights(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9]), "broken.safetensors")`, "broken.safetensors");
  await refused("a checkpoint of another preset", `(() => {
    const bytes = Uint8Array.from(atob("${shipped}"), (ch) => ch.charCodeAt(0));
    const length = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + length)));
    const config = JSON.parse(header.__metadata__.model_config);
    config.vision.image_size = 64;  // micro's geometry, nano's tensors
    header.__metadata__.model_config = JSON.stringify(config);
    const text = new TextEncoder().encode(JSON.stringify(header));
    const out = new Uint8Array(8 + text.length + bytes.length - 8 - length);
    new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
    out.set(text, 8); out.set(bytes.subarray(8 + length), 8 + text.length);
    window.demo.load_weights(out, "micro-config.safetensors");
  })()`, "micro-config.safetensors");

  // Train: three steps from a fixed seed against `clusterclip train --steps 3`.
  const report = JSON.parse(await page.evaluate(`(async () => {
    const reports = [];
    window.demo.train_new("${TRAIN.preset}", "${TRAIN.mask}", ${TRAIN.batch}, ${TRAIN.epochs}, ${TRAIN.samples}, ${TRAIN.lr}, ${TRAIN.warmup}, ${TRAIN.seed});
    for (let i = 0; i < ${TRAIN.steps}; i++) reports.push(JSON.parse(await window.demo.train_step()));
    return JSON.stringify(reports);
  })()`));
  for (const [i, r] of report.entries()) {
    const native = nativeLosses.values[i];
    const error = Math.abs(r.loss - native);
    check(native !== undefined && error <= LOSS_TOLERANCE * Math.abs(native) + nativeLosses.rounding,
      `train step ${i + 1}: page loss ${r.loss.toFixed(6)}, CLI ${native?.toFixed(6)}, relative difference ` +
      `${(error / Math.abs(native)).toExponential(2)} (tolerance ${LOSS_TOLERANCE}${nativeLosses.rounding ? ", CLI printed to 4 decimals" : ""}); ` +
      `mask ratio ${r.mask_ratio.toFixed(3)}, ${r.step_seconds.toFixed(2)} s`);
  }
  const later = report.slice(1);
  const pageSpeed = later.reduce((s, r) => s + TRAIN.batch, 0) / later.reduce((s, r) => s + r.step_seconds, 0);
  console.log(`speed: Train panel (${TRAIN.preset}, batch ${TRAIN.batch}, ${TRAIN.mask}) ` +
    `${pageSpeed.toFixed(1)} images/s in headless Chromium on SwiftShader (steps 2-${TRAIN.steps}, ` +
    `${(TRAIN.batch / pageSpeed).toFixed(2)} s/step); native CLI ${nativeSpeed} images/s (step ${TRAIN.steps}; ` +
    `whole 3-step run with start-up ${nativeTrainSeconds.toFixed(1)} s)`);
  const weights = await page.evaluate(`(async () => (await window.demo.train_weights()).length)()`);
  check(weights > 0, `weights download: ${weights} bytes of safetensors`);
  await screenshot(page, "train-panel", "train");

  // The page's state after everything: no uncaught error, no panic, nothing in #error.
  const shown = await page.evaluate("document.getElementById('error').textContent");
  check(shown === "", `no error shown on the page${shown ? `: ${shown}` : ""}`);

  // A browser without WebGPU: the page says what to enable instead of dying.
  const bare = await openPage(browser);
  await bare.send("Page.enable");
  await bare.send("Page.addScriptToEvaluateOnNewDocument",
    { source: "Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined });" });
  await bare.send("Page.navigate", { url });
  await waitFor(bare, "document.getElementById('error').textContent !== ''", 60);
  const noGpu = await bare.evaluate("document.getElementById('error').textContent");
  check(noGpu.includes("no WebGPU") && noGpu.includes("enable"), `without WebGPU the page says: "${noGpu}"`);
} catch (e) {
  check(false, `the browser test stopped: ${e.message}`);
} finally {
  await browser.close();
  server.close();
  rmSync(profile, { recursive: true, force: true });
  rmSync(work, { recursive: true, force: true });
}
check(pageErrors.length === 0, `no uncaught error or console error in the page${pageErrors.length ? `: ${pageErrors.join(" | ")}` : ""}`);
console.log(failures.length ? `browser test: ${failures.length} check(s) failed` : "browser test: all checks passed");
process.exit(failures.length ? 1 : 0);

async function waitFor(page, condition, seconds) {
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    if (await page.evaluate(condition).catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out after ${seconds} s waiting for ${condition}`);
}

async function screenshot(page, elementId, name) {
  const rect = JSON.parse(await page.evaluate(`(() => {
    const r = document.getElementById("${elementId}").getBoundingClientRect();
    return JSON.stringify({ x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height });
  })()`));
  const { data } = await page.send("Page.captureScreenshot",
    { format: "png", clip: { ...rect, scale: 1 }, captureBeyondViewport: true });
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `${name}.png`);
  writeFileSync(file, Buffer.from(data, "base64"));
  console.log(`screenshot: ${file}`);
}
