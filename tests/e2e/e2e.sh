#!/usr/bin/env bash
# End to end with the real kubectl: kubectl -> connectedk8s proxy -> relay ->
# agent -> stand-in API server, signed in as an Entra service principal of the
# test identity provider. Usage: e2e.sh BIN_DIR
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:?usage: e2e.sh BIN_DIR}"
# shellcheck source=tests/e2e/lib.sh
source "$root/tests/e2e/lib.sh"
e2e_begin e2e

# Short-lived tokens prove renewal: the agent allows only 2 s of clock skew,
# access tokens are made to live 20 s below, relay connect tokens 40 s.
export SANDBOX_AGENT_ARGS="--clock-skew 2" SANDBOX_CONNECT_TOKEN_SECONDS=40
"$root/scripts/sandbox.sh" up "$sandbox" "$bin" || { failures=1; echo "FAIL  sandbox did not start"; exit 1; }
# shellcheck disable=SC1091
source "$sandbox/env.sh"
state="$sandbox/state"
sp_oid="$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).clients.secret.oid)' "$state/idp/state.json")"

curl -s -X POST -H 'content-type: application/json' -d '{"seconds":20}' "$SANDBOX_IDP/__admin/access-token-lifetime" >/dev/null

# --- the proxy, as a user runs it (service principal from AZURE_* variables)
kc="$work/kubeconfig"
proxy_started=$SECONDS  # its first tokens are issued after this
"$bin/connectedk8s" proxy -n demo -g sandbox -f "$kc" --port 0 --ready-file "$work/proxy.ready" --refresh-interval 2 \
  >"$work/proxy.out" 2>"$work/proxy.err" &
proxy_pid=$!
pids+=($proxy_pid)
if wait_file "$work/proxy.ready"; then pass "proxy starts and reports ready"; else
  fail "proxy starts and reports ready" "$(cat "$work/proxy.err")"; exit 1; fi
check "ready line names the endpoint, context and file" "context demo in $kc" cat "$work/proxy.err"
[ "$(stat -c %a "$kc")" = 600 ] && pass "kubeconfig is 0600" || fail "kubeconfig is 0600" "$(stat -c %a "$kc")"
export KUBECONFIG="$kc"

check "kubectl get ns" "default" kubectl get ns
check "kubectl get pods" "web-0" kubectl get pods
check "kubectl auth whoami shows the Entra identity the agent impersonated" "$sp_oid" kubectl auth whoami
check "the API server saw the agent impersonating the caller" "\"Impersonate-User\"" \
  grep -m1 "$sp_oid" "$sandbox/logs/apiserver-requests.jsonl"

cat >"$work/cm.yaml" <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata:
  name: e2e-settings
  namespace: default
data:
  greeting: hello through the relay
YAML
check "kubectl apply creates a ConfigMap" "created" kubectl apply -f "$work/cm.yaml"
check "kubectl get returns it" "hello through the relay" kubectl get cm e2e-settings -o jsonpath='{.data.greeting}'
check "kubectl create configmap (protobuf body)" "created" kubectl create configmap e2e-proto --from-literal=a=b

# Watch: start it, wait for the current value (the initial LIST), change the
# object, and the new value must follow the old one.
timeout 120 kubectl get cm e2e-settings -w -o jsonpath='{.data.greeting}{"\n"}' >"$work/watch.out" 2>&1 &
watch_pid=$!
wait_line "$work/watch.out" "hello through the relay"
kubectl patch cm e2e-settings --type merge -p '{"data":{"greeting":"changed while watching"}}' >/dev/null 2>&1
wait_line "$work/watch.out" "changed while watching"
kill "$watch_pid" 2>/dev/null; wait "$watch_pid" 2>/dev/null
if [ "$(grep -v '^$' "$work/watch.out" | head -2 | tr '\n' '|')" = "hello through the relay|changed while watching|" ]; then
  pass "kubectl get -w shows the value, then the change"
else fail "kubectl get -w shows the value, then the change" "$(cat "$work/watch.out")"; fi

# Ten changes, each awaited, arrive in order; their delivery delays (arrival
# here against the stand-in's send time) are printed, not judged: speed is
# measured by scripts/bench.sh.
node "$root/tests/e2e/watch_latency.js" "$sandbox/logs/apiserver-requests.jsonl" >"$work/latency.out" 2>&1
check "kubectl get -w delivers ten changes in order" "changes arrived in order" cat "$work/latency.out"
sed 's/^/      /' "$work/latency.out"

timeout 120 kubectl logs -f web-0 >"$work/logs.out" 2>&1 &
logs_pid=$!
for _ in $(seq 1 600); do [ "$(wc -l <"$work/logs.out")" -ge 5 ] && break; sleep 0.1; done
kill "$logs_pid" 2>/dev/null; wait "$logs_pid" 2>/dev/null
lines=$(wc -l <"$work/logs.out")
[ "$lines" -ge 5 ] && pass "kubectl logs -f streams lines" || fail "kubectl logs -f streams lines" "$(cat "$work/logs.out")"

check "kubectl exec (WebSocket)" "hi there" kubectl exec web-0 -- echo hi there
printf 'line one\nline two\n' >"$work/stdin.txt"
check "kubectl exec -i passes stdin" "line two" sh -c "kubectl exec -i web-0 -- cat <'$work/stdin.txt'"
timeout 30 kubectl exec web-0 -- sh -c 'exit 3' >/dev/null 2>&1
rc=$?; [ $rc -eq 3 ] && pass "kubectl exec returns the command's exit code" || fail "kubectl exec returns the command's exit code" "got $rc"
check "kubectl exec over SPDY" "spdy ok" env KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false kubectl exec web-0 -- echo spdy ok

kubectl port-forward pod/web-0 0:8080 >"$work/pf.out" 2>&1 &
pf=$!; pids+=($pf)
for _ in $(seq 1 100); do grep -qs "Forwarding from 127.0.0.1" "$work/pf.out" && break; sleep 0.1; done
pf_port="$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\).*/\1/p' "$work/pf.out" 2>/dev/null | head -1)"
if [ -n "$pf_port" ]; then
  check "kubectl port-forward carries a connection" "hello from web-0" curl -s --max-time 10 "http://127.0.0.1:$pf_port/"
else
  fail "kubectl port-forward listens" "$(cat "$work/pf.out" 2>/dev/null)"
fi
kill "$pf" 2>/dev/null

audit="$sandbox/logs/agent-audit.jsonl"
# The agent's audit writer gathers records for a few milliseconds: wait for the line.
for _ in $(seq 1 100); do grep -qs "\"user\":\"$sp_oid\"" "$audit" && break; sleep 0.1; done
check "the agent audits each request with the caller" "\"user\":\"$sp_oid\"" tail -n 1 "$audit"
# No credential in any log: JWTs (eyJ...), SAS tokens, and the proxy's local
# session secret (the token in the kubeconfig it wrote).
session_secret="$(kubectl config view --raw --minify -o jsonpath='{.users[0].user.token}')"
logs=("$audit" "$sandbox/logs/agent.log" "$work/proxy.err" "$sandbox/logs/relay.log")
if [ ${#session_secret} -lt 16 ]; then
  fail "the session secret is read from the kubeconfig" "got '${session_secret}'"
elif leaked="$(grep -l -F -e 'eyJ' -e 'SharedAccessSignature' -e 'sig=' -e "$session_secret" "${logs[@]}")"; then
  fail "no token, SAS token or session secret appears in the audit log or any log" "$leaked"
else pass "no token, SAS token or session secret appears in the audit log or any log"; fi
check "agent /readyz is ready" "ok" curl -sf "$SANDBOX_AGENT_HEALTH/readyz"
check "agent /metrics counts requests" "clusterconnect_agent_requests_total{code=\"200\"}" curl -sf "$SANDBOX_AGENT_HEALTH/metrics"
# The stand-in API server offers h2 by ALPN, as kube-apiserver does: the
# agent's requests above went as HTTP/2 streams on a shared connection.
h2_streams="$(curl -sf "$SANDBOX_AGENT_HEALTH/metrics" | awk '$1 == "clusterconnect_agent_upstream_h2_streams_total" { print $2 + 0 }')"
if [ "${h2_streams:-0}" -gt 0 ]; then pass "the agent reached the API server over HTTP/2 ($h2_streams streams)"; else
  fail "the agent reached the API server over HTTP/2" "h2 streams: ${h2_streams:-none}"; fi

check_fails "a caller's own impersonation is refused" "impersonation through the cluster connection is not permitted" \
  kubectl get ns --as=someone-else

# --- the local endpoint refuses anything without the session secret
server="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$work/local-ca.crt"
code="$(curl -s -o /dev/null -w '%{http_code}' --cacert "$work/local-ca.crt" -H 'Authorization: Bearer wrong' "$server/api")"
[ "$code" = 401 ] && pass "a wrong local secret gets 401 locally" || fail "a wrong local secret gets 401 locally" "HTTP $code"
code="$(curl -s -o /dev/null -w '%{http_code}' --cacert "$work/local-ca.crt" "$server/api")"
[ "$code" = 401 ] && pass "no local secret gets 401 locally" || fail "no local secret gets 401 locally" "HTTP $code"

# --- the port is taken: one clear line, nothing written
port="${server##*:}"
check_fails "a port in use is reported with the port" "$port" \
  "$bin/connectedk8s" proxy -n demo -g sandbox -f "$work/other-kubeconfig" --port "$port"
[ ! -e "$work/other-kubeconfig" ] && pass "nothing is written when the port is in use" || fail "nothing is written when the port is in use"

# --- -f - prints the kubeconfig; -o json reports one JSON event per line
timeout 15 "$bin/connectedk8s" --log-format json proxy -n demo -g sandbox -f - --port 0 -o json --ready-file "$work/print.ready" \
  >"$work/print.out" 2>"$work/print.err" &
print_pid=$!
wait_file "$work/print.ready"
kill -TERM "$print_pid" 2>/dev/null; wait "$print_pid"; rc=$?
check "-f - prints a kubeconfig for the context" "current-context: demo" cat "$work/print.out"
check "-o json reports a ready event" '"event":"ready"' cat "$work/print.err"
node -e 'for (const l of require("fs").readFileSync(process.argv[1],"utf8").split("\n").filter(Boolean)) JSON.parse(l)' \
  "$work/print.err" && pass "-o json with --log-format json: every stderr line is JSON" || fail "-o json with --log-format json: every stderr line is JSON" "$(cat "$work/print.err")"
[ $rc -eq 0 ] && pass "SIGTERM stops the proxy with exit code 0" || fail "SIGTERM stops the proxy with exit code 0" "got $rc"

# --- a second SIGTERM during the shutdown (`timeout` and service managers signal
# the process, then its whole group) still ends in the clean stop's 0: a watch
# in flight keeps the shutdown waiting while the second one comes
"$bin/connectedk8s" proxy -n demo -g sandbox -f "$work/kubeconfig-stop" --port 0 --ready-file "$work/stop.ready" \
  >/dev/null 2>"$work/stop.err" &
stop_pid=$!
if wait_file "$work/stop.ready" "$stop_pid"; then
  timeout 60 kubectl --kubeconfig "$work/kubeconfig-stop" get cm e2e-settings -w -o name >"$work/stop-watch.out" 2>&1 &
  stop_watch=$!
  wait_line "$work/stop-watch.out" "configmap/e2e-settings"
  kill -TERM "$stop_pid"
  stopping=0; wait_line "$work/stop.err" "request(s) in flight may finish" && stopping=1
  kill -TERM "$stop_pid" 2>/dev/null
  wait "$stop_pid"; rc=$?
  kill "$stop_watch" 2>/dev/null; wait "$stop_watch" 2>/dev/null
  [ $stopping -eq 1 ] && [ $rc -eq 0 ] && pass "a second SIGTERM during the shutdown still stops the proxy with exit code 0" ||
    fail "a second SIGTERM during the shutdown still stops the proxy with exit code 0" "got $rc; the shutdown's line seen: $stopping" "$(tail -3 "$work/stop.err")"
else fail "the proxy for the second-signal check starts" "$(cat "$work/stop.err")"; fi

# --- service-account token mode
"$bin/connectedk8s" proxy -n demo -g sandbox -f "$work/kubeconfig-sa" --port 0 --token "$SANDBOX_CI_TOKEN" \
  --kube-context demo-sa --ready-file "$work/proxy-sa.ready" >/dev/null 2>"$work/proxy-sa.err" &
pids+=($!)
if wait_file "$work/proxy-sa.ready"; then
  check "--token mode: whoami shows the service account" "system:serviceaccount:default:ci" \
    kubectl --kubeconfig "$work/kubeconfig-sa" auth whoami
  check "--token mode: --kube-context names the context" "demo-sa" kubectl --kubeconfig "$work/kubeconfig-sa" config current-context
else
  fail "--token mode proxy starts" "$(cat "$work/proxy-sa.err")"
fi

# --- CI mode: private kubeconfig, the command's exit status
ci_out="$(env -u KUBECONFIG timeout 60 "$bin/connectedk8s" proxy -n demo -g sandbox --port 0 -- \
  sh -c 'echo "KUBECONFIG=$KUBECONFIG"; kubectl get pods' 2>&1)"; rc=$?
[ $rc -eq 0 ] && [[ "$ci_out" == *web-0* ]] && pass "CI mode runs the command through the proxy" ||
  fail "CI mode runs the command through the proxy" "exit $rc" "$ci_out"
ci_kc="$(sed -n 's/^KUBECONFIG=//p' <<<"$ci_out" | head -1)"
env -u KUBECONFIG timeout 60 "$bin/connectedk8s" proxy -n demo -g sandbox --port 0 -- sh -c 'exit 7' >/dev/null 2>&1
rc=$?; [ $rc -eq 7 ] && pass "CI mode exits with the command's status" || fail "CI mode exits with the command's status" "got $rc"
# CI mode writes a private kubeconfig in its own temp directory: that file,
# its lock and the directory are gone afterwards, and ~/.kube is untouched.
if [ -z "$ci_kc" ] || [ "$ci_kc" = "${KUBECONFIG:-}" ]; then
  fail "CI mode gives the command a private kubeconfig" "KUBECONFIG=$ci_kc"
elif [ -e "$ci_kc.lock" ] || [ -e "$ci_kc" ] || [ -e "$(dirname "$ci_kc")" ] || [ -e "$HOME/.kube/config.lock" ]; then
  fail "CI mode leaves no kubeconfig, lock or directory behind" "$(ls -la "$(dirname "$ci_kc")" 2>&1)"
else pass "CI mode leaves no kubeconfig, lock or directory behind ($(dirname "$ci_kc"))"; fi

# --- tokens expire and are renewed without restarting the proxy or breaking streams
# The tokens are real (the identity provider and the relay run on the wall
# clock), so the claim "after expiry" needs the expiry time to have passed:
# wait until then (a lower bound, never an upper one), and for the renewals.
timeout 120 kubectl logs -f web-0 >"$work/long-logs.out" 2>&1 &
long_logs=$!
# until_elapsed SECONDS: returns once SECONDS have passed since the proxy started.
until_elapsed() { while [ $((SECONDS - proxy_started)) -lt "$1" ]; do sleep 0.5; done; }
wait_line "$work/proxy.err" "access token renewed" 90 || true
check "the proxy renewed the access token" "access token renewed" cat "$work/proxy.err"
until_elapsed $((20 + 2 + 1))  # first access token's lifetime + the agent's clock skew + rounding
check "after the first access token expired, requests still work" "web-0" kubectl get pods
wait_line "$work/proxy.err" "relay token renewed" 90 || true
check "the proxy renewed the relay connect token" "relay token renewed" cat "$work/proxy.err"
until_elapsed $((40 + 1))  # first relay connect token's lifetime + rounding
check "after the first relay connect token expired, requests still work" "default" kubectl get ns
before=$(wc -l <"$work/long-logs.out")
for _ in $(seq 1 300); do [ "$(wc -l <"$work/long-logs.out")" -gt "$before" ] && break; sleep 0.1; done
after=$(wc -l <"$work/long-logs.out")
[ "$after" -gt "$before" ] && pass "a stream opened before the renewals keeps flowing" || fail "a stream opened before the renewals keeps flowing" "$(tail -3 "$work/long-logs.out")"
kill "$long_logs" 2>/dev/null; wait "$long_logs" 2>/dev/null

# --- a principal without a role assignment gets 403 from the management API
cert_path="$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).clients.certificate.certificate_path)' "$state/idp/state.json")"
cert_client="$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).clients.certificate.client_id)' "$state/idp/state.json")"
check_fails "no role assignment: 403 AuthorizationFailed from the management API" "AuthorizationFailed" \
  env -u AZURE_CLIENT_SECRET AZURE_CLIENT_ID="$cert_client" AZURE_CLIENT_CERTIFICATE_PATH="$cert_path" \
  "$bin/connectedk8s" proxy -n demo -g sandbox -f "$work/kubeconfig-cert" --port 0

# --- the agent goes away: kubectl gets a clear error (how fast is bench.sh's business)
agent_pid="$(cat "$sandbox/pids/agent.pid")"
kill -TERM "$agent_pid" 2>/dev/null
for _ in $(seq 1 600); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.1; done
# The relay notices the agent's tunnels close on its own time: ask (bounded)
# until it has; kubectl must then get the clear error, not hang or succeed.
no_agent="(no answer)"
for _ in $(seq 1 120); do
  if no_agent="$(timeout 30 kubectl get ns 2>&1)"; then no_agent="kubectl succeeded: $no_agent"; fi
  [[ "$no_agent" == *"no agent connected"* ]] && break
  sleep 0.5
done
[[ "$no_agent" == *"no agent connected"* ]] && pass "no agent connected: kubectl gets a clear error" ||
  fail "no agent connected: kubectl gets a clear error" "$no_agent"

echo
if [ "$failures" -eq 0 ]; then echo "e2e: all checks passed"; else echo "e2e: $failures check(s) failed"; fi
exit $(( failures > 0 ))
