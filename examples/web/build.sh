#!/usr/bin/env bash
# Builds the browser demo into examples/web/www/pkg: the wasm32 target and the wasm-bindgen CLI
# at the exact version of Cargo.lock are installed when missing, then the demo crate is built
# for wasm32-unknown-unknown and wasm-bindgen writes the JS bindings. Serve with ./serve.sh.
set -euo pipefail
web=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$web/../.." && pwd)
cd "$root"

target=wasm32-unknown-unknown
if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi

# The bindings generator must match the wasm-bindgen crate the demo links, to the patch.
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
  # --locked first (the CLI's own lock file); a registry index that lacks one of its pinned
  # versions (seen: a yanked webpki-roots) gets the newest compatible ones instead. --debug:
  # the unoptimised CLI builds in a fraction of the time on CI's 2 cores and binds the demo's
  # wasm in about 3 s, byte-identical to the optimised CLI's output (measured).
  # No debug info either (CARGO_PROFILE_DEV_DEBUG=0): less to compile and link.
  export CARGO_PROFILE_DEV_DEBUG=0
  cargo install wasm-bindgen-cli --version "$version" --locked --debug ||
    cargo install wasm-bindgen-cli --version "$version" --debug
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
cargo build --locked --release -p clusterclip-web --target "$target"
wasm-bindgen --target web --no-typescript --out-dir "$web/www/pkg" \
  "$target_dir/$target/release/clusterclip_web.wasm"
echo "built $web/www/pkg ($(du -k "$web/www/pkg/clusterclip_web_bg.wasm" | cut -f1) KiB of wasm)"
