#!/usr/bin/env bash
# The proxy (connectedk8s proxy) as a process, against the local sandbox
# (scripts/sandbox.sh): how it starts and stops, its flags for secrets, what
# its child command inherits, and relay connect tokens at the shortest
# lifetime the relay's management API issues (30 s).
#
# Usage: proxy_client_test.sh BIN_DIR lifecycle|renewal|foreign-agent
#   lifecycle  200 start/stop cycles (SIGTERM and SIGINT), each must exit 0;
#              listen failures; --token-file; the child's environment
#   renewal    30 s connect tokens: a `kubectl logs -f` opened first keeps
#              streaming across several token lifetimes, and new requests
#              keep working, with the default --refresh-interval
#   foreign-agent  the relay's registry pins another key than the agent's:
#              the proxy refuses the agent over either transport, naming the
#              cluster and both pins, and nothing reaches the agent
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:?usage: proxy_client_test.sh BIN_DIR lifecycle|renewal|foreign-agent}"
mode="${2:?usage: proxy_client_test.sh BIN_DIR lifecycle|renewal|foreign-agent}"
# shellcheck source=tests/e2e/lib.sh
source "$root/tests/e2e/lib.sh"
e2e_begin proxy

# wait_exit PID: the exit status of PID, killing it after 30 s (status 999).
wait_exit() {
  for _ in $(seq 1 300); do
    kill -0 "$1" 2>/dev/null || { wait "$1"; return $?; }
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null
  return 255
}

if [ "$mode" = renewal ]; then export SANDBOX_CONNECT_TOKEN_SECONDS=30; fi
if [ "$mode" = foreign-agent ]; then
  # The registry pins this key; the agent runs with its own.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=the registered agent" \
    -keyout "$work/registered.key" -out "$work/registered.crt" 2>/dev/null
  export SANDBOX_REGISTERED_AGENT_CERT="$work/registered.crt"
fi
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

  # --- a port another program holds is ClientProxyPortInUse; nothing is
  # written (a port a proxy for the same cluster holds is refused naming that
  # proxy: multi_cluster_test.sh)
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => console.log(s.address().port))' \
    >"$work/busy.port" 2>"$work/busy.err" &
  local busy=$!
  pids+=($busy)
  if wait_file "$work/busy.port" "$busy"; then
    local port
    port="$(cat "$work/busy.port")"
    check_fails "a port in use is ClientProxyPortInUse" "127.0.0.1:$port is already in use (ClientProxyPortInUse)" \
      "$bin/connectedk8s" proxy -n demo -g sandbox -f "$work/other-kubeconfig" --port "$port"
    [ ! -e "$work/other-kubeconfig" ] && pass "nothing is written when the port is in use" ||
      fail "nothing is written when the port is in use"
  else
    fail "a program holds a port" "$(cat "$work/busy.err")"
  fi
  kill -TERM "$busy" 2>/dev/null; wait "$busy" 2>/dev/null

  # --- the service-account token from a file or standard input, not argv
  printf '%s\n' "$SANDBOX_CI_TOKEN" >"$work/sa.token"; chmod 600 "$work/sa.token"
  check "--token-file FILE: the command runs as the service account" "system:serviceaccount:default:ci" \
    env -u KUBECONFIG "$bin/connectedk8s" proxy -n demo -g sandbox --port 0 --token-file "$work/sa.token" -- kubectl auth whoami
  check "--token-file -: the token from standard input" "system:serviceaccount:default:ci" \
    sh -c "printf '%s\n' '$SANDBOX_CI_TOKEN' | env -u KUBECONFIG '$bin/connectedk8s' proxy -n demo -g sandbox --port 0 --token-file - -- kubectl auth whoami"
  check_fails "--token-file with an empty file is refused" "is empty" \
    env -u KUBECONFIG "$bin/connectedk8s" proxy -n demo -g sandbox --port 0 --token-file /dev/null -- true
  check_fails "--token and --token-file together are refused" "use one of them" \
    env -u KUBECONFIG "$bin/connectedk8s" proxy -n demo -g sandbox --port 0 --token x --token-file "$work/sa.token" -- true
  check "--token still works and warns that the token is visible" "other local users can read it" \
    env -u KUBECONFIG "$bin/connectedk8s" proxy -n demo -g sandbox --port 0 --token "$SANDBOX_CI_TOKEN" -- kubectl auth whoami

  # --- the command after -- inherits no credential
  local envout
  envout="$(env -u KUBECONFIG SA_TOKEN="$SANDBOX_CI_TOKEN" AZURE_CLIENT_CERTIFICATE_PASSWORD=pw AZURE_FEDERATED_TOKEN=fed \
    ACTIONS_ID_TOKEN_REQUEST_TOKEN=gh KEEP_ME=1 timeout 60 "$bin/connectedk8s" proxy -n demo -g sandbox --port 0 \
    --token-file "$work/sa.token" -- env 2>/dev/null)"
  if [[ "$envout" == *"KEEP_ME=1"* && "$envout" == *"KUBECONFIG="* && "$envout" == *"AZURE_CLIENT_ID="* ]]; then
    pass "the command inherits the rest of the environment"
  else
    fail "the command inherits the rest of the environment" "$envout"
  fi
  local leaked=""
  for v in AZURE_CLIENT_SECRET AZURE_CLIENT_CERTIFICATE_PASSWORD AZURE_FEDERATED_TOKEN ACTIONS_ID_TOKEN_REQUEST_TOKEN SA_TOKEN; do
    grep -q "^$v=" <<<"$envout" && leaked="$leaked $v"
  done
  grep -qF -- "$SANDBOX_CI_TOKEN" <<<"$envout" && leaked="$leaked (the service-account token's value)"
  grep -qF -- "$AZURE_CLIENT_SECRET" <<<"$envout" && leaked="$leaked (the client secret's value)"
  [ -z "$leaked" ] && pass "the command inherits no credential variable" || fail "the command inherits no credential variable" "$leaked"
}

renewal() {
  # The default --refresh-interval (60 s) is longer than the token's life:
  # the proxy must schedule the renewal by the token's expiry, not the tick.
  local kc="$work/kubeconfig"
  "$bin/connectedk8s" -v proxy -n demo -g sandbox -f "$kc" --port 0 --ready-file "$work/proxy.ready" \
    >"$work/proxy.out" 2>"$work/proxy.err" &
  local proxy_pid=$!
  pids+=($proxy_pid)
  if wait_file "$work/proxy.ready" "$proxy_pid"; then pass "proxy starts with 30 s relay connect tokens"; else
    fail "proxy starts with 30 s relay connect tokens" "$(cat "$work/proxy.err")"; return; fi
  export KUBECONFIG="$kc"

  timeout 150 kubectl logs -f web-0 >"$work/long-logs.out" 2>&1 &
  local long_logs=$!
  pids+=($long_logs)
  # Four token lifetimes; a request every 10 s, each must work.
  local deadline=$((SECONDS + 120)) n=0 req_failures=0 last=""
  while [ $SECONDS -lt $deadline ]; do
    n=$((n + 1))
    out="$(timeout 30 kubectl get ns 2>&1)" || { req_failures=$((req_failures + 1)); last="$out"; }
    sleep 10
  done
  [ $req_failures -eq 0 ] && pass "every request over 4 token lifetimes works ($n requests)" ||
    fail "every request over 4 token lifetimes works" "$req_failures of $n failed" "$last"
  check "a request after 4 token lifetimes works" "default" kubectl get ns
  if kill -0 "$long_logs" 2>/dev/null; then
    local before after
    before=$(wc -l <"$work/long-logs.out")
    for _ in $(seq 1 50); do after=$(wc -l <"$work/long-logs.out"); [ "$after" -gt "$before" ] && break; sleep 0.1; done
    [ "$after" -gt "$before" ] && pass "kubectl logs -f opened first still streams after 4 token lifetimes" ||
      fail "kubectl logs -f opened first still streams after 4 token lifetimes" "$(tail -3 "$work/long-logs.out")"
  else
    fail "kubectl logs -f opened first still streams after 4 token lifetimes" "it ended:" "$(tail -5 "$work/long-logs.out")"
  fi
  kill "$long_logs" 2>/dev/null; wait "$long_logs" 2>/dev/null
  local renewals
  renewals=$(grep -c "relay token renewed" "$work/proxy.err")
  [ "$renewals" -ge 3 ] && pass "the proxy renewed the relay connect token ($renewals times)" ||
    fail "the proxy renewed the relay connect token at least 3 times" "$renewals" "$(tail -5 "$work/proxy.err")"
  if grep -q "token expired" "$work/proxy.err" "$sandbox/logs/relay.log"; then
    fail "no tunnel reached its token's expiry" "$(grep -h "token expired" "$work/proxy.err" "$sandbox/logs/relay.log" | head -3)"
  else
    pass "no tunnel reached its token's expiry"
  fi
}

foreign_agent() {
  local registered agent t out rc
  registered="$("$bin/clusterconnect-agent" --print-key-pin --identity-cert-file "$work/registered.crt")"
  agent="$("$bin/clusterconnect-agent" --print-key-pin --identity-cert-file "$sandbox/state/agent-identity.crt")"
  printf '%s\n' "$SANDBOX_CI_TOKEN" >"$work/ci.token"
  chmod 600 "$work/ci.token"
  for t in tls ws; do
    out="$(timeout 90 "$bin/connectedk8s" proxy -n demo -g sandbox --transport "$t" --token-file "$work/ci.token" \
      -f "$work/foreign-$t.kubeconfig" --port 0 -- kubectl get ns 2>&1)"; rc=$?
    if [ $rc -ne 0 ] && [[ "$out" == *"sandbox/demo"* ]] && [[ "$out" == *"sha256:$agent"* ]] &&
       [[ "$out" == *"sha256:$registered"* ]] && [[ "$out" == *"cannot reach the cluster's agent"* ]]; then
      pass "$t: the proxy refuses an agent whose key is not the registered one, naming the cluster and both pins"
    else
      fail "$t: the proxy refuses an agent whose key is not the registered one, naming the cluster and both pins" \
        "exit $rc" "$out"
    fi
  done
  if [ -s "$sandbox/logs/agent-audit.jsonl" ]; then
    fail "nothing reached the agent" "$(head -3 "$sandbox/logs/agent-audit.jsonl")"
  else
    pass "nothing reached the agent (its audit log is empty)"
  fi
}

case "$mode" in
  lifecycle) lifecycle ;;
  renewal) renewal ;;
  foreign-agent) foreign_agent ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac

echo
if [ "$failures" -eq 0 ]; then echo "proxy_client_test $mode: all checks passed"; else echo "proxy_client_test $mode: $failures check(s) failed"; fi
exit $(( failures > 0 ))
