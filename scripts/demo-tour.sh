#!/usr/bin/env bash
# The tour kubectl runs through the proxy (KUBECONFIG is set by
# `connectedk8s proxy ... -- scripts/demo-tour.sh`). Exits non-zero on the
# first step that fails.
set -euo pipefail
path="kubectl -> proxy (local secret checked, Entra token attached) -> relay (passes on the TLS that runs end to end between proxy and agent; reads none of it) -> agent (token validated, caller impersonated) -> API server"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
via() { printf '  handled by: %s\n' "$1"; }

step kubectl get namespaces
kubectl get namespaces
via "$path"

step kubectl auth whoami
kubectl auth whoami
via "agent: the Entra token's oid/upn and groups became Impersonate-User/-Group; the API server answered as that identity"

step kubectl apply -f - '(ConfigMap demo-settings)'
kubectl apply -f - <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata:
  name: demo-settings
data:
  greeting: hello from clusterconnect
YAML
kubectl get configmap demo-settings -o jsonpath='{.data.greeting}{"\n"}'
via "$path (request body streamed through the tunnel)"

step kubectl exec web-0 -- whoami
kubectl exec web-0 -- whoami
via "proxy and agent switched the upgraded connection (WebSocket v5.channel.k8s.io) to a raw byte pipe through the relay"

if [ -n "${DEMO_LOGS:-}" ] && [ -f "$DEMO_LOGS/agent-audit.jsonl" ]; then
  step tail -n 3 agent audit log
  tail -n 3 "$DEMO_LOGS/agent-audit.jsonl"
  via "agent: one JSON line per request, no token"
fi
printf '\nAll steps worked.\n'
