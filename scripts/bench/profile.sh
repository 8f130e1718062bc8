#!/usr/bin/env bash
# Profiles a running chain under small-request load: per request and per process,
# malloc calls, syscalls, writes and the sizes written (small TLS records show as
# many small writes), then where CPU time goes (perf, cpu-clock sampling, since a
# VM rarely exposes hardware counters).
#
#   profile.sh OUT_DIR URL TOKEN NAME=PID [NAME=PID...]
#
# URL is the small-request URL through the chain. With PROFILE_BULK_URL (and
# PROFILE_CA, the CA that verifies it) set, a bulk download through the chain is
# profiled too: per process, syscalls and context switches per MiB, and where
# the CPU goes (bulk-*.txt). Called by `bench.sh --profile`;
# every run is bounded in time. Adds a uprobe on libc's malloc for the duration
# and removes it afterwards.
set -euo pipefail
out="$1" url="$2" token="$3"; shift 3
mkdir -p "$out"
libc="$(ldd "$(command -v wrk)" | awk '/libc\.so/ {print $3}')"
hdr=(); [ -n "$token" ] && hdr=(-H "Authorization: Bearer $token")

probe_added=0 have_probe=0
if perf probe -l 2>/dev/null | grep -q 'probe_libc:malloc'; then
  have_probe=1  # someone else's: use it, leave it
elif perf probe -q -x "$libc" --add malloc 2>/dev/null; then
  have_probe=1 probe_added=1
fi
cleanup() { [ "$probe_added" = 1 ] && perf probe -q --del 'probe_libc:malloc' 2>/dev/null || true; }
trap cleanup EXIT

requests_of() { awk '/requests in/{print $1; exit}' "$1"; }

summary="$out/summary.md"
{
  echo "| process | malloc / request | syscalls / request | write+writev+sendmsg / request | read+recvmsg / request | context switches / request | CPU µs / request |"
  echo "|---|---|---|---|---|---|---|"
} >"$summary"

for np in "$@"; do
  name="${np%%=*}" pid="${np#*=}"
  events=raw_syscalls:sys_enter,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendmsg,syscalls:sys_enter_sendto,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_recvmsg
  [ "$have_probe" = 1 ] && events="probe_libc:malloc,$events"
  # CPU time and context switches first, without the malloc uprobe (each probe
  # hit traps into the kernel and would count as the process's CPU time).
  perf stat -x, -e task-clock,context-switches -p "$pid" -o "$out/cpu-$name.csv" -- sleep 4 &
  stat_pid=$!
  sleep 0.3
  timeout 20 wrk "${hdr[@]}" -t1 -c1 -d3s "$url" >"$out/wrk-cpu-$name.txt" 2>&1 || true
  wait "$stat_pid" || true
  sed -i "s/^/$(requests_of "$out/wrk-cpu-$name.txt"),/" "$out/cpu-$name.csv"
  perf stat -x, -e "$events" -p "$pid" -o "$out/stat-$name.csv" -- sleep 4 &
  stat_pid=$!
  sleep 0.3
  timeout 20 wrk "${hdr[@]}" -t1 -c1 -d3s "$url" >"$out/wrk-$name.txt" 2>&1 || true
  wait "$stat_pid" || true
  n="$(requests_of "$out/wrk-$name.txt")"
  python3 - "$out/stat-$name.csv" "${n:-0}" "$name" "$out/cpu-$name.csv" >>"$summary" <<'PY'
import sys
def read(path, skip=0):
    counts = {}
    for line in open(path):
        parts = line.strip().split(",")[skip:]
        if len(parts) > 2 and parts[0].replace(".", "").isdigit():
            counts[parts[2]] = float(parts[0])
    return counts
counts = read(sys.argv[1])
n = max(1.0, float(sys.argv[2]))
g = lambda *ks: sum(counts.get(k, 0) for k in ks) / n
cpu_n = 1.0
for line in open(sys.argv[4]):
    head = line.split(",", 1)[0]
    if head.isdigit():
        cpu_n = max(1.0, float(head))
        break
cpu = read(sys.argv[4], 1)
print(f"| {sys.argv[3]} | {g('probe_libc:malloc'):.1f} | {g('raw_syscalls:sys_enter'):.1f} | "
      f"{g('syscalls:sys_enter_write', 'syscalls:sys_enter_writev', 'syscalls:sys_enter_sendmsg', 'syscalls:sys_enter_sendto'):.1f} | "
      f"{g('syscalls:sys_enter_read', 'syscalls:sys_enter_recvfrom', 'syscalls:sys_enter_recvmsg'):.1f} | "
      f"{cpu.get('context-switches', 0) / cpu_n:.2f} | {cpu.get('task-clock', 0) * 1000 / cpu_n:.1f} |")
PY

  # Sizes of what the process writes to sockets during one second of load.
  timeout 5 strace -f -qq -e trace=write,writev,sendmsg,sendto -p "$pid" -o "$out/strace-$name.txt" &
  st_pid=$!
  sleep 0.5
  timeout 10 wrk "${hdr[@]}" -t1 -c1 -d1s "$url" >"$out/wrk-strace-$name.txt" 2>&1 || true
  kill -INT "$st_pid" 2>/dev/null || true
  wait "$st_pid" 2>/dev/null || true
  python3 - "$out/strace-$name.txt" "$(requests_of "$out/wrk-strace-$name.txt")" "$name" >"$out/writes-$name.txt" <<'PY'
import collections, re, sys
sizes = []
for line in open(sys.argv[1]):
    m = re.search(r"\) = (\d+)$", line.strip())
    if m:
        sizes.append(int(m.group(1)))
n = max(1, int(sys.argv[2] or 1))
buckets = collections.Counter()
for s in sizes:
    b = 64
    while b < s:
        b *= 2
    buckets[b] += 1
print(f"{sys.argv[3]}: {len(sizes)} socket writes for {n} requests ({len(sizes)/n:.1f} per request, strace slows the run)")
for b in sorted(buckets):
    print(f"  <= {b:>7} bytes: {buckets[b]}")
PY

  # Which syscalls, per request (strace -c over one second of load).
  timeout 5 strace -c -f -qq -p "$pid" -o "$out/syscalls-$name.txt" &
  st_pid=$!
  sleep 0.5
  timeout 10 wrk "${hdr[@]}" -t1 -c1 -d1s "$url" >"$out/wrk-syscalls-$name.txt" 2>&1 || true
  kill -INT "$st_pid" 2>/dev/null || true
  wait "$st_pid" 2>/dev/null || true
  python3 - "$out/syscalls-$name.txt" "$(requests_of "$out/wrk-syscalls-$name.txt")" "$name" >>"$out/syscall-mix.txt" <<'PY'
import re, sys
n = max(1, int(sys.argv[2] or 1))
rows = []
for line in open(sys.argv[1]):
    f = line.split()
    # % time, seconds, usecs/call, calls, [errors,] syscall
    if len(f) >= 5 and re.fullmatch(r"[0-9.]+", f[0]) and f[-1] != "total":
        calls = int(f[3])
        errors = int(f[4]) if len(f) == 6 else 0
        rows.append((calls, errors, f[-1]))
rows.sort(reverse=True)
print(f"{sys.argv[3]}: syscalls per request ({n} requests under strace), errors in brackets")
for calls, errors, name in rows:
    print(f"  {name:<16} {calls / n:6.2f}" + (f"  ({errors / n:.2f})" if errors else ""))
PY
done

# Where the CPU goes at 64 connections, all processes of the chain together.
pids="$(printf '%s\n' "$@" | cut -d= -f2 | paste -sd,)"
perf record -q -e cpu-clock -F 1999 -g -p "$pids" -o "$out/perf.data" -- sleep 5 2>/dev/null &
rec_pid=$!
sleep 0.3
timeout 20 wrk "${hdr[@]}" -t2 -c64 -d4s "$url" >"$out/wrk-perf.txt" 2>&1 || true
wait "$rec_pid" || true
report() { perf report -i "$1" --no-children -g none --stdio "${@:2}" 2>/dev/null | grep -v '^#' | grep -v '^$' | sed 's/ *$//' | cut -c1-160; }
{
  echo "requests/s while sampling: $(awk '/Requests\/sec/{print $2}' "$out/wrk-perf.txt")"
  echo "processes: $*"
  echo; echo "## by thread (tid:comm)"; report "$out/perf.data" --sort pid | head -12
  echo; echo "## by thread and library"; report "$out/perf.data" --sort pid,dso | head -40
  echo; echo "## top symbols"; report "$out/perf.data" --sort pid,dso,symbol | head -80
} >"$out/perf-report.txt" || true

# Where each process's CPU goes with one request at a time (the latency case):
# flat symbols, by process, user and kernel together.
for np in "$@"; do
  name="${np%%=*}" pid="${np#*=}"
  perf record -q -e cpu-clock -F 4999 -g -p "$pid" -o "$out/perf-c1-$name.data" -- sleep 4 2>/dev/null &
  rec_pid=$!
  sleep 0.3
  timeout 20 wrk "${hdr[@]}" -t1 -c1 -d3s "$url" >"$out/wrk-c1-$name.txt" 2>&1 || true
  wait "$rec_pid" || true
  {
    echo "requests/s while sampling: $(awk '/Requests\/sec/{print $2}' "$out/wrk-c1-$name.txt")"
    echo; echo "## by library"; report "$out/perf-c1-$name.data" --sort dso | head -20
    echo; echo "## top symbols"; report "$out/perf-c1-$name.data" --sort dso,symbol | head -70
  } >"$out/perf-c1-$name.txt" || true
done

# Call chains (DWARF unwinding: the binaries have no frame pointers) of the agent
# and the proxy, where identity and token handling run.
for np in "$@"; do
  name="${np%%=*}" pid="${np#*=}"
  case "$name" in agent|proxy) ;; *) continue ;; esac
  perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$pid" -o "$out/perf-$name-dwarf.data" -- sleep 3 2>/dev/null &
  rec_pid=$!
  sleep 0.3
  timeout 20 wrk "${hdr[@]}" -t2 -c64 -d2s "$url" >/dev/null 2>&1 || true
  wait "$rec_pid" || true
  perf report -i "$out/perf-$name-dwarf.data" --children --percent-limit 3 --stdio -g caller,0.5,callee --max-stack 24 2>/dev/null \
    | grep -v '^$' | sed 's/ *$//' | cut -c1-200 | head -400 >"$out/perf-$name-callers.txt" || true
done
# A bulk download: what each process spends per MiB moved.
if [ -n "${PROFILE_BULK_URL:-}" ]; then
  bulk_sum="$out/bulk-summary.md"
  {
    echo "| process | syscalls / MiB | context switches / MiB | splice+recv+read / MiB | send+write / MiB |"
    echo "|---|---|---|---|---|"
  } >"$bulk_sum"
  for np in "$@"; do
    name="${np%%=*}" pid="${np#*=}"
    perf stat -x, -e raw_syscalls:sys_enter,context-switches,syscalls:sys_enter_splice,syscalls:sys_enter_recvfrom,syscalls:sys_enter_recvmsg,syscalls:sys_enter_read,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,syscalls:sys_enter_write,syscalls:sys_enter_writev \
      -p "$pid" -o "$out/bulk-stat-$name.csv" -- sleep 30 &
    stat_pid=$!
    sleep 0.3
    bytes="$(timeout 25 curl -s --http1.1 --cacert "$PROFILE_CA" "${hdr[@]}" -o /dev/null -w '%{size_download}' "$PROFILE_BULK_URL" || echo 0)"
    kill -INT "$stat_pid" 2>/dev/null || true
    wait "$stat_pid" 2>/dev/null || true
    python3 - "$out/bulk-stat-$name.csv" "${bytes:-0}" "$name" >>"$bulk_sum" <<'PY'
import sys
counts = {}
for line in open(sys.argv[1]):
    parts = line.strip().split(",")
    if len(parts) > 2 and parts[0].replace(".", "").isdigit():
        counts[parts[2]] = float(parts[0])
mib = max(1.0, float(sys.argv[2]) / 2**20)
g = lambda *ks: sum(counts.get(k, 0) for k in ks) / mib
s = lambda n: "syscalls:sys_enter_" + n
print(f"| {sys.argv[3]} | {g('raw_syscalls:sys_enter'):.1f} | {g('context-switches'):.1f} | "
      f"{g(s('splice'), s('recvfrom'), s('recvmsg'), s('read')):.1f} | {g(s('sendto'), s('sendmsg'), s('write'), s('writev')):.1f} |")
PY
  done
  perf record -q -e cpu-clock -F 1999 -g -p "$pids" -o "$out/bulk-perf.data" -- sleep 30 2>/dev/null &
  rec_pid=$!
  sleep 0.3
  timeout 25 curl -s --http1.1 --cacert "$PROFILE_CA" "${hdr[@]}" -o /dev/null "$PROFILE_BULK_URL" || true
  kill -INT "$rec_pid" 2>/dev/null || true
  wait "$rec_pid" || true
  {
    echo "## by thread (tid:comm)"; report "$out/bulk-perf.data" --sort pid | head -12
    echo; echo "## top symbols"; report "$out/bulk-perf.data" --sort pid,dso,symbol | head -80
  } >"$out/bulk-perf-report.txt" || true
  cat "$bulk_sum"
fi
cat "$summary"
