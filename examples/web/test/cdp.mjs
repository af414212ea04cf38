// A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fd 3 in, fd 4 out,
// NUL-separated JSON): enough to drive one page, with no npm packages and no browser download.
import { spawn } from "node:child_process";

export async function launch(executable, args) {
  const child = spawn(executable, ["--remote-debugging-pipe", ...args],
    { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => { stderr = (stderr + d).slice(-4000); });
  const [toBrowser, fromBrowser] = [child.stdio[3], child.stdio[4]];
  let nextId = 1, buffer = "";
  const waiting = new Map(), listeners = [];
  fromBrowser.on("data", (chunk) => {
    buffer += chunk.toString("utf8");
    let end;
    while ((end = buffer.indexOf("\0")) >= 0) {
      const message = JSON.parse(buffer.slice(0, end));
      buffer = buffer.slice(end + 1);
      if (message.id && waiting.has(message.id)) {
        const { resolve, reject, method } = waiting.get(message.id);
        waiting.delete(message.id);
        if (message.error) reject(new Error(`${method}: ${message.error.message}`));
        else resolve(message.result);
      } else if (message.method) {
        for (const listener of listeners) listener(message);
      }
    }
  });
  const exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  exited.then((code) => {
    for (const { reject } of waiting.values()) {
      reject(new Error(`chromium exited (${code}): ${stderr.trim().split("\n").slice(-3).join(" | ")}`));
    }
  });
  const send = (method, params = {}, sessionId) => new Promise((resolve, reject) => {
    const id = nextId++;
    waiting.set(id, { resolve, reject, method });
    toBrowser.write(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }) + "\0");
  });
  return {
    send,
    on: (listener) => listeners.push(listener),
    close: async () => { try { await send("Browser.close"); } catch {} child.kill(); await exited; },
    stderr: () => stderr,
  };
}

// A page session: `evaluate` runs an expression in the page and awaits its promise.
export async function openPage(browser) {
  const { targetId } = await browser.send("Target.createTarget", { url: "about:blank" });
  const { sessionId } = await browser.send("Target.attachToTarget", { targetId, flatten: true });
  const send = (method, params) => browser.send(method, params, sessionId);
  const evaluate = async (expression) => {
    const { result, exceptionDetails } = await send("Runtime.evaluate",
      { expression, awaitPromise: true, returnByValue: true });
    if (exceptionDetails) {
      const e = exceptionDetails.exception;
      throw new Error((e && (e.description || e.value)) || exceptionDetails.text);
    }
    return result.value;
  };
  return { send, evaluate, sessionId };
}
