#!/usr/bin/env bash
# Serves the built demo (./build.sh first) on http://127.0.0.1:${1:-8000}/ (Node, no packages).
set -euo pipefail
exec node "$(dirname "$0")/serve.mjs" "${1:-8000}"
