#!/usr/bin/env bash
# Runs scripts/demo.sh (the README's first command) in a temporary sandbox
# directory and checks that the tour printed every step and exited 0.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tmp="$(mktemp -d /tmp/cc-demo.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
out="$(CLUSTERCONNECT_SANDBOX="$tmp/sandbox" CLUSTERCONNECT_BIN="$1" timeout 240 "$root/scripts/demo.sh" 2>&1)"
rc=$?
echo "$out"
failed=0
[ $rc -eq 0 ] || { echo "FAIL: demo.sh exited $rc"; failed=1; }
for want in '== [1/4] checking' '== [2/4] using the binaries' '== [3/4] starting the sandbox' '== [4/4] kubectl' \
            '(transport tls)' '$ kubectl get namespaces' 'kube-system' '$ kubectl auth whoami' 'Extra: oid' \
            'hello from clusterconnect' '$ kubectl exec web-0 -- whoami' 'handled by:' 'All steps worked.'; do
  [[ "$out" == *"$want"* ]] || { echo "FAIL: the tour did not print: $want"; failed=1; }
done
[ -e "$tmp/sandbox/pids/relay.pid" ] && { echo "FAIL: the sandbox was left running"; failed=1; }
exit $failed
