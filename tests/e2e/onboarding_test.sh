#!/usr/bin/env bash
# connectedk8s show, list and delete with the real binaries, and the manifests
# connect renders under `kubectl apply --dry-run=server`: the sandbox with a
# second cluster (scripts/sandbox.sh; demo in resource group sandbox is
# onboarded with `connectedk8s connect`, second in sandbox2 is in the relay's
# registry and may be read by a principal who may read nothing else).
#   show: the ARM-shaped resource as JSON and as a table;
#   list: by resource group and by subscription, and for the principal who
#         may read only second;
#   delete: asks for --yes; --yes removes the agent's objects through the
#         cluster's API server and the resource at the relay, after which show
#         says not found and exits 1; --relay-only leaves the cluster alone;
#         an absent cluster is a message, not an error;
#   dry run: `connect --dry-run -o yaml` applied with --dry-run=server (client-
#         and server-side) over the installed objects and into a cluster that
#         has only the namespace, and nothing is stored.
# Usage: onboarding_test.sh BIN_DIR
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:?usage: onboarding_test.sh BIN_DIR}"
# shellcheck source=tests/e2e/lib.sh
source "$root/tests/e2e/lib.sh"
e2e_begin onboarding
cmd_timeout=60

# check_exit NAME CODE WANT CMD...: CMD exits CODE and its output holds WANT.
check_exit() {
  local name="$1" code="$2" want="$3"; shift 3
  local out rc
  out="$(timeout 60 "$@" 2>&1)"; rc=$?
  if [ $rc -eq "$code" ] && [[ "$out" == *"$want"* ]]; then pass "$name"; else fail "$name" "exit $rc (want $code)" "$out"; fi
}
# check_js NAME FILE SCRIPT ARGS...: SCRIPT (node; `j` is FILE's JSON, `a` the
# ARGS) evaluates to true.
check_js() {
  local name="$1" file="$2" script="$3"; shift 3
  if node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1])); const a = process.argv.slice(2);
              process.exit(('"$script"') ? 0 : 1)' "$file" "$@" 2>"$work/check_js.err"; then
    pass "$name"
  else
    fail "$name" "$(cat "$file" "$work/check_js.err" 2>/dev/null | head -40)"
  fi
}
field() { node -e 'let v = JSON.parse(require("fs").readFileSync(process.argv[1])); for (const k of process.argv[2].split(".")) v = v[k]; console.log(v)' "$1" "$2"; }
# Requests the stand-in API server of demo has logged so far (a mark).
requests() { wc -l <"$sandbox/logs/apiserver-requests.jsonl"; }

export SANDBOX_SECOND_CLUSTER=1
"$root/scripts/sandbox.sh" up "$sandbox" "$bin" || { failures=1; echo "FAIL  sandbox did not start"; exit 1; }
# shellcheck disable=SC1091
source "$sandbox/env.sh"
state="$sandbox/state"
k8s="$bin/connectedk8s"
admin_kc="$state/cluster-admin.kubeconfig"
sub="$AZURE_SUBSCRIPTION_ID"
demo_id="/subscriptions/$sub/resourceGroups/sandbox/providers/Microsoft.Kubernetes/connectedClusters/demo"
second_id="/subscriptions/$sub/resourceGroups/sandbox2/providers/Microsoft.Kubernetes/connectedClusters/second"
cert_path="$(field "$state/idp/state.json" clients.certificate.certificate_path)"
cert_client="$(field "$state/idp/state.json" clients.certificate.client_id)"
# The principal who may read only cluster second.
as_reader=(env -u AZURE_CLIENT_SECRET AZURE_CLIENT_ID="$cert_client" AZURE_CLIENT_CERTIFICATE_PATH="$cert_path")
kube=(kubectl --kubeconfig "$admin_kc")

# --- show
if timeout 60 "$k8s" show -n demo -g sandbox >"$work/show.json" 2>"$work/show.err"; then
  pass "show -n demo -g sandbox exits 0"
else
  fail "show -n demo -g sandbox exits 0" "$(cat "$work/show.err")"
fi
agent_spki="$(openssl x509 -in "$state/agent-identity.crt" -pubkey -noout | openssl pkey -pubin -outform DER | base64 -w0)"
check_js "show: JSON is ARM's resource (id, name, type, location, tags, identity)" "$work/show.json" \
  'j.id === a[0] && j.name === "demo" && j.type === "Microsoft.Kubernetes/connectedClusters" &&
   typeof j.location === "string" && j.location.length > 0 && typeof j.tags === "object" &&
   j.identity.type === "SystemAssigned" && /^[0-9a-f-]{36}$/.test(j.identity.principalId)' "$demo_id"
check_js "show: properties as the relay reports them (Succeeded, Connected, the agent's tunnels and last contact)" \
  "$work/show.json" \
  'j.properties.provisioningState === "Succeeded" && j.properties.connectivityStatus === "Connected" &&
   j.properties.agentTunnels >= 1 && !isNaN(Date.parse(j.properties.lastConnectivityTime))'
check_js "show: what the agent reports (Kubernetes version, nodes, cores, agent version, distribution)" "$work/show.json" \
  'j.properties.kubernetesVersion === a[0].replace(/^v/, "") && j.properties.totalNodeCount > 0 &&
   j.properties.totalCoreCount > 0 && typeof j.properties.agentVersion === "string" &&
   typeof j.properties.distribution === "string"' \
  "$(timeout 60 "${kube[@]}" get --raw /version | node -e 'console.log(JSON.parse(require("fs").readFileSync(0)).gitVersion)')"
check_js "show: agentPublicKeyCertificate is the installed agent's public key" "$work/show.json" \
  'j.properties.agentPublicKeyCertificate === a[0]' "$agent_spki"
check_exit "show -o json is the default" 0 '"name": "demo"' "$k8s" show -n demo -g sandbox -o json
out="$(timeout 60 "$k8s" show -n demo -g sandbox -o table 2>&1)"; rc=$?
if [ $rc -eq 0 ] && [ "$(printf '%s\n' "$out" | wc -l)" = 2 ] &&
   printf '%s\n' "$out" | head -1 | grep -qE '^NAME +RESOURCE GROUP +LOCATION +CONNECTIVITY$' &&
   printf '%s\n' "$out" | tail -1 | grep -qE "^demo +sandbox +$(field "$work/show.json" location) +Connected$"; then
  pass "show -o table: a header and demo's row (name, resource group, location, connectivity)"
else
  fail "show -o table: a header and demo's row (name, resource group, location, connectivity)" "exit $rc" "$out"
fi
check_exit "show of a cluster the caller may not read is AuthorizationFailed" 1 "AuthorizationFailed" \
  "${as_reader[@]}" "$k8s" show -n demo -g sandbox

# --- list
list_json() { timeout 60 "$@" >"$work/list.json" 2>"$work/list.err" || echo '"failed"' >"$work/list.json"; }
names='(Array.isArray(j) ? j.map(r => r.name).sort().join(" ") : "")'
list_json "$k8s" list -g sandbox
check_js "list -g sandbox: demo alone, as ARM's resources" "$work/list.json" \
  "$names === 'demo' && j[0].id === a[0] && j[0].properties.connectivityStatus === 'Connected'" "$demo_id"
list_json "$k8s" list
check_js "list (the subscription): demo and second" "$work/list.json" \
  "$names === 'demo second' && j.some(r => r.id === a[0])" "$second_id"
list_json "${as_reader[@]}" "$k8s" list
check_js "list (the subscription) by a principal who may read only second: second alone" "$work/list.json" \
  "$names === 'second' && j[0].id === a[0]" "$second_id"
list_json "${as_reader[@]}" "$k8s" list -g sandbox
check_js "list -g sandbox by that principal: empty" "$work/list.json" 'Array.isArray(j) && j.length === 0'
out="$(timeout 60 "$k8s" list -o table 2>&1)"; rc=$?
if [ $rc -eq 0 ] && [ "$(printf '%s\n' "$out" | wc -l)" = 3 ] && printf '%s\n' "$out" | grep -qE '^demo +sandbox ' &&
   printf '%s\n' "$out" | grep -qE '^second +sandbox2 '; then
  pass "list -o table: a row per cluster with its resource group"
else
  fail "list -o table: a row per cluster with its resource group" "exit $rc" "$out"
fi

# --- delete
check_exit "delete without --yes asks for it and exits 2" 2 "Re-run with --yes" \
  "$k8s" delete -n demo -g sandbox --kubeconfig "$admin_kc"
check "and deleted nothing" '"name": "demo"' "$k8s" show -n demo -g sandbox
check "the agent's Deployment is there before delete" "clusterconnect-agent" \
  "${kube[@]}" -n clusterconnect get deployment clusterconnect-agent -o name
# The objects connect installed, as the cluster's API server names them.
"$k8s" connect -n demo -g sandbox --dry-run -o yaml >"$work/installed.yaml" 2>"$work/render.err" ||
  fail "connect --dry-run -o yaml renders the manifests" "$(cat "$work/render.err")"
objects="$(grep -c '^kind:' "$work/installed.yaml")"
installed="$(timeout 60 "${kube[@]}" get -f "$work/installed.yaml" -o name 2>&1 | sort)"
[ "$objects" -ge 8 ] && [ "$(printf '%s\n' "$installed" | grep -c '^[a-z0-9.]*/')" = "$objects" ] && pass "every object connect installed is in the cluster" ||
  fail "every object connect installed is in the cluster" "$installed"
mark="$(requests)"
out="$(timeout 60 "$k8s" delete -n demo -g sandbox --kubeconfig "$admin_kc" --yes 2>&1)"; rc=$?
if [ $rc -eq 0 ] && [[ "$out" == *"Removed the agent from context sandbox-admin"*"Deleted $demo_id"* ]]; then
  pass "delete --yes removes the agent from the kubeconfig's context, then the resource"
else
  fail "delete --yes removes the agent from the kubeconfig's context, then the resource" "exit $rc" "$out"
fi
out="$(timeout 60 "${kube[@]}" get -f "$work/installed.yaml" -o name 2>&1)"
if [ "$(printf '%s\n' "$out" | grep -c 'NotFound')" = "$objects" ] && ! printf '%s\n' "$out" | grep -q '^[a-z0-9.]*/'; then
  pass "none of the agent's objects is left in the cluster"
else
  fail "none of the agent's objects is left in the cluster" "$out"
fi
deletes="$(tail -n +"$((mark + 1))" "$sandbox/logs/apiserver-requests.jsonl" | node -e '
  const lines = require("fs").readFileSync(0, "utf8").split("\n").filter(Boolean).map(JSON.parse);
  const d = lines.filter(r => r.method === "DELETE" && r.status === 200);
  console.log(d.length, [...new Set(d.map(r => r.authenticated.username))].join(","), d.at(-1) ? d.at(-1).resource : "")')"
[[ "$deletes" == "$objects sandbox-admin namespaces" ]] &&
  pass "through the cluster's API server, with the kubeconfig's credentials, the Namespace last" ||
  fail "through the cluster's API server, with the kubeconfig's credentials, the Namespace last" "$deletes"
check_exit "show after delete: not found, exit 1" 1 "show: no connected cluster demo in resource group sandbox" \
  "$k8s" show -n demo -g sandbox
list_json "$k8s" list
check_js "list after delete: second alone" "$work/list.json" "$names === 'second'"
check_exit "deleting an absent cluster says there was none" 0 "There was no $demo_id" \
  "$k8s" delete -n demo -g sandbox --relay-only --yes
check_exit "deleting where the caller may not delete is AuthorizationFailed, exit 1" 1 "AuthorizationFailed" \
  "$k8s" delete -n demo -g no-such-group --relay-only --yes

# --- delete --relay-only: the resource goes, the cluster keeps the agent
connect_args=(connect -n demo -g sandbox --kubeconfig "$admin_kc" --tenant "$AZURE_TENANT_ID" --timeout 0)
check "connect again registers demo and installs the agent" "" "$k8s" "${connect_args[@]}"
check "show: demo is back" '"name": "demo"' "$k8s" show -n demo -g sandbox
mark="$(requests)"
# No kubeconfig at all: --relay-only must not need one.
check_exit "delete --relay-only --yes deletes the resource" 0 "Deleted $demo_id" \
  env -u KUBECONFIG HOME="$work/empty-home" "$k8s" delete -n demo -g sandbox --relay-only --yes
[ "$(requests)" = "$mark" ] && pass "--relay-only sent nothing to the cluster's API server" ||
  fail "--relay-only sent nothing to the cluster's API server" "$(tail -n +"$((mark + 1))" "$sandbox/logs/apiserver-requests.jsonl")"
check_exit "show after --relay-only: not found" 1 "no connected cluster demo" "$k8s" show -n demo -g sandbox
after="$(timeout 60 "${kube[@]}" get -f "$work/installed.yaml" -o name 2>&1)"
[ "$(printf '%s\n' "$after" | grep -c '^[a-z0-9.]*/')" = "$objects" ] &&
  pass "--relay-only left every agent object in the cluster" || fail "--relay-only left every agent object in the cluster" "$after"

# --- the rendered manifests under kubectl apply --dry-run=server
"$k8s" connect -n demo -g sandbox --endpoint "$CONNECTEDK8S_ENDPOINT" --dry-run -o yaml >"$work/manifests.yaml" \
  2>"$work/render.err" && [ -s "$work/manifests.yaml" ] && pass "connect --dry-run -o yaml renders the manifests" ||
  fail "connect --dry-run -o yaml renders the manifests" "$(cat "$work/render.err")"
snapshot() { timeout 60 kubectl --kubeconfig "$1" get -f "$work/manifests.yaml" -o json 2>&1 | sha256sum; }
before="$(snapshot "$admin_kc")"
for mode in client-side server-side; do
  extra=(); [ "$mode" = server-side ] && extra=(--server-side --force-conflicts)
  check "kubectl apply --dry-run=server ($mode) over the installed agent succeeds" "(server dry run)" \
    "${kube[@]}" apply --dry-run=server "${extra[@]}" -f "$work/manifests.yaml"
done
[ "$(snapshot "$admin_kc")" = "$before" ] && pass "and changed nothing in the cluster" ||
  fail "and changed nothing in the cluster" "$(kubectl --kubeconfig "$admin_kc" get -f "$work/manifests.yaml" -o yaml | head -40)"
dry_patches="$(tail -n +"$((mark + 1))" "$sandbox/logs/apiserver-requests.jsonl" | grep -c '"method":"PATCH".*dryRun=All')"
[ "$dry_patches" -ge 16 ] && pass "every object was sent to the API server with dryRun=All ($dry_patches PATCHes)" ||
  fail "every object was sent to the API server with dryRun=All" "$dry_patches PATCHes"

# Cluster second has none of the agent's objects: the namespace only (the
# real API server refuses objects in a namespace that does not exist, dry run
# or not), then every object is created in dry run and none is stored.
second_kc="$work/second-admin.kubeconfig"
cp "$admin_kc" "$second_kc"
kubectl --kubeconfig "$second_kc" config set-cluster sandbox --server "https://127.0.0.1:$(field "$state/apiserver2.ready" port)" >/dev/null
check "cluster second has no clusterconnect namespace" "NotFound" \
  sh -c "kubectl --kubeconfig '$second_kc' get namespace clusterconnect 2>&1; true"
check_exit "kubectl apply --dry-run=server into a cluster without the namespace is refused as the API server does" 1 \
  'namespaces "clusterconnect" not found' kubectl --kubeconfig "$second_kc" apply --dry-run=server -f "$work/manifests.yaml"
check "kubectl create namespace clusterconnect in second" "created" \
  kubectl --kubeconfig "$second_kc" create namespace clusterconnect
for mode in client-side server-side; do
  extra=(); [ "$mode" = server-side ] && extra=(--server-side)
  out="$(timeout 60 kubectl --kubeconfig "$second_kc" apply --dry-run=server "${extra[@]}" -f "$work/manifests.yaml" 2>&1)"; rc=$?
  n="$(printf '%s\n' "$out" | grep -cE ' (created|serverside-applied) \(server dry run\)$')"
  if [ $rc -eq 0 ] && [ "$n" -ge "$((objects - 1))" ]; then
    pass "kubectl apply --dry-run=server ($mode) creates every object in dry run ($n)"
  else
    fail "kubectl apply --dry-run=server ($mode) creates every object in dry run" "exit $rc" "$out"
  fi
done
left="$(timeout 60 kubectl --kubeconfig "$second_kc" get -f "$work/manifests.yaml" -o name 2>&1)"
# kubectl get -f prints no names when some are not found: the namespace is asked for on its own.
if [ "$(printf '%s\n' "$left" | grep -c 'NotFound')" = "$((objects - 1))" ] &&
   [ "$(timeout 60 kubectl --kubeconfig "$second_kc" get namespace clusterconnect -o name 2>&1)" = namespace/clusterconnect ]; then
  pass "nothing was stored: the namespace alone is in cluster second"
else
  fail "nothing was stored: the namespace alone is in cluster second" "$left"
fi
check_exit "an invalid object is refused in dry run as it would be applied" 1 "Invalid value" \
  sh -c "sed 's/name: clusterconnect-agent\$/name: Not_A_Name/' '$work/manifests.yaml' |
         kubectl --kubeconfig '$second_kc' apply --dry-run=server -f -"

# --- no token or secret in what the commands printed
if grep -rqE 'eyJ[A-Za-z0-9_-]{10,}|SharedAccessSignature' "$work"/*.json "$work"/*.err 2>/dev/null; then
  fail "no token in the commands' output" "$(grep -rlE 'eyJ[A-Za-z0-9_-]{10,}|SharedAccessSignature' "$work"/*.json "$work"/*.err)"
else
  pass "no token in the commands' output"
fi

echo
if [ "$failures" -eq 0 ]; then echo "onboarding_test: all checks passed"; else echo "onboarding_test: $failures check(s) failed"; fi
exit $(( failures > 0 ))
