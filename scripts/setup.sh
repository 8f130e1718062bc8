#!/usr/bin/env bash
# Installs what building and testing clusterconnect needs, from Debian's
# packages and the npm registry. Idempotent; quiet when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake ninja-build ccache pkg-config
  libboost-dev libcli11-dev libspdlog-dev nlohmann-json3-dev libcurl4-openssl-dev libssl-dev libnghttp2-dev
  catch2 libyaml-cpp-dev clang libclang-rt-14-dev openssl curl etcd-server haproxy nodejs npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs/npm may come from outside Debian's packages; the commands are what count.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/#nodejs/}"); missing=("${missing[@]/#npm/}")
fi
# What apt-get and npm print goes to this log; a failure shows its end.
log="${CLUSTERCONNECT_SETUP_LOG:-${TMPDIR:-/tmp}/clusterconnect-setup.log}"
failed_in() {
  echo "setup: $1 failed; the last lines of $log:" >&2
  tail -n 20 "$log" >&2
  exit 1
}

read -r -a missing <<<"${missing[*]}"
if ((${#missing[@]})); then
  echo "setup: installing ${#missing[@]} Debian packages (${missing[*]}); log: $log" >&2
  sudo_cmd=(); [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq >>"$log" 2>&1 || failed_in "apt-get update"
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1 ||
    failed_in "apt-get install"
  echo "setup: packages installed" >&2
fi

# Versions, not just presence: the fixtures need Node.js >= 20; the end-to-end
# tests need kubectl >= 1.30 (exec over WebSocket, `kubectl auth whoami`).
# Missing or too old: a warning for a developer, an error when CI is set
# (the suite would otherwise fail or leave tests out).
problems=0
in_ci=0
case "${CI:-}" in "" | 0 | false | FALSE | False) ;; *) in_ci=1 ;; esac
version_problem() {
  echo "setup: $([ $in_ci -eq 1 ] && echo error || echo warning): $*" >&2
  problems=$((problems + 1))
}
# version_at_least HAVE WANT: true when dotted version HAVE >= WANT.
version_at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

if ! command -v node >/dev/null; then
  version_problem "node is not on PATH: the test fixtures need Node.js >= 20 (apt-get install nodejs npm, or https://nodejs.org)"
else
  node_version="$(node --version 2>/dev/null | sed 's/^v//')"
  version_at_least "$node_version" 20 ||
    version_problem "Node.js $node_version is too old: the test fixtures need Node.js >= 20 (https://nodejs.org, or NodeSource's Debian packages)"
fi
if ! command -v kubectl >/dev/null; then
  version_problem "kubectl is not on PATH: the end-to-end tests need kubectl >= 1.30 (https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/)"
else
  kubectl_version="$(kubectl version --client 2>/dev/null | sed -n 's/^Client Version: v\([0-9][0-9.]*\).*/\1/p' | head -1)"
  if [ -z "$kubectl_version" ]; then
    version_problem "cannot read kubectl's version (kubectl version --client): the end-to-end tests need kubectl >= 1.30"
  elif ! version_at_least "$kubectl_version" 1.30; then
    version_problem "kubectl $kubectl_version is too old: the end-to-end tests need kubectl >= 1.30 for exec over WebSocket and 'kubectl auth whoami' (https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/)"
  fi
fi

# The test fixtures (identity provider, stand-in API server) are Node programs
# with pinned dependencies.
if [ -f tests/fixtures/package-lock.json ]; then
  if [ ! -d tests/fixtures/node_modules ] || [ tests/fixtures/package-lock.json -nt tests/fixtures/node_modules/.package-lock.json ]; then
    echo "setup: installing the test fixtures' npm packages (tests/fixtures); log: $log" >&2
    (cd tests/fixtures && npm ci --no-audit --no-fund --loglevel=error >>"$log" 2>&1) || failed_in "npm ci in tests/fixtures"
  fi
fi

if [ "$problems" -gt 0 ] && [ $in_ci -eq 1 ]; then
  echo "setup: CI is set: fix the above (the end-to-end tests may not be skipped in CI)" >&2
  exit 1
fi
