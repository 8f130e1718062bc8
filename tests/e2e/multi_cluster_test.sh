#!/usr/bin/env bash
# Several clusters from one `connectedk8s proxy`, with the real kubectl: the
# sandbox with a second cluster (scripts/sandbox.sh, SANDBOX_SECOND_CLUSTER:
# `second` in resource group sandbox2, its own stand-in API server and
# agent), one proxy for both (one sign-in, a context and a port each),
# `proxy status` as text and JSON, a second proxy for a served cluster
# refused, the command after `--` seeing every context, `--all` for a
# principal who may read both and one who may read only `second`.
# Usage: multi_cluster_test.sh BIN_DIR
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:?usage: multi_cluster_test.sh BIN_DIR}"
# shellcheck source=tests/e2e/lib.sh
source "$root/tests/e2e/lib.sh"
e2e_begin multi
cmd_timeout=60

# wait_gone PID: waits (at most 30 s) until PID has exited; its status.
wait_gone() {
  for _ in $(seq 1 300); do
    kill -0 "$1" 2>/dev/null || { wait "$1"; return $?; }
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null
  return 255
}
field() { node -e 'let v = JSON.parse(require("fs").readFileSync(process.argv[1])); for (const k of process.argv[2].split(".")) v = v[k]; console.log(v)' "$1" "$2"; }

export SANDBOX_SECOND_CLUSTER=1
"$root/scripts/sandbox.sh" up "$sandbox" "$bin" || { failures=1; echo "FAIL  sandbox did not start"; exit 1; }
# shellcheck disable=SC1091
source "$sandbox/env.sh"
state="$sandbox/state"
# The proxies' state files go to this test's own runtime directory.
export XDG_RUNTIME_DIR="$work/run"
mkdir -m 700 "$XDG_RUNTIME_DIR"
runtime="$XDG_RUNTIME_DIR/connectedk8s/proxies"

# --- one proxy, two clusters in two resource groups
kc="$work/kubeconfig"
"$bin/connectedk8s" -v proxy -n demo -g sandbox -n sandbox2/second -f "$kc" --port 0 --ready-file "$work/proxy.ready" \
  >"$work/proxy.out" 2>"$work/proxy.err" &
proxy_pid=$!
pids+=($proxy_pid)
if wait_file "$work/proxy.ready" "$proxy_pid"; then pass "one proxy for two clusters starts and reports ready"; else
  fail "one proxy for two clusters starts and reports ready" "$(cat "$work/proxy.err")"; exit 1; fi
demo_server="$(field "$work/proxy.ready" clusters.0.server)"
second_server="$(field "$work/proxy.ready" clusters.1.server)"
check "the ready line names both contexts and the kubeconfig" \
  "Proxy is listening for 2 clusters in $kc: context demo on $demo_server; context second on $second_server" \
  cat "$work/proxy.err"
[ "$demo_server" != "$second_server" ] && pass "each cluster has its own local port ($demo_server, $second_server)" ||
  fail "each cluster has its own local port" "$demo_server" "$second_server"
signins="$(grep -c "^Signing in to Microsoft Entra ID \.\.\.$" "$work/proxy.err")"
[ "$signins" = 1 ] && pass "one sign-in for both clusters" || fail "one sign-in for both clusters" "$signins sign-ins"
# Sessions are made on first use: none at start (the proxy logs each at -v).
session_line="session with the agent of clusters/$AZURE_SUBSCRIPTION_ID/sandbox2/second established"
if grep -qF "$session_line" "$work/proxy.err"; then
  fail "no session to cluster second before its first use" "$(grep -F "$session_line" "$work/proxy.err")"
else
  pass "no session to cluster second before its first use"
fi
export KUBECONFIG="$kc"
check "kubeconfig holds a context per cluster" "demo second" sh -c 'kubectl config get-contexts -o name | sort | tr "\n" " "'
check "the first cluster's context is the current one" "demo" kubectl config current-context
check "kubectl get ns in demo" "default" kubectl --context demo get ns
check "kubectl get ns in second" "default" kubectl --context second get ns
grep -qF "$session_line" "$work/proxy.err" && pass "the first request to second made its session" ||
  fail "the first request to second made its session" "$(grep -i session "$work/proxy.err" | tail -5)"
check "a configmap created in second" "only-in-second" kubectl --context second create configmap only-in-second --from-literal=k=v
check "is there in second" "only-in-second" kubectl --context second get configmap only-in-second
check_fails "and not in demo: each context reaches its own cluster" "NotFound" kubectl --context demo get configmap only-in-second
check "kubectl auth whoami in second shows the Entra identity" "$(field "$state/idp/state.json" clients.secret.oid)" \
  kubectl --context second auth whoami

# --- proxy status: this proxy, its clusters, addresses and contexts
check "proxy status lists the proxy's pid" "$proxy_pid" "$bin/connectedk8s" proxy status
check "proxy status lists cluster demo with its address and context" "sandbox/demo" "$bin/connectedk8s" proxy status
status_text="$("$bin/connectedk8s" proxy status 2>&1)"
if [[ "$status_text" == *"sandbox2/second"*"$second_server"*"second"* ]] && [[ "$status_text" == *"$kc"* ]] &&
   [[ "$status_text" == *"$demo_server"* ]]; then
  pass "proxy status shows both clusters, their addresses, contexts and the kubeconfig"
else
  fail "proxy status shows both clusters, their addresses, contexts and the kubeconfig" "$status_text"
fi
"$bin/connectedk8s" proxy status -o json >"$work/status.json" 2>"$work/status.err"
if node -e '
  const s = JSON.parse(require("fs").readFileSync(process.argv[1]));
  const [pid, kc, demo, second] = process.argv.slice(2);
  const p = s.proxies.find(x => String(x.pid) === pid);
  if (!p || s.proxies.length !== 1) process.exit(1);
  const c = Object.fromEntries(p.clusters.map(x => [x.resourceGroup + "/" + x.name, x]));
  process.exit(p.kubeconfig === kc && p.state === "ready" && c["sandbox/demo"].server === demo &&
    c["sandbox/demo"].context === "demo" && c["sandbox2/second"].server === second &&
    c["sandbox2/second"].context === "second" ? 0 : 1);' "$work/status.json" "$proxy_pid" "$kc" "$demo_server" "$second_server"; then
  pass "proxy status -o json: pid, kubeconfig, state, each cluster's server and context"
else
  fail "proxy status -o json: pid, kubeconfig, state, each cluster's server and context" "$(cat "$work/status.json" "$work/status.err")"
fi
mode="$(stat -c %a "$runtime/$proxy_pid.json" 2>&1)"
[ "$mode" = 600 ] && pass "the proxy's state file is 0600" || fail "the proxy's state file is 0600" "$mode"

# --- a second proxy for a served cluster says so and exits non-zero
check_fails "a second proxy for a served cluster into the same kubeconfig names the pid and address" \
  "already served by connectedk8s proxy (pid $proxy_pid) at $second_server" \
  "$bin/connectedk8s" proxy -n second -g sandbox2 -f "$kc" --port 0
second_port="${second_server##*:}"
check_fails "a second proxy for a served cluster on its port names the pid instead of failing on the port" \
  "already served by connectedk8s proxy (pid $proxy_pid)" \
  "$bin/connectedk8s" proxy -n sandbox2/second -f "$work/other-kubeconfig" --port "$second_port"
[ ! -e "$work/other-kubeconfig" ] && pass "the refused proxy wrote nothing" || fail "the refused proxy wrote nothing"
check "the running proxy still serves second" "default" kubectl --context second get ns

# --- CI mode: the command gets a kubeconfig with every context
check "the command after -- reaches both clusters through its KUBECONFIG" "BOTH-OK" \
  env -u KUBECONFIG "$bin/connectedk8s" proxy -n sandbox/demo -n sandbox2/second --port 0 -- \
  sh -c 'kubectl --context demo get ns >/dev/null && kubectl --context second get configmap only-in-second >/dev/null && echo BOTH-OK'

# --- -f -: the printed kubeconfig holds every context
"$bin/connectedk8s" proxy -n sandbox/demo -n sandbox2/second -f - --port 0 --ready-file "$work/print.ready" \
  >"$work/printed.kubeconfig" 2>"$work/print.err" &
printer=$!
pids+=($printer)
if wait_file "$work/print.ready" "$printer"; then
  check "-f - prints a kubeconfig with both contexts" "demo second" \
    sh -c "kubectl --kubeconfig '$work/printed.kubeconfig' config get-contexts -o name | sort | tr '\n' ' '"
  check "which reaches second" "default" kubectl --kubeconfig "$work/printed.kubeconfig" --context second get ns
else
  fail "-f - with two clusters starts" "$(cat "$work/print.err")"
fi
kill -TERM "$printer" 2>/dev/null; wait "$printer" 2>/dev/null

# --- --all: every cluster the principal may read
check "--all as a principal who may read both serves both" "demo second" \
  env -u KUBECONFIG "$bin/connectedk8s" proxy --all --port 0 -- \
  sh -c 'kubectl config get-contexts -o name | sort | tr "\n" " "; kubectl --context second get ns >/dev/null'
cert_path="$(field "$state/idp/state.json" clients.certificate.certificate_path)"
cert_client="$(field "$state/idp/state.json" clients.certificate.client_id)"
out="$(env -u KUBECONFIG -u AZURE_CLIENT_SECRET AZURE_CLIENT_ID="$cert_client" AZURE_CLIENT_CERTIFICATE_PATH="$cert_path" \
  timeout 60 "$bin/connectedk8s" proxy --all --port 0 -- \
  sh -c 'echo "contexts: $(kubectl config get-contexts -o name | tr "\n" " ")"; kubectl --context second get ns' 2>&1)"; rc=$?
if [ $rc -eq 0 ] && [[ "$out" == *"contexts: second "* ]] && [[ "$out" == *"default"* ]]; then
  pass "--all as a principal who may read only second serves second alone"
else
  fail "--all as a principal who may read only second serves second alone" "exit $rc" "$out"
fi
check_fails "that principal cannot name demo" "AuthorizationFailed" \
  env -u KUBECONFIG -u AZURE_CLIENT_SECRET AZURE_CLIENT_ID="$cert_client" AZURE_CLIENT_CERTIFICATE_PATH="$cert_path" \
  "$bin/connectedk8s" proxy -n demo -g sandbox --port 0 -- true

# --- the proxy stops: its state file goes; a killed proxy's stale file is dropped
kill -TERM "$proxy_pid"
wait_gone "$proxy_pid"; rc=$?
[ $rc -eq 0 ] && pass "the proxy stops on SIGTERM with status 0" || fail "the proxy stops on SIGTERM with status 0" "exit $rc"
[ ! -e "$runtime/$proxy_pid.json" ] && pass "its state file is removed on exit" || fail "its state file is removed on exit"
check "proxy status: none running" "no connectedk8s proxy is running" "$bin/connectedk8s" proxy status

"$bin/connectedk8s" proxy -n sandbox2/second -f "$work/killed-kubeconfig" --port 0 --ready-file "$work/killed.ready" \
  >/dev/null 2>"$work/killed.err" &
killed=$!
pids+=($killed)
if wait_file "$work/killed.ready" "$killed"; then
  check "proxy status lists a proxy for one cluster" "$killed" "$bin/connectedk8s" proxy status
  kill -KILL "$killed"; wait "$killed" 2>/dev/null
  [ -e "$runtime/$killed.json" ] && pass "a killed proxy leaves its state file" || fail "a killed proxy leaves its state file"
  check "proxy status ignores a dead proxy's state file" "no connectedk8s proxy is running" "$bin/connectedk8s" proxy status
  [ ! -e "$runtime/$killed.json" ] && pass "and removes it" || fail "and removes it"
  "$bin/connectedk8s" proxy -n sandbox2/second -f "$work/killed-kubeconfig" --port 0 --ready-file "$work/after.ready" \
    >/dev/null 2>"$work/after.err" &
  after=$!
  pids+=($after)
  if wait_file "$work/after.ready" "$after"; then
    pass "a new proxy for the dead one's cluster and kubeconfig starts"
    check "and serves it" "default" kubectl --kubeconfig "$work/killed-kubeconfig" get ns
  else
    fail "a new proxy for the dead one's cluster and kubeconfig starts" "$(cat "$work/after.err")"
  fi
  kill -TERM "$after" 2>/dev/null; wait "$after" 2>/dev/null
else
  fail "a proxy for one cluster starts" "$(cat "$work/killed.err")"
fi

# --- no token or local secret in the proxy's log
if grep -qE 'eyJ|SharedAccessSignature|sig=' "$work/proxy.err"; then
  fail "the proxy's log holds no token" "$(grep -oE 'eyJ.{0,10}|SharedAccessSignature.{0,10}|sig=.{0,5}' "$work/proxy.err" | head -3)"
else
  pass "the proxy's log holds no token"
fi

echo
if [ "$failures" -eq 0 ]; then echo "multi_cluster_test: all checks passed"; else echo "multi_cluster_test: $failures check(s) failed"; fi
exit $(( failures > 0 ))
