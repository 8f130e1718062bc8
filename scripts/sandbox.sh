#!/usr/bin/env bash
# A local clusterconnect sandbox on loopback: stand-in API server, OIDC identity
# provider (oidc-provider dressed as Entra ID), clusterconnect-relay and
# clusterconnect-agent, each on a free port with its state and log under DIR.
#
#   scripts/sandbox.sh up DIR [BIN_DIR]   start everything; writes DIR/env.sh
#   scripts/sandbox.sh down DIR           stop what `up` started (by PID files)
#
# After `up`, `source DIR/env.sh` and run `connectedk8s proxy -n demo -g sandbox`.
#
# SANDBOX_UPSTREAM_URL / SANDBOX_UPSTREAM_CA point the agent at another HTTPS
# backend instead of the stand-in API server (benchmarks use nginx).
# SANDBOX_AGENT_ARGS adds agent flags; SANDBOX_CONNECT_TOKEN_SECONDS sets the
# lifetime of the relay connect tokens the management API issues.
# SANDBOX_REGISTERED_AGENT_CERT registers that certificate's key pin instead
# of the agent's own (tests of an agent the proxy must refuse).
# SANDBOX_SECOND_CLUSTER=1 adds cluster `second` in resource group `sandbox2`,
# with its own stand-in API server and agent; the certificate client of the
# identity provider may use it (and not demo), as may everyone who may use demo.
# SANDBOX_TRANSPORT=ws makes the proxy's rendezvous leg a WebSocket in Azure
# Relay Hybrid Connections' shape instead of a raw TCP leg (tls, the default);
# either way TLS and the mux run end to end between proxy and agent.
# SANDBOX_REPLICAS=N (N > 1) runs N relay replicas on one etcd instead of one
# relay with a file registry: each replica on its own port with its own
# --advertise-url, all behind one address (HAProxy in TCP mode, as a cloud
# network load balancer would be), and the agent with one control channel per
# replica. Everyone else (proxy, connect, the agent) is given the balancer's
# address only. Replica i logs to logs/relay-i.log; its ready file (with its
# metrics port) is state/relay-i.ready, its PID file pids/relay-i.pid.
# SANDBOX_REPLICA_TTL sets the replicas' lease TTL in seconds (default 10).
# SANDBOX_RELAY_ARGS adds relay flags (to every replica).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-}"
dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 up|down DIR [BIN_DIR]" >&2; exit 2; }
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
bin="${3:-$root/build/release/stage/bin}"
[ -d "$bin" ] && bin="$(cd "$bin" && pwd)"
fixtures="$root/tests/fixtures"
transport="${SANDBOX_TRANSPORT:-tls}"
case "$transport" in tls|ws) ;; *) echo "SANDBOX_TRANSPORT must be tls or ws" >&2; exit 2 ;; esac
replicas="${SANDBOX_REPLICAS:-1}"
case "$replicas" in [1-9]) ;; *) echo "SANDBOX_REPLICAS must be 1 to 9" >&2; exit 2 ;; esac

tenant="72f988bf-86f1-41af-91ab-2d7cd011db47"
subscription="00000000-0000-0000-0000-00000000c0de"
management_resource="5e1a7000-0000-4000-8000-00000000c0de"  # the relay management API's own application
server_app="6256c85f-0aad-4d50-b960-e6e9b21efe35"

log() { printf 'sandbox: %s\n' "$*" >&2; }

# Prints the last lines of a component's log and fails.
die_with_log() {
  local name="$1" msg="$2"
  log "$msg"
  if [ -f "$dir/logs/$name.log" ]; then
    echo "---- last lines of $dir/logs/$name.log ----" >&2
    tail -n 30 "$dir/logs/$name.log" >&2
    echo "----" >&2
  fi
  exit 1
}

# start NAME CMD... : runs CMD in the background with its log and PID file.
start() {
  local name="$1"; shift
  "$@" >"$dir/logs/$name.log" 2>&1 &
  echo $! >"$dir/pids/$name.pid"
}

# wait_ready NAME FILE [SECONDS]: waits for FILE while NAME is alive.
wait_ready() {
  local limit="${3:-30}"
  ready_within "$1" "$2" "$limit" || die_with_log "$1" "$1 was not ready within ${limit}s"
}

# ready_within NAME FILE SECONDS: true once FILE is there while NAME is alive;
# false when the time passes (NAME exiting is fatal, as in wait_ready).
ready_within() {
  local name="$1" file="$2" limit="$3" pid
  pid="$(cat "$dir/pids/$name.pid")"
  for _ in $(seq 1 $((limit * 10))); do
    [ -s "$file" ] && return 0
    kill -0 "$pid" 2>/dev/null || die_with_log "$name" "$name exited before it was ready"
    sleep 0.1
  done
  return 1
}

# A free loopback port below the kernel's ephemeral range (free-port.js says why).
free_port() { node "$fixtures/free-port.js"; }

# wait_tcp NAME PORT: waits until 127.0.0.1:PORT accepts while NAME is alive.
wait_tcp() {
  local name="$1" port="$2" pid
  pid="$(cat "$dir/pids/$name.pid")"
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || die_with_log "$name" "$name exited before it was ready"
    sleep 0.1
  done
  die_with_log "$name" "$name did not listen on port $port within 10s"
}

json() { node -e 'const v=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")); const p=process.argv[2].split("."); let x=v; for (const k of p) x=x[k]; console.log(x)' "$1" "$2"; }

down() {
  [ -d "$dir/pids" ] || return 0
  local pids=()
  for f in "$dir"/pids/*.pid; do
    [ -f "$f" ] || continue
    local pid; pid="$(cat "$f")"
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$f"
  done
  for _ in $(seq 1 50); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}

up() {
  down
  rm -rf "$dir/state" "$dir/logs" "$dir/pids"
  mkdir -p "$dir/state" "$dir/logs" "$dir/pids"
  chmod 700 "$dir/state"
  local s="$dir/state"
  [ -x "$bin/clusterconnect-relay" ] || { log "no binaries in $bin; build first"; exit 1; }
  [ -d "$fixtures/node_modules" ] || { log "test fixtures not installed; run scripts/setup.sh"; exit 1; }

  # Certificates for the stand-in API server (its own CA, like a cluster's).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=sandbox cluster CA" \
    -keyout "$s/apiserver-ca.key" -out "$s/apiserver-ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$s/apiserver.key" -out "$s/apiserver.csr" 2>/dev/null
  openssl x509 -req -in "$s/apiserver.csr" -CA "$s/apiserver-ca.crt" -CAkey "$s/apiserver-ca.key" -CAcreateserial \
    -days 2 -out "$s/apiserver.crt" \
    -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n') 2>/dev/null

  # 1. Identity provider. Node and oidc-provider start in 1-2 s, slower on a
  # loaded machine (key generation). A start that has not finished within 45 s
  # has been seen to never finish (it stopped after writing its keys); its
  # Node diagnostic report (JavaScript stack) goes to logs/, and it is
  # started once more.
  local attempt
  for attempt in 1 2; do
    rm -rf "$s/idp" "$s/idp.ready"
    start idp node --report-on-signal --report-directory="$dir/logs" "$fixtures/idp/server.js" --port 0 \
      --tenant "$tenant" --ready-file "$s/idp.ready" --state-dir "$s/idp" --admin
    [ "$attempt" -eq 2 ] && break
    ready_within idp "$s/idp.ready" 45 && break
    log "identity provider not ready within 45 s; its report is in $dir/logs; starting it again"
    kill -USR2 "$(cat "$dir/pids/idp.pid")" 2>/dev/null
    sleep 1  # the report is written by the signal handler
    kill -KILL "$(cat "$dir/pids/idp.pid")" 2>/dev/null
    mv "$dir/logs/idp.log" "$dir/logs/idp-hung.log" 2>/dev/null
  done
  wait_ready idp "$s/idp.ready" 90
  local authority; authority="$(json "$s/idp.ready" authority)"
  log "identity provider: $authority (tenant $tenant)"

  # 2. Stand-in API server. The agent's service account may impersonate.
  local agent_token ci_token
  agent_token="$(openssl rand -hex 24)"; ci_token="$(openssl rand -hex 24)"
  local admin_token; admin_token="$(openssl rand -hex 24)"  # the cluster admin who runs connectedk8s connect
  printf '%s\n' "$agent_token" >"$s/agent-sa.token"; chmod 600 "$s/agent-sa.token"
  printf '%s\n' "$ci_token" >"$s/ci-sa.token"; chmod 600 "$s/ci-sa.token"
  # The demo principals may write (the stand-in's RBAC); everyone signed in may read.
  local writers; writers="$(node -e '
    const st=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));
    console.log(JSON.stringify([st.clients.secret.oid, ...Object.values(st.users).map(u=>u.upn)]))' "$s/idp/state.json")"
  cat >"$s/apiserver-tokens.json" <<JSON
{"policy": {"writers": {"users": $writers, "groups": ["system:masters"]}},
 "tokens": [
  {"token": "$agent_token", "user": "system:serviceaccount:clusterconnect:clusterconnect-agent", "uid": "agent-uid",
   "groups": ["system:serviceaccounts", "system:serviceaccounts:clusterconnect"], "can_impersonate": true},
  {"token": "$ci_token", "user": "system:serviceaccount:default:ci", "uid": "ci-uid",
   "groups": ["system:serviceaccounts", "system:serviceaccounts:default"]},
  {"token": "$admin_token", "user": "sandbox-admin", "groups": ["system:masters"]}
]}
JSON
  chmod 600 "$s/apiserver-tokens.json"
  start apiserver node "$fixtures/apiserver/server.js" --port 0 --cert "$s/apiserver.crt" --key "$s/apiserver.key" \
    --ready-file "$s/apiserver.ready" --tokens "$s/apiserver-tokens.json" --log "$dir/logs/apiserver-requests.jsonl"
  wait_ready apiserver "$s/apiserver.ready"
  local api_port; api_port="$(json "$s/apiserver.ready" port)"
  log "stand-in API server: https://127.0.0.1:$api_port"
  local api2_port=""
  if [ -n "${SANDBOX_SECOND_CLUSTER:-}" ]; then
    start apiserver2 node "$fixtures/apiserver/server.js" --port 0 --cert "$s/apiserver.crt" --key "$s/apiserver.key" \
      --ready-file "$s/apiserver2.ready" --tokens "$s/apiserver-tokens.json" --log "$dir/logs/apiserver2-requests.jsonl"
    wait_ready apiserver2 "$s/apiserver2.ready"
    api2_port="$(json "$s/apiserver2.ready" port)"
    log "stand-in API server of cluster second: https://127.0.0.1:$api2_port"
  fi

  # 3. Relay: registry with cluster demo in resource group sandbox.
  openssl rand -base64 32 | tr -d '\n' >"$s/listen.key"; chmod 600 "$s/listen.key"
  openssl rand -base64 32 | tr -d '\n' >"$s/connect.key"; chmod 600 "$s/connect.key"
  # Role assignments for the demo service principal and the demo user.
  local principals; principals="$(node -e '
    const st=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));
    const oids=[st.clients.secret.oid, ...Object.values(st.users).map(u=>u.oid)];
    console.log(JSON.stringify(oids.map(o=>({principal:o, role:"Azure Arc Enabled Kubernetes Cluster User Role"}))))' "$s/idp/state.json")"
  # The agent's own key, which proxies pin: its SHA-256 pin goes in the registry.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=clusterconnect-agent demo" \
    -keyout "$s/agent-identity.key" -out "$s/agent-identity.crt" 2>/dev/null
  chmod 600 "$s/agent-identity.key"
  local agent_pin
  agent_pin="$("$bin/clusterconnect-agent" --print-key-pin --identity-cert-file "${SANDBOX_REGISTERED_AGENT_CERT:-$s/agent-identity.crt}")"
  local second_cluster=""
  if [ -n "${SANDBOX_SECOND_CLUSTER:-}" ]; then
    openssl rand -base64 32 | tr -d '\n' >"$s/listen2.key"; chmod 600 "$s/listen2.key"
    openssl rand -base64 32 | tr -d '\n' >"$s/connect2.key"; chmod 600 "$s/connect2.key"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=clusterconnect-agent second" \
      -keyout "$s/agent2-identity.key" -out "$s/agent2-identity.crt" 2>/dev/null
    chmod 600 "$s/agent2-identity.key"
    local second_principals
    second_principals="$(node -e '
      const st=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));
      const oids=[st.clients.secret.oid, st.clients.certificate.oid, ...Object.values(st.users).map(u=>u.oid)];
      console.log(JSON.stringify(oids.map(o=>({principal:o, role:"Azure Arc Enabled Kubernetes Cluster User Role"}))))' "$s/idp/state.json")"
    second_cluster=",
  {\"subscription\": \"$subscription\", \"resource_group\": \"sandbox2\", \"name\": \"second\",
   \"hybrid_connection\": \"clusters/$subscription/sandbox2/second\",
   \"agent_key_pins\": [\"$("$bin/clusterconnect-agent" --print-key-pin --identity-cert-file "$s/agent2-identity.crt")\"],
   \"keys\": [{\"name\": \"listen\", \"rights\": [\"listen\"], \"secret_file\": \"listen2.key\"},
            {\"name\": \"connect\", \"rights\": [\"connect\"], \"secret_file\": \"connect2.key\"}],
   \"role_assignments\": $second_principals}"
  fi
  # Cluster demo is onboarded with `connectedk8s connect` (below): the relay
  # starts without it, and the demo principals hold their roles on the
  # resource group (the service principal may also create and delete
  # clusters there). SANDBOX_ONBOARD=manual (implied by
  # SANDBOX_REGISTERED_AGENT_CERT) writes the registry by hand instead.
  local onboard="${SANDBOX_ONBOARD:-connect}"
  [ -n "${SANDBOX_REGISTERED_AGENT_CERT:-}" ] && onboard=manual
  local demo_cluster="" scoped="[]"
  if [ "$onboard" = manual ]; then
    demo_cluster="{\"subscription\": \"$subscription\", \"resource_group\": \"sandbox\", \"name\": \"demo\",
   \"hybrid_connection\": \"clusters/$subscription/sandbox/demo\",
   \"agent_key_pins\": [\"$agent_pin\"],
   \"keys\": [{\"name\": \"listen\", \"rights\": [\"listen\"], \"secret_file\": \"listen.key\"},
            {\"name\": \"connect\", \"rights\": [\"connect\"], \"secret_file\": \"connect.key\"}],
   \"role_assignments\": $principals}"
  else
    scoped="$(node -e '
      const st=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));
      const scope=process.argv[2];
      const oids=[st.clients.secret.oid, ...Object.values(st.users).map(u=>u.oid)];
      const a=oids.map(o=>({scope, principal:o, role:"Azure Arc Enabled Kubernetes Cluster User Role"}));
      a.push({scope, principal:st.clients.secret.oid, role:"Azure Arc Kubernetes Cluster Manager"});
      console.log(JSON.stringify(a))' "$s/idp/state.json" "/subscriptions/$subscription/resourceGroups/sandbox")"
    second_cluster="${second_cluster#,}"
  fi
  local clusters="$demo_cluster$second_cluster"
  cat >"$s/relay.json" <<JSON
{"clusters": [$clusters],
 "management": {"tenants": ["$tenant"], "audiences": ["$management_resource"], "authority": "$authority",
                "allow_http_loopback": true, "token_lifetime_seconds": ${SANDBOX_CONNECT_TOKEN_SECONDS:-3600},
                "role_assignments": $scoped}}
JSON
  local relay_port relay_ca etcd_port=""
  if [ "$replicas" -eq 1 ]; then
    start relay "$bin/clusterconnect-relay" --config "$s/relay.json" --listen 127.0.0.1:0 --dev-tls "$s/relay-tls" \
      --rendezvous-listen 127.0.0.1:0 --ready-file "$s/relay.ready" ${SANDBOX_RELAY_ARGS:-}
    wait_ready relay "$s/relay.ready"
    relay_port="$(json "$s/relay.ready" port)"; relay_ca="$(json "$s/relay.ready" ca_file)"
    log "relay: https://127.0.0.1:$relay_port (CA $relay_ca)"
  else
    # etcd: one member on loopback, its data under state/.
    command -v etcd >/dev/null || { log "SANDBOX_REPLICAS needs etcd (scripts/setup.sh installs etcd-server)"; exit 1; }
    command -v haproxy >/dev/null || { log "SANDBOX_REPLICAS needs haproxy (scripts/setup.sh installs it)"; exit 1; }
    local etcd_peer
    etcd_port="$(free_port)"; etcd_peer="$(free_port)"
    start etcd etcd --name sandbox --data-dir "$s/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
      --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
      --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" --initial-cluster "sandbox=http://127.0.0.1:$etcd_peer"
    local healthy=0
    for _ in $(seq 1 200); do
      curl -s --max-time 1 "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q '"true"' && { healthy=1; break; }
      kill -0 "$(cat "$dir/pids/etcd.pid")" 2>/dev/null || die_with_log etcd "etcd exited before it was ready"
      sleep 0.1
    done
    [ $healthy = 1 ] || die_with_log etcd "etcd was not healthy within 20s"
    local store="etcd://127.0.0.1:$etcd_port"
    # The registry (what relay.json lists, maybe nothing yet) goes into etcd;
    # the replicas read settings (management) from relay.json, clusters from etcd.
    "$bin/clusterconnect-relay" --config "$s/relay.json" --store "$store" import >>"$dir/logs/etcd-import.log" 2>&1 ||
      die_with_log etcd-import "importing the registry into etcd failed"
    # The balancer's address is what tokens name; each replica advertises its own.
    relay_port="$(free_port)"
    local backends="" i port
    replica_ports=()
    for i in $(seq 0 $((replicas - 1))); do
      port="$(free_port)"
      replica_ports+=("$port")
      # One development CA for all (kept in relay-tls); each replica its own key.
      start "relay-$i" "$bin/clusterconnect-relay" --config "$s/relay.json" --store "$store" --replica-id "r$i" \
        --replica-ttl "${SANDBOX_REPLICA_TTL:-10}" --listen "127.0.0.1:$port" --advertise-url "https://127.0.0.1:$port" \
        --public-host "127.0.0.1:$relay_port" --dev-tls "$s/relay-tls" --rendezvous-listen 127.0.0.1:0 \
        --metrics-listen 127.0.0.1:0 --ready-file "$s/relay-$i.ready" ${SANDBOX_RELAY_ARGS:-}
      wait_ready "relay-$i" "$s/relay-$i.ready"
      backends="$backends
  server r$i 127.0.0.1:$port"
    done
    relay_ca="$(json "$s/relay-0.ready" ca_file)"
    cat >"$s/haproxy.cfg" <<CFG
global
  maxconn 4096
defaults
  mode tcp
  timeout connect 2s
  timeout client 1h
  timeout server 1h
frontend relays
  bind 127.0.0.1:$relay_port
  default_backend replicas
backend replicas
  balance roundrobin$backends
CFG
    start lb haproxy -db -f "$s/haproxy.cfg"
    wait_tcp lb "$relay_port"
    log "relays: $replicas replicas on etcd $store, behind https://127.0.0.1:$relay_port (HAProxy, TCP) (CA $relay_ca)"
  fi

  local sp_client sp_secret
  sp_client="$(json "$s/idp/state.json" clients.secret.client_id)"
  sp_secret="$(json "$s/idp/state.json" clients.secret.client_secret)"
  if [ "$onboard" = connect ]; then
    # The cluster's admin kubeconfig, as a cluster's installer would hand it out.
    cat >"$s/cluster-admin.kubeconfig" <<KUBE
apiVersion: v1
kind: Config
current-context: sandbox-admin
clusters:
- name: sandbox
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(base64 -w0 <"$s/apiserver-ca.crt")
contexts:
- name: sandbox-admin
  context: {cluster: sandbox, user: sandbox-admin}
users:
- name: sandbox-admin
  user:
    token: $admin_token
KUBE
    chmod 600 "$s/cluster-admin.kubeconfig"
    local connect_env=(env AZURE_TENANT_ID="$tenant" AZURE_CLIENT_ID="$sp_client" AZURE_CLIENT_SECRET="$sp_secret"
      AZURE_AUTHORITY_HOST="$authority" AZURE_SUBSCRIPTION_ID="$subscription" XDG_CONFIG_HOME="$dir/home/config"
      XDG_CACHE_HOME="$dir/home/cache")
    local connect_args=(connect -n demo -g sandbox --endpoint "https://127.0.0.1:$relay_port" --ca-file "$relay_ca"
      --allow-http-loopback-authority --kubeconfig "$s/cluster-admin.kubeconfig" --tenant "$tenant")
    # Registers demo and installs the agent's objects; the sandbox plays the
    # kubelet below, so this first run does not wait for the agent.
    "${connect_env[@]}" "$bin/connectedk8s" "${connect_args[@]}" --timeout 0 >>"$dir/logs/connect.log" 2>&1 ||
      die_with_log connect "connectedk8s connect failed"
    log "connectedk8s connect -n demo -g sandbox: registered and installed"
    # The kubelet's part: the agent's key material from the Secrets connect made.
    local k=(kubectl --kubeconfig "$s/cluster-admin.kubeconfig" -n clusterconnect get secret)
    "${k[@]}" relay-listen-key -o 'jsonpath={.data.listen\.key}' | base64 -d >"$s/listen.key"
    "${k[@]}" agent-identity -o 'jsonpath={.data.tls\.crt}' | base64 -d >"$s/agent-identity.crt"
    "${k[@]}" agent-identity -o 'jsonpath={.data.tls\.key}' | base64 -d >"$s/agent-identity.key"
    chmod 600 "$s/listen.key" "$s/agent-identity.key"
  fi

  # 4. Agent: two tunnels, Entra mode, impersonating through the stand-in.
  start agent "$bin/clusterconnect-agent" \
    --relay-url "wss://127.0.0.1:$relay_port/\$hc/clusters/$subscription/sandbox/demo" --relay-ca-file "$relay_ca" \
    --listen-key-name listen --listen-key-file "$s/listen.key" --tunnels "$((replicas > 2 ? replicas : 2))" --mode both \
    --transport "$transport" --identity-cert-file "$s/agent-identity.crt" --identity-key-file "$s/agent-identity.key" \
    --tenant "$tenant" --authority "$authority" --allow-http-loopback-authority \
    --apiserver-url "${SANDBOX_UPSTREAM_URL:-https://127.0.0.1:$api_port}" \
    --apiserver-ca-file "${SANDBOX_UPSTREAM_CA:-$s/apiserver-ca.crt}" \
    --token-file "$s/agent-sa.token" --health-listen 127.0.0.1:0 --ready-file "$s/agent.ready" \
    --audit-log "$dir/logs/agent-audit.jsonl" ${SANDBOX_AGENT_ARGS:-}
  wait_ready agent "$s/agent.ready"
  log "agent: connected over $transport (health on port $(json "$s/agent.ready" health_port))"
  if [ "$replicas" -gt 1 ]; then
    # Where the agent's control channels landed: the replicas' records in etcd.
    local spread="" range
    range="{\"key\":\"$(printf '/clusterconnect/replicas/channels/' | base64 -w0)\",\"range_end\":\"$(printf '/clusterconnect/replicas/channels0' | base64 -w0)\"}"
    for _ in $(seq 1 50); do
      spread="$(curl -s --max-time 2 -X POST "http://127.0.0.1:$etcd_port/v3/kv/range" -d "$range" |
        node -e 'let d="";process.stdin.on("data",c=>d+=c).on("end",()=>{const kvs=JSON.parse(d||"{}").kvs||[];
          console.log(kvs.map(kv=>{const k=Buffer.from(kv.key,"base64").toString();const v=JSON.parse(Buffer.from(kv.value,"base64").toString());
          return [k.slice(k.lastIndexOf("/")+1), v.count]}).filter(x=>x[1]>0).map(x=>x[0]+": "+x[1]).join(", "))})' 2>/dev/null)"
      [ "$(printf '%s' "$spread" | tr ',' '\n' | grep -c ': ')" -ge "$replicas" ] && break
      sleep 0.2
    done
    log "agent control channels by replica: ${spread:-none recorded}"
  fi
  if [ "$onboard" = connect ]; then
    # connect again: idempotent (keeps the agent's key), and waits for Connected.
    "${connect_env[@]}" "$bin/connectedk8s" "${connect_args[@]}" --timeout 60 >>"$dir/logs/connect.log" 2>&1 ||
      die_with_log connect "connectedk8s connect (again) failed"
    log "connectedk8s connect: demo is Connected"
    if [ "$replicas" -gt 1 ]; then
      # The management API through each replica directly: every one answers
      # for all replicas' control channels and the agent's last report (the
      # replicas' records in etcd), not only its own.
      local i show
      for i in "${!replica_ports[@]}"; do
        show="$("${connect_env[@]}" "$bin/connectedk8s" show -n demo -g sandbox --endpoint "https://127.0.0.1:${replica_ports[$i]}" \
          --ca-file "$relay_ca" --allow-http-loopback-authority -o json 2>>"$dir/logs/connect.log")" ||
          die_with_log connect "connectedk8s show through replica r$i failed"
        log "replica r$i answers for demo: $(printf '%s' "$show" | node -e 'let d="";process.stdin.on("data",c=>d+=c).on("end",()=>{
          const p=JSON.parse(d).properties; console.log(`${p.connectivityStatus}, ${p.agentTunnels} agent tunnels, kubernetes ${p.kubernetesVersion}, ${p.totalNodeCount} nodes`)})')"
      done
    fi
  fi
  if [ -n "${SANDBOX_SECOND_CLUSTER:-}" ]; then
    start agent2 "$bin/clusterconnect-agent" \
      --relay-url "wss://127.0.0.1:$relay_port/\$hc/clusters/$subscription/sandbox2/second" --relay-ca-file "$relay_ca" \
      --listen-key-name listen --listen-key-file "$s/listen2.key" --tunnels 2 --mode both \
      --transport "$transport" --identity-cert-file "$s/agent2-identity.crt" --identity-key-file "$s/agent2-identity.key" \
      --tenant "$tenant" --authority "$authority" --allow-http-loopback-authority \
      --apiserver-url "https://127.0.0.1:$api2_port" --apiserver-ca-file "$s/apiserver-ca.crt" \
      --token-file "$s/agent-sa.token" --health-listen 127.0.0.1:0 --ready-file "$s/agent2.ready" \
      --audit-log "$dir/logs/agent2-audit.jsonl" ${SANDBOX_AGENT_ARGS:-}
    wait_ready agent2 "$s/agent2.ready"
    log "agent of cluster second: connected over $transport"
  fi

  # What a user's shell needs for `connectedk8s proxy -n demo -g sandbox`.
  cat >"$dir/env.sh" <<ENV
# Source this file to use the sandbox: connectedk8s proxy -n demo -g sandbox
export PATH="$bin:\$PATH"
export AZURE_TENANT_ID="$tenant"
export AZURE_CLIENT_ID="$sp_client"
export AZURE_CLIENT_SECRET="$sp_secret"
export AZURE_AUTHORITY_HOST="$authority"
export AZURE_SUBSCRIPTION_ID="$subscription"
export CONNECTEDK8S_ENDPOINT="https://127.0.0.1:$relay_port"
export CONNECTEDK8S_CA_FILE="$relay_ca"
export CONNECTEDK8S_TRANSPORT="$transport"
export CONNECTEDK8S_ALLOW_HTTP_LOOPBACK_AUTHORITY=1
export XDG_CONFIG_HOME="$dir/home/config"
export XDG_CACHE_HOME="$dir/home/cache"
export SANDBOX_CI_TOKEN="$ci_token"
export SANDBOX_IDP="$authority"
export SANDBOX_AGENT_HEALTH="http://127.0.0.1:$(json "$s/agent.ready" health_port)"
ENV
  chmod 600 "$dir/env.sh"
  log "ready: source $dir/env.sh"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down DIR [BIN_DIR]" >&2; exit 2 ;;
esac
