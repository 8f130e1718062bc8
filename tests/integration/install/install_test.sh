#!/usr/bin/env bash
# `cmake --install` lays out bin/, lib/ and lib/connectedk8s/plugins/, and the
# tree still works after it is moved: binaries find the core library and their
# modules relative to themselves. Usage: install_test.sh BUILD_DIR
set -euo pipefail
build="$1"
tmp="$(mktemp -d /tmp/cc-install.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
for f in bin/connectedk8s bin/clusterconnect-agent bin/clusterconnect-relay lib/libclusterconnect-core.so \
         lib/connectedk8s/plugins/proxy.so lib/connectedk8s/plugins/kubeconfig.so \
         lib/connectedk8s/plugins/auth-entra.so lib/connectedk8s/plugins/tunnel-ws.so; do
  [ -e "$tmp/prefix/$f" ] || { echo "FAIL: $f is not installed"; exit 1; }
done
mv "$tmp/prefix" "$tmp/moved"
out="$(env -u CONNECTEDK8S_PLUGIN_PATH HOME="$tmp/home" "$tmp/moved/bin/connectedk8s" plugin list -o json)"
for m in proxy kubeconfig auth-entra tunnel-ws; do
  grep -q "\"name\": \"$m\"" <<<"$out" || { echo "FAIL: module $m not loaded from the moved tree"; echo "$out"; exit 1; }
done
grep -q "$tmp/moved/lib/connectedk8s/plugins" <<<"$out" || { echo "FAIL: modules not loaded from the moved tree"; exit 1; }
"$tmp/moved/bin/clusterconnect-agent" --version | grep -q "clusterconnect-agent" || { echo "FAIL: agent does not run"; exit 1; }
"$tmp/moved/bin/clusterconnect-relay" --version | grep -q "clusterconnect-relay" || { echo "FAIL: relay does not run"; exit 1; }
echo "installed tree works after being moved"
