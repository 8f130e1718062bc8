#!/usr/bin/env bash
# A relay replica killed with -9 under a running kubectl: three replicas on a
# real etcd behind one balanced address, the proxy's session on one of them.
# kubectl get -w keeps its watch (every object created after the kill arrives
# exactly once, none twice) and a loop of kubectl get ns across the kill has
# no failed command. Usage: replica_death_test.sh BIN_DIR
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:?usage: replica_death_test.sh BIN_DIR}"
command -v etcd >/dev/null || { echo "SKIP  etcd is not installed (apt-get install etcd-server)"; exit 77; }
command -v haproxy >/dev/null || { echo "SKIP  haproxy is not installed (scripts/setup.sh installs it)"; exit 77; }
# shellcheck source=tests/e2e/lib.sh
source "$root/tests/e2e/lib.sh"
e2e_begin replica-death

replicas_up

replica_watch_start kill "the kill"
kill -KILL "$(cat "$sandbox/pids/relay-$victim.pid")"
touch "$work/lost"
replica_watch_check kill "the kill"
kill -0 "$watch_pid" 2>/dev/null && pass "kubectl get -w is still running" ||
  fail "kubectl get -w is still running" "$(cat "$work/watch.err")"
if grep -q "resumed" "$work/proxy.err"; then pass "the proxy resumed the watch on a new session"; else
  fail "the proxy resumed the watch on a new session" "$(tail -20 "$work/proxy.err")"; fi
replica_loop_check "the kill"

[ "$failures" -eq 0 ] || { echo "$failures check(s) failed"; exit 1; }
echo "all checks passed"
