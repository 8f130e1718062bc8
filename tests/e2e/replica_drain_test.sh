#!/usr/bin/env bash
# A relay replica stopped with SIGTERM under a running kubectl: three replicas
# on a real etcd behind one balanced address, the proxy's session on one of
# them. The replica tells the agent to drain the sessions it splices (a drain
# notice on the control channels; the agent sends GOAWAY), so a loop of
# kubectl get ns moves to a new session on another replica with no failed
# command, while the replica keeps splicing the old session for the watch
# open on it: every object created after the SIGTERM reaches the watch exactly
# once. When the watch ends, the old session closes by itself and the replica
# stops, counting it drained, not cut. TRANSPORT is the rendezvous form, tls
# (spliced sockets) or ws (paired WebSockets). Usage: replica_drain_test.sh BIN_DIR [TRANSPORT]
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:?usage: replica_drain_test.sh BIN_DIR [tls|ws]}"
transport="${2:-tls}"
command -v etcd >/dev/null || { echo "SKIP  etcd is not installed (apt-get install etcd-server)"; exit 77; }
command -v haproxy >/dev/null || { echo "SKIP  haproxy is not installed (scripts/setup.sh installs it)"; exit 77; }
# shellcheck source=tests/e2e/lib.sh
source "$root/tests/e2e/lib.sh"
e2e_begin "replica-drain-$transport"

# A drain timeout far longer than the test: the old session must end by
# itself (after GOAWAY), never by the timeout.
replicas_up SANDBOX_RELAY_ARGS="--drain-timeout 240" SANDBOX_TRANSPORT="$transport"
victim_log="$sandbox/logs/relay-$victim.log"
victim_pid="$(cat "$sandbox/pids/relay-$victim.pid")"

timeout 300 kubectl get ns -w -o jsonpath='{.metadata.name} {.metadata.resourceVersion}{"\n"}' \
  >"$work/watch.out" 2>"$work/watch.err" &
watch_pid=$!
pids+=("$watch_pid")
wait_line "$work/watch.out" "default " || fail "the watch lists the namespaces" "$(cat "$work/watch.err")"
"${admin[@]}" create ns before-term >/dev/null
if wait_line "$work/watch.out" "before-term "; then pass "the watch is open before the SIGTERM"; else
  fail "the watch is open before the SIGTERM" "$(cat "$work/watch.out" "$work/watch.err")"; fi

(
  for i in $(seq 1 400); do
    [ -e "$work/stop-loop" ] && break
    after=0; [ -e "$work/termed" ] && after=1
    if timeout 60 kubectl get ns >/dev/null 2>>"$work/loop.err"; then echo "ok $after" >>"$work/loop.out"
    else echo "FAIL $after $i" >>"$work/loop.out"; fi
  done
) &
loop_pid=$!
pids+=("$loop_pid")
wait_count "$work/loop.out" '^ok 0' 2 || fail "the kubectl loop runs before the SIGTERM" "$(cat "$work/loop.err")"

kill -TERM "$victim_pid"
touch "$work/termed"
if wait_line "$sandbox/logs/agent.log" "is draining; GOAWAY on 1 session(s)" 30; then
  pass "the agent got the drain notice and sent GOAWAY on the session"
else fail "the agent got the drain notice and sent GOAWAY on the session" "$(tail -20 "$sandbox/logs/agent.log")"; fi
for n in 1 2 3 4 5; do "${admin[@]}" create ns "after-term-$n" >/dev/null; done
"${admin[@]}" create ns last-one >/dev/null
if wait_line "$work/watch.out" "last-one " 90; then pass "the watch delivers objects created after the SIGTERM"; else
  fail "the watch delivers objects created after the SIGTERM" "$(cat "$work/watch.out" "$work/watch.err")"; fi
missing=() twice=()
for n in after-term-1 after-term-2 after-term-3 after-term-4 after-term-5 last-one; do
  c="$(grep -c "^$n " "$work/watch.out")"
  [ "$c" -eq 0 ] && missing+=("$n")
  [ "$c" -gt 1 ] && twice+=("$n")
done
dups="$(sort "$work/watch.out" | uniq -d)"
if [ ${#missing[@]} -eq 0 ] && [ ${#twice[@]} -eq 0 ] && [ -z "$dups" ]; then
  pass "every object created after the SIGTERM arrived exactly once, no event twice"
else fail "every object created after the SIGTERM arrived exactly once, no event twice" \
  "missing: ${missing[*]}" "more than once: ${twice[*]}" "duplicate lines: $dups" "$(cat "$work/watch.out")"; fi

wait_count "$work/loop.out" '^ok 1' 3 90 || true
touch "$work/stop-loop"
wait "$loop_pid" 2>/dev/null
after_term="$(grep -c ' 1' "$work/loop.out")"
failed="$(grep -c '^FAIL' "$work/loop.out")"
if [ "$failed" -eq 0 ] && [ "$after_term" -ge 3 ]; then
  pass "kubectl get ns across the SIGTERM: $(wc -l <"$work/loop.out") runs, $after_term after it, none failed"
else fail "kubectl get ns across the SIGTERM has no failed run" "$failed failed, $after_term after the SIGTERM" \
  "$(tr '\n' ' ' <"$work/loop.out")" "$(tail -5 "$work/loop.err")"; fi

survivors=0
for i in 0 1 2; do [ "$i" -ne "$victim" ] && survivors=$((survivors + $(paired $i))); done
if [ "$survivors" -ge 1 ]; then pass "new sessions are on surviving replicas"; else
  fail "new sessions are on surviving replicas" "paired on survivors: $survivors"; fi
# The watch's session is still spliced: the draining replica waits for it.
if kill -0 "$victim_pid" 2>/dev/null && kill -0 "$watch_pid" 2>/dev/null; then
  pass "the draining replica keeps splicing the session the watch is on"
else fail "the draining replica keeps splicing the session the watch is on" "$(tail -20 "$victim_log")"; fi

# The watch ends: its session has no stream left and closes by itself; the
# replica counts it drained and stops, long before its drain timeout.
kill "$watch_pid" 2>/dev/null
if wait_line "$victim_log" "drain: 1 rendezvous ended by themselves, 0 cut" 60; then
  pass "the replica drained the session (not cut)"
else fail "the replica drained the session (not cut)" "$(grep 'drain' "$victim_log")"; fi
if wait_line "$victim_log" "relay stopped" 30; then pass "the replica stops once drained"; else
  fail "the replica stops once drained" "$(tail -10 "$victim_log")"; fi
check "kubectl get ns after the replica stopped" "default" kubectl get ns

[ "$failures" -eq 0 ] || { echo "$failures check(s) failed"; exit 1; }
echo "all checks passed"
