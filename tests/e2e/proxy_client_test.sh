#!/usr/bin/env bash
# The proxy (connectedk8s proxy) as a process, against the local sandbox
# (scripts/sandbox.sh): how it starts and stops.
#
# Usage: proxy_client_test.sh BIN_DIR lifecycle
#   lifecycle  200 start/stop cycles (SIGTERM and SIGINT), each must exit 0;
#              listen failures
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:?usage: proxy_client_test.sh BIN_DIR lifecycle}"
mode="${2:?usage: proxy_client_test.sh BIN_DIR lifecycle}"
work="$(mktemp -d /tmp/cc-proxy.XXXXXX)"
sandbox="$work/sandbox"
pids=()
failures=0

cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  "$root/scripts/sandbox.sh" down "$sandbox" >/dev/null 2>&1
  if [ "$failures" -eq 0 ]; then rm -rf "$work"; else echo "logs kept in $work" >&2; fi
}
trap cleanup EXIT

pass() { printf 'PASS  %s\n' "$1"; }
fail() {
  printf 'FAIL  %s\n' "$1"; shift
  [ $# -gt 0 ] && printf '      %s\n' "$@" | head -20
  failures=$((failures + 1))
}
check() {
  local name="$1" want="$2"; shift 2
  local out rc
  out="$(timeout 30 "$@" 2>&1)"; rc=$?
  if [ $rc -eq 0 ] && [[ "$out" == *"$want"* ]]; then pass "$name"; else fail "$name" "exit $rc" "$out"; fi
}
check_fails() {
  local name="$1" want="$2"; shift 2
  local out rc
  out="$(timeout 30 "$@" 2>&1)"; rc=$?
  if [ $rc -ne 0 ] && [[ "$out" == *"$want"* ]]; then pass "$name"; else fail "$name" "exit $rc" "$out"; fi
}
# wait_file FILE PID: waits (at most 30 s) for FILE while PID is alive.
wait_file() {
  for _ in $(seq 1 300); do
    [ -s "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
# wait_exit PID: the exit status of PID, killing it after 30 s (status 999).
wait_exit() {
  for _ in $(seq 1 300); do
    kill -0 "$1" 2>/dev/null || { wait "$1"; return $?; }
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null
  return 255
}

"$root/scripts/sandbox.sh" up "$sandbox" "$bin" || { failures=1; echo "FAIL  sandbox did not start"; exit 1; }
# shellcheck disable=SC1091
source "$sandbox/env.sh"

lifecycle() {
  # --- 200 start/stop cycles: every stop by signal exits 0
  local cycles=200 bad=0 first_bad="" i sig rc
  for i in $(seq 1 $cycles); do
    rm -f "$work/cycle.ready"
    "$bin/connectedk8s" proxy -n demo -g sandbox -f "$work/cycle-kubeconfig" --port 0 --ready-file "$work/cycle.ready" \
      >/dev/null 2>"$work/cycle.err" &
    local p=$!
    if ! wait_file "$work/cycle.ready" "$p"; then
      kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null
      bad=$((bad + 1)); [ -z "$first_bad" ] && first_bad="cycle $i: not ready: $(tail -3 "$work/cycle.err")"
      continue
    fi
    if [ $((i % 2)) -eq 0 ]; then sig=TERM; else sig=INT; fi
    kill -"$sig" "$p"
    wait_exit "$p"; rc=$?
    if [ $rc -ne 0 ]; then
      bad=$((bad + 1)); [ -z "$first_bad" ] && first_bad="cycle $i (SIG$sig): exit $rc: $(tail -3 "$work/cycle.err")"
    fi
  done
  [ $bad -eq 0 ] && pass "$cycles start/stop cycles by SIGTERM and SIGINT all exit 0" ||
    fail "$cycles start/stop cycles by SIGTERM and SIGINT all exit 0" "$bad cycles failed" "$first_bad"

  # --- a port in use is ClientProxyPortInUse; nothing is written
  "$bin/connectedk8s" proxy -n demo -g sandbox -f "$work/kubeconfig" --port 0 --ready-file "$work/busy.ready" \
    >/dev/null 2>"$work/busy.err" &
  local busy=$!
  pids+=($busy)
  if wait_file "$work/busy.ready" "$busy"; then
    local port
    port="$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).server.split(":").pop())' "$work/busy.ready")"
    check_fails "a port in use is ClientProxyPortInUse" "127.0.0.1:$port is already in use (ClientProxyPortInUse)" \
      "$bin/connectedk8s" proxy -n demo -g sandbox -f "$work/other-kubeconfig" --port "$port"
    [ ! -e "$work/other-kubeconfig" ] && pass "nothing is written when the port is in use" ||
      fail "nothing is written when the port is in use"
  else
    fail "a proxy starts to hold a port" "$(cat "$work/busy.err")"
  fi
  kill -TERM "$busy" 2>/dev/null; wait "$busy" 2>/dev/null
}

case "$mode" in
  lifecycle) lifecycle ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac

echo
if [ "$failures" -eq 0 ]; then echo "proxy_client_test $mode: all checks passed"; else echo "proxy_client_test $mode: $failures check(s) failed"; fi
exit $(( failures > 0 ))
