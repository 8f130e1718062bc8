#!/usr/bin/env bash
# Set up, configure, build and run every test. Usage: scripts/test.sh [preset]
# (presets: dev (default), release, asan).
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-dev}"
scripts/setup.sh
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset"
ctest --preset "$preset" --timeout 600 -j2
