#!/usr/bin/env bash
# The browser test (issue 12), one command: installs Debian's chromium and nodejs when missing
# (no browser download from anywhere else), builds the demo and the native CLI, then drives the
# page in headless Chromium on SwiftShader's WebGPU and compares it with the CLI (test/test.mjs
# prints every comparison with its numbers). Screenshots go to ${OUT_DIR:-examples/web/test/out}.
set -euo pipefail
web=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$web/../.." && pwd)

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

"$web/build.sh"
(cd "$root" && cargo build --release --locked)
CHROMIUM=$(command -v chromium) node "$web/test/test.mjs"
