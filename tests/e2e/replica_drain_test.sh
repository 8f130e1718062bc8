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

replica_watch_start term "the SIGTERM"
kill -TERM "$victim_pid"
touch "$work/lost"
if wait_line "$sandbox/logs/agent.log" "is draining; GOAWAY on 1 session(s)" 30; then
  pass "the agent got the drain notice and sent GOAWAY on the session"
else fail "the agent got the drain notice and sent GOAWAY on the session" "$(tail -20 "$sandbox/logs/agent.log")"; fi
replica_watch_check term "the SIGTERM"
replica_loop_check "the SIGTERM"
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
