#!/usr/bin/env bash
# The main job on the embedded default. Until the local sandbox lands, this
# builds clusterconnect and shows the host with its modules: the loaded
# modules and the proxy command's flags, which come from the proxy module.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release
bin=build/release/stage/bin
"$bin/connectedk8s" --version
"$bin/connectedk8s" plugin list
"$bin/connectedk8s" proxy --help
