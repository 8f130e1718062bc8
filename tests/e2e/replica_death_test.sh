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

# A watch, established (an object created now reaches it) before the kill.
timeout 300 kubectl get ns -w -o jsonpath='{.metadata.name} {.metadata.resourceVersion}{"\n"}' \
  >"$work/watch.out" 2>"$work/watch.err" &
watch_pid=$!
pids+=("$watch_pid")
wait_line "$work/watch.out" "default " || fail "the watch lists the namespaces" "$(cat "$work/watch.err")"
"${admin[@]}" create ns before-kill >/dev/null
if wait_line "$work/watch.out" "before-kill "; then pass "the watch is open before the kill"; else
  fail "the watch is open before the kill" "$(cat "$work/watch.out" "$work/watch.err")"; fi

# kubectl get ns in a loop across the kill: each iteration notes whether it
# started after the kill. Bounded in count; stopped by a file.
(
  for i in $(seq 1 400); do
    [ -e "$work/stop-loop" ] && break
    after=0; [ -e "$work/killed" ] && after=1
    if timeout 60 kubectl get ns >/dev/null 2>>"$work/loop.err"; then echo "ok $after" >>"$work/loop.out"
    else echo "FAIL $after $i" >>"$work/loop.out"; fi
  done
) &
loop_pid=$!
pids+=("$loop_pid")
wait_count "$work/loop.out" '^ok 0' 2 || fail "the kubectl loop runs before the kill" "$(cat "$work/loop.err")"

kill -KILL "$(cat "$sandbox/pids/relay-$victim.pid")"
touch "$work/killed"
for n in 1 2 3 4 5; do "${admin[@]}" create ns "after-kill-$n" >/dev/null; done
"${admin[@]}" create ns last-one >/dev/null
if wait_line "$work/watch.out" "last-one " 90; then pass "the watch delivers objects created after the kill"; else
  fail "the watch delivers objects created after the kill" "$(cat "$work/watch.out" "$work/watch.err")"; fi
kill -0 "$watch_pid" 2>/dev/null && pass "kubectl get -w is still running" ||
  fail "kubectl get -w is still running" "$(cat "$work/watch.err")"
missing=() twice=()
for n in after-kill-1 after-kill-2 after-kill-3 after-kill-4 after-kill-5 last-one; do
  c="$(grep -c "^$n " "$work/watch.out")"
  [ "$c" -eq 0 ] && missing+=("$n")
  [ "$c" -gt 1 ] && twice+=("$n")
done
dups="$(sort "$work/watch.out" | uniq -d)"
if [ ${#missing[@]} -eq 0 ] && [ ${#twice[@]} -eq 0 ] && [ -z "$dups" ]; then
  pass "every object created after the kill arrived exactly once, no event twice"
else fail "every object created after the kill arrived exactly once, no event twice" \
  "missing: ${missing[*]}" "more than once: ${twice[*]}" "duplicate lines: $dups" "$(cat "$work/watch.out")"; fi
if grep -q "resumed" "$work/proxy.err"; then pass "the proxy resumed the watch on a new session"; else
  fail "the proxy resumed the watch on a new session" "$(tail -20 "$work/proxy.err")"; fi

wait_count "$work/loop.out" '^ok 1' 3 90 || true
touch "$work/stop-loop"
wait "$loop_pid" 2>/dev/null
after_kill="$(grep -c ' 1' "$work/loop.out")"
failed="$(grep -c '^FAIL' "$work/loop.out")"
if [ "$failed" -eq 0 ] && [ "$after_kill" -ge 3 ]; then
  pass "kubectl get ns across the kill: $(wc -l <"$work/loop.out") runs, $after_kill after it, none failed"
else fail "kubectl get ns across the kill has no failed run" "$failed failed, $after_kill after the kill" \
  "$(cat "$work/loop.out" | tr '\n' ' ')" "$(tail -5 "$work/loop.err")"; fi

survivors=0
for i in 0 1 2; do [ "$i" -ne "$victim" ] && survivors=$((survivors + $(paired $i))); done
[ "$survivors" -ge 1 ] && pass "the new session is on a surviving replica" ||
  fail "the new session is on a surviving replica" "paired on survivors: $survivors"

[ "$failures" -eq 0 ] || { echo "$failures check(s) failed"; exit 1; }
echo "all checks passed"
