#!/usr/bin/env bash
# Runs scripts/demo.sh (the README's first command) in a temporary sandbox
# directory and checks that the tour printed every step and exited 0.
# Usage: demo_test.sh BIN_DIR [--replicas N]: with N > 1, the sandbox runs N
# relay replicas on etcd behind HAProxy, and the agent's control channels must
# have landed one per replica.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:?usage: demo_test.sh BIN_DIR [--replicas N]}"
replicas=1
[ "${2:-}" = "--replicas" ] && replicas="${3:?--replicas needs a number}"
tmp="$(mktemp -d /tmp/cc-demo.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
out="$(CLUSTERCONNECT_SANDBOX="$tmp/sandbox" CLUSTERCONNECT_BIN="$bin" timeout 240 "$root/scripts/demo.sh" --replicas "$replicas" 2>&1)"
rc=$?
echo "$out"
failed=0
[ $rc -eq 0 ] || { echo "FAIL: demo.sh exited $rc"; failed=1; }
for want in '== [1/4] checking' '== [2/4] using the binaries' '== [3/4] starting the sandbox' '== [4/4] kubectl' \
            '(transport tls, ' '$ kubectl get namespaces' 'kube-system' '$ kubectl auth whoami' 'Extra: oid' \
            'hello from clusterconnect' '$ kubectl exec web-0 -- whoami' 'handled by:' 'All steps worked.'; do
  [[ "$out" == *"$want"* ]] || { echo "FAIL: the tour did not print: $want"; failed=1; }
done
if [ "$replicas" -gt 1 ]; then
  for want in ", $replicas relay replicas on etcd behind HAProxy)" "relays: $replicas replicas on etcd"; do
    [[ "$out" == *"$want"* ]] || { echo "FAIL: the sandbox did not print: $want"; failed=1; }
  done
  spread="$(printf '%s\n' "$out" | grep 'agent control channels by replica:')"
  for i in $(seq 0 $((replicas - 1))); do
    [[ "$spread" == *"r$i: 1"* ]] || { echo "FAIL: replica r$i does not hold one control channel ($spread)"; failed=1; }
    # Each replica answers the management API for all replicas' channels.
    [[ "$out" == *"replica r$i answers for demo: Connected, $replicas agent tunnels, kubernetes "* ]] ||
      { echo "FAIL: replica r$i does not answer Connected with $replicas agent tunnels"; failed=1; }
  done
else
  [[ "$out" == *"(transport tls, one relay)"* ]] || { echo "FAIL: the tour did not print: (transport tls, one relay)"; failed=1; }
fi
ls "$tmp/sandbox/pids/"*.pid >/dev/null 2>&1 && { echo "FAIL: the sandbox was left running"; failed=1; }
exit $failed
