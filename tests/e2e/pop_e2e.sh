#!/usr/bin/env bash
# Proof-of-possession end to end: kubectl -> connectedk8s proxy --pop -> relay
# -> clusterconnect-agent --pop -> stand-in API server, with PoP tokens from
# the test identity provider. A proxy without --pop is refused by the agent.
# Usage: pop_e2e.sh BIN_DIR
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:?usage: pop_e2e.sh BIN_DIR}"
# shellcheck source=tests/e2e/lib.sh
source "$root/tests/e2e/lib.sh"
e2e_begin pop-e2e

# The sandbox's cluster is demo in resource group sandbox of scripts/sandbox.sh's
# subscription; the agent is told its resource ID in another letter case, as
# ARM IDs are compared.
subscription="00000000-0000-0000-0000-00000000c0de"
export SANDBOX_AGENT_ARGS="--clock-skew 2 --pop --cluster-resource-id /subscriptions/$subscription/resourceGroups/Sandbox/providers/Microsoft.Kubernetes/connectedClusters/demo"
"$root/scripts/sandbox.sh" up "$sandbox" "$bin" || { failures=1; echo "FAIL  sandbox did not start"; exit 1; }
# shellcheck disable=SC1091
source "$sandbox/env.sh"
sp_oid="$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).clients.secret.oid)' "$sandbox/state/idp/state.json")"

start_proxy() {  # NAME EXTRA_ARGS...
  local name="$1"; shift
  "$bin/connectedk8s" proxy -n demo -g sandbox -f "$work/$name.kubeconfig" --port 0 --ready-file "$work/$name.ready" "$@" \
    >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  if wait_file "$work/$name.ready"; then pass "proxy $name starts"; else fail "proxy $name starts" "$(cat "$work/$name.err")"; exit 1; fi
}

# Access tokens live 20 s, so the PoP token is renewed (bound to the same key) while the proxy runs.
curl -s -X POST -H 'content-type: application/json' -d '{"seconds":20}' "$SANDBOX_IDP/__admin/access-token-lifetime" >/dev/null
proxy_started=$SECONDS
start_proxy pop --pop --refresh-interval 2
check "the proxy signed in for a proof-of-possession token" "proof-of-possession" cat "$work/pop.err"
check "kubectl get ns through the PoP chain" "default" env KUBECONFIG="$work/pop.kubeconfig" kubectl get ns
check "kubectl get pods through the PoP chain" "web-0" env KUBECONFIG="$work/pop.kubeconfig" kubectl get pods
check "the agent impersonated the PoP token's identity" "$sp_oid" env KUBECONFIG="$work/pop.kubeconfig" kubectl auth whoami
check "kubectl exec through the PoP chain" "hi there" env KUBECONFIG="$work/pop.kubeconfig" kubectl exec web-0 -- echo hi there
# Every request is signed anew: many requests in a row, none refused as a replay.
ok=0
for _ in $(seq 1 10); do env KUBECONFIG="$work/pop.kubeconfig" timeout 30 kubectl get ns >/dev/null 2>&1 && ok=$((ok + 1)); done
[ "$ok" -eq 10 ] && pass "ten requests in a row, each with its own signature" || fail "ten requests in a row" "$ok of 10 passed"

# The tokens are real (wall clock): wait until the first PoP token has expired
# (a lower bound, never an upper one) and the proxy has renewed it.
for _ in $(seq 1 900); do grep -qs "access token renewed" "$work/pop.err" && break; sleep 0.1; done
check "the proxy renewed its PoP token" "access token renewed" cat "$work/pop.err"
while [ $((SECONDS - proxy_started)) -lt $((20 + 2 + 1)) ]; do sleep 0.5; done
check "after the first PoP token expired, requests signed with the renewed one work" "web-0" \
  env KUBECONFIG="$work/pop.kubeconfig" kubectl get pods

start_proxy bearer
check_fails "kubectl with a bearer token is refused by the agent in PoP mode" "provide credentials" \
  env KUBECONFIG="$work/bearer.kubeconfig" kubectl get ns
# The 401 Status body says why (kubectl does not print it; curl through the same local endpoint does).
kc_get() { KUBECONFIG="$work/bearer.kubeconfig" kubectl config view --raw -o jsonpath="$1"; }
kc_get '{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$work/bearer-ca.pem"
check "the refusal is a 401 Status saying only PoP tokens are accepted" '"code":401' \
  curl -s --cacert "$work/bearer-ca.pem" -H "Authorization: Bearer $(kc_get '{.users[0].user.token}')" "$(kc_get '{.clusters[0].cluster.server}')/api"
check "the Status names what to do" "connectedk8s proxy --pop" \
  curl -s --cacert "$work/bearer-ca.pem" -H "Authorization: Bearer $(kc_get '{.users[0].user.token}')" "$(kc_get '{.clusters[0].cluster.server}')/api"
check "the agent logged the refusal with its reason" "pop_required" cat "$sandbox/logs/agent.log"
if grep -q "$AZURE_CLIENT_SECRET" "$sandbox/logs/agent.log"; then fail "no secret in the agent log"; else pass "no secret in the agent log"; fi
if grep -Eq 'eyJ[A-Za-z0-9_-]{20,}\.eyJ' "$sandbox/logs/agent.log" "$work/pop.err"; then
  fail "no token in the agent's or the proxy's log" "$(grep -Eo 'eyJ[A-Za-z0-9_-]{20,}' "$sandbox/logs/agent.log" | head -2)"
else pass "no token in the agent's or the proxy's log"; fi

[ "$failures" -eq 0 ] && echo "all PoP end-to-end checks passed" || echo "$failures PoP end-to-end check(s) failed"
exit $((failures > 0))
