#!/usr/bin/env bash
# The relay switches ciphertext it cannot read: after kubectl has run through
# it, over each transport (tls: spliced TCP legs; ws: WebSockets whose own TLS
# the relay terminates, with TLS end to end inside), and while a watch is
# still open, the relay's memory (read from /proc/PID/mem) holds neither the
# session's bearer token nor a request line; the same scan of the agent finds
# both, so the scan works.
# Usage: relay_blind_test.sh BIN_DIR
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:?usage: relay_blind_test.sh BIN_DIR}"
# shellcheck source=tests/e2e/lib.sh
source "$root/tests/e2e/lib.sh"
e2e_begin blind
sandboxes=("$work/sandbox-tls" "$work/sandbox-ws")

count() {  # JSON NEEDLE
  python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

# A label selector no other request carries: the request's target is the needle.
marker="blind-$(openssl rand -hex 8)"
request_target="/api/v1/namespaces/default/configmaps?labelSelector=marker%3D$marker"

run_transport() {  # tls|ws
  local t="$1" sandbox="$work/sandbox-$1"
  SANDBOX_TRANSPORT="$t" "$root/scripts/sandbox.sh" up "$sandbox" "$bin" >"$work/sandbox-$t.log" 2>&1 ||
    { fail "$t: sandbox starts" "$(tail -20 "$work/sandbox-$t.log")"; return; }
  # shellcheck disable=SC1091
  (
    source "$sandbox/env.sh"
    printf '%s\n' "$SANDBOX_CI_TOKEN" >"$work/ci-$t.token"
    chmod 600 "$work/ci-$t.token"
    exec "$bin/connectedk8s" proxy -n demo -g sandbox --token-file "$work/ci-$t.token" -f "$work/$t.kubeconfig" --port 0 \
      --ready-file "$work/$t.ready" >"$work/proxy-$t.out" 2>"$work/proxy-$t.err"
  ) &
  pids+=($!)
  wait_file "$work/$t.ready" || { fail "$t: proxy starts" "$(cat "$work/proxy-$t.err")"; return; }
  local kc="$work/$t.kubeconfig"
  # A watch that stays open while the processes are scanned; it is open once
  # the API server has logged it.
  kubectl --kubeconfig "$kc" get configmaps -l "marker=$marker" -w >"$work/watch-$t.out" 2>&1 &
  local watch=$!
  pids+=($watch)
  local requests="$sandbox/logs/apiserver-requests.jsonl"
  for _ in $(seq 1 300); do grep "$marker" "$requests" 2>/dev/null | grep -q 'watch=true' && break; sleep 0.1; done
  grep "$marker" "$requests" 2>/dev/null | grep -q 'watch=true' ||
    { fail "$t: the watch is open" "$(cat "$work/watch-$t.out")"; return; }
  local token relay agent
  token="$(cat "$work/ci-$t.token")"
  relay="$(python3 "$root/tests/e2e/memory_scan.py" "$(cat "$sandbox/pids/relay.pid")" "$token" "$request_target")" ||
    { fail "$t: the relay's memory can be read" "$relay"; return; }
  agent="$(python3 "$root/tests/e2e/memory_scan.py" "$(cat "$sandbox/pids/agent.pid")" "$token" "$request_target")" ||
    { fail "$t: the agent's memory can be read" "$agent"; return; }
  echo "      $t: relay $relay, agent $agent"
  if [ "$(count "$agent" "$token")" -gt 0 ] && [ "$(count "$agent" "$request_target")" -gt 0 ]; then
    pass "$t: the agent's memory holds the bearer token and the request (the scan works)"
  else
    fail "$t: the agent's memory holds the bearer token and the request (the scan works)" "$agent"
  fi
  if [ "$(count "$relay" "$token")" -eq 0 ] && [ "$(count "$relay" "$request_target")" -eq 0 ]; then
    pass "$t: the relay's memory holds neither the bearer token nor the request"
  else
    fail "$t: the relay's memory holds neither the bearer token nor the request" "$relay"
  fi
  kill "$watch" 2>/dev/null
  "$root/scripts/sandbox.sh" down "$sandbox" >/dev/null 2>&1
}

run_transport tls
run_transport ws

echo
if [ "$failures" -eq 0 ]; then echo "relay_blind: all checks passed"; else echo "relay_blind: $failures check(s) failed"; fi
exit $(( failures > 0 ))
