# shellcheck shell=bash
# What the end-to-end scripts share, sourced after they set `root`:
#   e2e_begin NAME  a work directory /tmp/cc-NAME.XXXXXX with $sandbox in it;
#                   on exit, the PIDs in `pids` are stopped, the sandbox (and
#                   those listed in `sandboxes`) taken down and the work
#                   directory removed (kept on failure)
#   pass, fail      PASS/FAIL lines; `failures` counts the failures
#   check, check_fails NAME WANT CMD...  CMD (bounded by $cmd_timeout seconds)
#                   succeeds / fails and its output holds WANT
#   wait_file FILE [PID]   FILE is non-empty (at most 60 s; gives up when PID exits)
#   wait_line FILE TEXT [SECONDS], wait_count FILE PATTERN N [SECONDS]
#   replicas_up [VAR=VALUE...]  three relay replicas on etcd (the sandbox with
#                   SANDBOX_REPLICAS=3 and the given settings), `admin` (kubectl
#                   straight at the stand-in API server as its admin), a proxy
#                   on them with KUBECONFIG pointing at it, and `victim`: the
#                   replica that carries the proxy's one session
#   paired I        rendezvous replica I has paired (from its metrics)
#   json FILE KEY   a top-level value of a JSON file
# Waits poll for a file's content, which is the event itself; each is bounded.

: "${root:?set root before sourcing lib.sh}"
cmd_timeout=30
pids=()
sandboxes=()
failures=0

e2e_begin() {
  work="$(mktemp -d "/tmp/cc-$1.XXXXXX")"
  sandbox="$work/sandbox"
  # kubectl's discovery cache is keyed by host:port; a port reused from an
  # earlier test would otherwise answer discovery from that test's cache.
  export KUBECACHEDIR="$work/kube-cache"
  trap e2e_cleanup EXIT
}

e2e_cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  for p in "$sandbox" "${sandboxes[@]}"; do "$root/scripts/sandbox.sh" down "$p" >/dev/null 2>&1; done
  if [ "$failures" -eq 0 ]; then rm -rf "$work"; else echo "logs kept in $work" >&2; fi
}

pass() { printf 'PASS  %s\n' "$1"; }
fail() {
  printf 'FAIL  %s\n' "$1"; shift
  [ $# -gt 0 ] && printf '      %s\n' "$@" | head -30
  failures=$((failures + 1))
}
check() {
  local name="$1" want="$2"; shift 2
  local out rc
  out="$(timeout "$cmd_timeout" "$@" 2>&1)"; rc=$?
  if [ $rc -eq 0 ] && [[ "$out" == *"$want"* ]]; then pass "$name"; else fail "$name" "exit $rc" "$out"; fi
}
check_fails() {
  local name="$1" want="$2"; shift 2
  local out rc
  out="$(timeout "$cmd_timeout" "$@" 2>&1)"; rc=$?
  if [ $rc -ne 0 ] && [[ "$out" == *"$want"* ]]; then pass "$name"; else fail "$name" "exit $rc" "$out"; fi
}
wait_file() {
  for _ in $(seq 1 600); do
    [ -s "$1" ] && return 0
    [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null && return 1
    sleep 0.1
  done
  return 1
}
wait_line() {
  local deadline=$((SECONDS + ${3:-60}))
  while [ $SECONDS -lt $deadline ]; do grep -qsF -- "$2" "$1" && return 0; sleep 0.1; done
  return 1
}
wait_count() {
  local deadline=$((SECONDS + ${4:-60}))
  while [ $SECONDS -lt $deadline ]; do
    local c; c="$(grep -cE -- "$2" "$1" 2>/dev/null)"
    [ "${c:-0}" -ge "$3" ] && return 0
    sleep 0.1
  done
  return 1
}

json() { node -e 'const v=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")); console.log(v[process.argv[2]])' "$1" "$2"; }

paired() {  # rendezvous paired by replica $1, either form
  curl -s --max-time 10 "http://127.0.0.1:$(json "$state/relay-$1.ready" metrics_port)/metrics" |
    awk '$1 == "clusterconnect_relay_rendezvous_total{outcome=\"paired\"}" || $1 == "clusterconnect_relay_ws_rendezvous_total{outcome=\"paired\"}" { n += $2 }
         END { print n + 0 }'
}

replicas_up() {
  env SANDBOX_REPLICAS=3 SANDBOX_REPLICA_TTL=2 "$@" "$root/scripts/sandbox.sh" up "$sandbox" "$bin" ||
    { failures=1; echo "FAIL  sandbox did not start"; exit 1; }
  # shellcheck disable=SC1091
  source "$sandbox/env.sh"
  state="$sandbox/state"
  # Objects are created straight at the stand-in API server, as its admin:
  # they do not depend on the chain under test.
  local admin_token
  admin_token="$(node -e 'const t=JSON.parse(require("fs").readFileSync(process.argv[1])).tokens.find(t=>t.user==="sandbox-admin"); console.log(t.token)' "$state/apiserver-tokens.json")"
  admin=(kubectl --server "https://127.0.0.1:$(json "$state/apiserver.ready" port)"
    --certificate-authority "$state/apiserver-ca.crt" --token "$admin_token")
  check "the stand-in API server answers its admin directly" "default" "${admin[@]}" get ns

  local kc="$work/kubeconfig"
  "$bin/connectedk8s" proxy -n demo -g sandbox -f "$kc" --port 0 --ready-file "$work/proxy.ready" \
    >"$work/proxy.out" 2>"$work/proxy.err" &
  pids+=($!)
  if wait_file "$work/proxy.ready"; then pass "proxy starts against three replicas"; else
    fail "proxy starts against three replicas" "$(cat "$work/proxy.err")"; exit 1; fi
  export KUBECONFIG="$kc"
  check "kubectl get ns through the balanced replicas" "default" kubectl get ns

  # The replica that carries the proxy's session is the one that paired its
  # rendezvous (the proxy holds one session).
  local i total=0
  victim=-1 before=()
  for i in 0 1 2; do
    before[i]="$(paired "$i")"
    total=$((total + before[i]))
    [ "${before[$i]}" -gt 0 ] && victim=$i
  done
  if [ "$total" -eq 1 ] && [ "$victim" -ge 0 ]; then pass "one replica (r$victim) carries the proxy's session"; else
    fail "one replica carries the proxy's session" "paired per replica: ${before[*]}"; exit 1; fi
}

# A replica is lost under a running kubectl (replica_*_test.sh): a watch on
# namespaces and a loop of kubectl get ns run across EVENT, a word for the
# loss ("kill", "term") that names the objects made around it; LABEL says it
# in the checks ("the kill").
replica_watch_start() {  # EVENT LABEL
  timeout 300 kubectl get ns -w -o jsonpath='{.metadata.name} {.metadata.resourceVersion}{"\n"}' \
    >"$work/watch.out" 2>"$work/watch.err" &
  watch_pid=$!
  pids+=("$watch_pid")
  wait_line "$work/watch.out" "default " || fail "the watch lists the namespaces" "$(cat "$work/watch.err")"
  "${admin[@]}" create ns "before-$1" >/dev/null
  if wait_line "$work/watch.out" "before-$1 "; then pass "the watch is open before $2"; else
    fail "the watch is open before $2" "$(cat "$work/watch.out" "$work/watch.err")"; fi

  # Each run notes whether it started after the loss (the file "$work/lost").
  # Bounded in count; stopped by a file.
  (
    for i in $(seq 1 400); do
      [ -e "$work/stop-loop" ] && break
      after=0; [ -e "$work/lost" ] && after=1
      if timeout 60 kubectl get ns >/dev/null 2>>"$work/loop.err"; then echo "ok $after" >>"$work/loop.out"
      else echo "FAIL $after $i" >>"$work/loop.out"; fi
    done
  ) &
  loop_pid=$!
  pids+=("$loop_pid")
  wait_count "$work/loop.out" '^ok 0' 2 || fail "the kubectl loop runs before $2" "$(cat "$work/loop.err")"
}

# After the loss: objects made now reach the watch, each exactly once.
replica_watch_check() {  # EVENT LABEL
  local n c
  for n in 1 2 3 4 5; do "${admin[@]}" create ns "after-$1-$n" >/dev/null; done
  "${admin[@]}" create ns last-one >/dev/null
  if wait_line "$work/watch.out" "last-one " 90; then pass "the watch delivers objects created after $2"; else
    fail "the watch delivers objects created after $2" "$(cat "$work/watch.out" "$work/watch.err")"; fi
  local missing=() twice=()
  for n in "after-$1-1" "after-$1-2" "after-$1-3" "after-$1-4" "after-$1-5" last-one; do
    c="$(grep -c "^$n " "$work/watch.out")"
    [ "$c" -eq 0 ] && missing+=("$n")
    [ "$c" -gt 1 ] && twice+=("$n")
  done
  local dups
  dups="$(sort "$work/watch.out" | uniq -d)"
  if [ ${#missing[@]} -eq 0 ] && [ ${#twice[@]} -eq 0 ] && [ -z "$dups" ]; then
    pass "every object created after $2 arrived exactly once, no event twice"
  else fail "every object created after $2 arrived exactly once, no event twice" \
    "missing: ${missing[*]}" "more than once: ${twice[*]}" "duplicate lines: $dups" "$(cat "$work/watch.out")"; fi
}

# The loop is stopped (after at least three runs that began after the loss):
# no run failed; and new sessions were paired by the other replicas.
replica_loop_check() {  # LABEL
  wait_count "$work/loop.out" '^ok 1' 3 90 || true
  touch "$work/stop-loop"
  wait "$loop_pid" 2>/dev/null
  local after failed
  after="$(grep -c ' 1' "$work/loop.out")"
  failed="$(grep -c '^FAIL' "$work/loop.out")"
  if [ "$failed" -eq 0 ] && [ "$after" -ge 3 ]; then
    pass "kubectl get ns across $1: $(wc -l <"$work/loop.out") runs, $after after it, none failed"
  else fail "kubectl get ns across $1 has no failed run" "$failed failed, $after after $1" \
    "$(tr '\n' ' ' <"$work/loop.out")" "$(tail -5 "$work/loop.err")"; fi
  local i survivors=0
  for i in 0 1 2; do [ "$i" -ne "$victim" ] && survivors=$((survivors + $(paired "$i"))); done
  if [ "$survivors" -ge 1 ]; then pass "new sessions are on surviving replicas"; else
    fail "new sessions are on surviving replicas" "paired on survivors: $survivors"; fi
}
