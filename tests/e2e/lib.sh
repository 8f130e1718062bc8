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
# Waits poll for a file's content, which is the event itself; each is bounded.

: "${root:?set root before sourcing lib.sh}"
cmd_timeout=30
pids=()
sandboxes=()
failures=0

e2e_begin() {
  work="$(mktemp -d "/tmp/cc-$1.XXXXXX")"
  sandbox="$work/sandbox"
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
