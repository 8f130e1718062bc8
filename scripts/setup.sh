#!/usr/bin/env bash
# Installs what building and testing clusterconnect needs, from Debian's
# packages and the npm registry. Idempotent; quiet when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake ninja-build ccache pkg-config
  libboost-dev libcli11-dev libspdlog-dev nlohmann-json3-dev libcurl4-openssl-dev libssl-dev
  catch2 libyaml-cpp-dev clang libclang-rt-14-dev openssl curl nodejs npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs/npm may come from outside Debian's packages; the commands are what count.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/#nodejs/}"); missing=("${missing[@]/#npm/}")
fi
read -r -a missing <<<"${missing[*]}"
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=(); [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v kubectl >/dev/null || echo "setup: warning: kubectl is not on PATH; end-to-end tests need it" >&2

# The test fixtures (identity provider, stand-in API server) are Node programs
# with pinned dependencies.
if [ -f tests/fixtures/package-lock.json ]; then
  if [ ! -d tests/fixtures/node_modules ] || [ tests/fixtures/package-lock.json -nt tests/fixtures/node_modules/.package-lock.json ]; then
    (cd tests/fixtures && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
fi
