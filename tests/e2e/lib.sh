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
