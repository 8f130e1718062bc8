#!/usr/bin/env bash
# The main job on the embedded default: builds clusterconnect, starts a local
# sandbox (stand-in API server, oidc-provider as Entra ID, relay, agent) and
# runs kubectl through `connectedk8s proxy` on a short tour.
#
#   scripts/demo.sh                  set up, build, run the tour, stop everything
#   scripts/demo.sh --keep           leave the sandbox running and print how to use it
#   scripts/demo.sh --down           stop a sandbox left running by --keep
#   scripts/demo.sh --transport ws   the tour over Hybrid Connections WebSocket rendezvous
#                                    instead of end-to-end TLS (tls, the default)
#   scripts/demo.sh --replicas 3     three relay replicas on etcd behind one address (HAProxy,
#                                    TCP mode), the agent's channels one per replica, instead
#                                    of one relay with a file registry (1, the default)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
sandbox="${CLUSTERCONNECT_SANDBOX:-$root/sandbox}"
mode=""
export SANDBOX_TRANSPORT="${SANDBOX_TRANSPORT:-tls}"
export SANDBOX_REPLICAS="${SANDBOX_REPLICAS:-1}"
while [ $# -gt 0 ]; do
  case "$1" in
    --keep|--down) mode="$1" ;;
    --transport) SANDBOX_TRANSPORT="${2:?--transport needs tls or ws}"; shift ;;
    --transport=*) SANDBOX_TRANSPORT="${1#--transport=}" ;;
    --replicas) SANDBOX_REPLICAS="${2:?--replicas needs a number}"; shift ;;
    --replicas=*) SANDBOX_REPLICAS="${1#--replicas=}" ;;
    *) echo "usage: $0 [--keep|--down] [--transport tls|ws] [--replicas N]" >&2; exit 2 ;;
  esac
  shift
done
case "$SANDBOX_TRANSPORT" in tls|ws) ;; *) echo "--transport must be tls or ws" >&2; exit 2 ;; esac
case "$SANDBOX_REPLICAS" in [1-9]) ;; *) echo "--replicas must be 1 to 9" >&2; exit 2 ;; esac
relays="one relay"
[ "$SANDBOX_REPLICAS" -gt 1 ] && relays="$SANDBOX_REPLICAS relay replicas on etcd behind HAProxy"

if [ "$mode" = "--down" ]; then
  scripts/sandbox.sh down "$sandbox"
  echo "sandbox stopped"
  exit 0
fi

# Everything the set-up and the build print goes to one log; the terminal gets
# the steps and the build's progress.
mkdir -p "$root/build"
log="$root/build/demo.log"
: >"$log"
failed_in() {
  echo "demo: $1 failed; the last lines of $log:" >&2
  tail -n 25 "$log" >&2
  exit 1
}

echo "== [1/4] checking what the build and the sandbox need (a few minutes on a fresh machine; log: $log) ==" >&2
CLUSTERCONNECT_SETUP_LOG="$log" scripts/setup.sh || failed_in "the set-up"
# CLUSTERCONNECT_BIN names already-built binaries (the test suite uses its own build).
bin="${CLUSTERCONNECT_BIN:-}"
if [ -z "$bin" ]; then
  echo "== [2/4] building (release; log: $log) ==" >&2
  cmake --preset release >>"$log" 2>&1 || failed_in "configuring the build"
  tty=0; [ -t 2 ] && tty=1
  cmake --build --preset release 2>&1 | tee -a "$log" | awk -v tty=$tty -f "$root/scripts/progress.awk" >&2 ||
    failed_in "the build"
  bin="$root/build/release/stage/bin"
else
  echo "== [2/4] using the binaries in $bin ==" >&2
fi

echo "== [3/4] starting the sandbox in $sandbox (transport $SANDBOX_TRANSPORT, $relays) ==" >&2
scripts/sandbox.sh up "$sandbox" "$bin"
if [ "$mode" != "--keep" ]; then trap 'scripts/sandbox.sh down "$sandbox"' EXIT; fi
# shellcheck disable=SC1091
source "$sandbox/env.sh"

echo "== [4/4] kubectl through connectedk8s proxy -n demo -g sandbox ==" >&2
export DEMO_STATE="$sandbox/state" DEMO_LOGS="$sandbox/logs"
status=0
"$bin/connectedk8s" proxy -n demo -g sandbox --port 0 -- "$root/scripts/demo-tour.sh" || status=$?

if [ $status -ne 0 ]; then
  echo "the tour failed (exit $status); logs are in $sandbox/logs" >&2
  for f in "$sandbox"/logs/relay*.log "$sandbox"/logs/{agent,apiserver,idp,etcd,lb}.log; do
    [ -f "$f" ] || continue
    echo "---- last lines of $(basename "$f") ----" >&2
    tail -n 15 "$f" >&2 || true
  done
  exit $status
fi

if [ "$mode" = "--keep" ]; then
  cat <<MSG

The sandbox keeps running. From another terminal:

  source $sandbox/env.sh
  connectedk8s proxy -n demo -g sandbox        # writes context 'demo' to ~/.kube/config
  kubectl get pods                             # in a third terminal, or after the ready line

Stop it with: scripts/demo.sh --down
MSG
fi
