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

# The tunnel frame decoder under libFuzzer (clang only): a short, bounded run.
if command -v clang++ >/dev/null; then
  cmake -S . -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
    -DCMAKE_BUILD_TYPE=Debug -DCLUSTERCONNECT_FUZZ=ON -DCLUSTERCONNECT_BUILD_TESTS=ON >/dev/null
  cmake --build build/fuzz --target frame_decoder_fuzz
  ctest --test-dir build/fuzz -R frame_decoder_fuzz --output-on-failure
fi
