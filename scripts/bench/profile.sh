#!/usr/bin/env bash
# Profiles a running chain under small-request load: per request and per process,
# malloc calls, syscalls, writes and the sizes written (small TLS records show as
# many small writes), then where CPU time goes (perf, cpu-clock sampling, since a
# VM rarely exposes hardware counters).
#
#   profile.sh OUT_DIR URL TOKEN NAME=PID [NAME=PID...]
#
# URL is the small-request URL through the chain. Called by `bench.sh --profile`;
# every run is bounded in time. Adds a uprobe on libc's malloc for the duration
# and removes it afterwards.
set -euo pipefail
out="$1" url="$2" token="$3"; shift 3
mkdir -p "$out"
libc="$(ldconfig -p | awk '/libc\.so\.6 .*x86-64/{print $NF; exit}')"
hdr=(); [ -n "$token" ] && hdr=(-H "Authorization: Bearer $token")

probe_added=0
perf probe -q -x "$libc" --add malloc 2>/dev/null && probe_added=1 || true
cleanup() { [ "$probe_added" = 1 ] && perf probe -q --del 'probe_libc:malloc' 2>/dev/null || true; }
trap cleanup EXIT

requests_of() { awk '/requests in/{print $1; exit}' "$1"; }

summary="$out/summary.md"
{
  echo "| process | malloc / request | syscalls / request | write+writev+sendmsg / request | read+recvmsg / request |"
  echo "|---|---|---|---|---|"
} >"$summary"

for np in "$@"; do
  name="${np%%=*}" pid="${np#*=}"
  events=raw_syscalls:sys_enter,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendmsg,syscalls:sys_enter_sendto,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_recvmsg
  [ "$probe_added" = 1 ] && events="probe_libc:malloc,$events"
  perf stat -x, -e "$events" -p "$pid" -o "$out/stat-$name.csv" -- sleep 4 &
  stat_pid=$!
  sleep 0.3
  timeout 20 wrk "${hdr[@]}" -t1 -c1 -d3s "$url" >"$out/wrk-$name.txt" 2>&1 || true
  wait "$stat_pid" || true
  n="$(requests_of "$out/wrk-$name.txt")"
  python3 - "$out/stat-$name.csv" "${n:-0}" "$name" >>"$summary" <<'PY'
import sys
counts = {}
for line in open(sys.argv[1]):
    parts = line.strip().split(",")
    if len(parts) > 2 and parts[0].replace(".", "").isdigit():
        counts[parts[2]] = float(parts[0])
n = max(1.0, float(sys.argv[2]))
g = lambda *ks: sum(counts.get(k, 0) for k in ks) / n
print(f"| {sys.argv[3]} | {g('probe_libc:malloc'):.1f} | {g('raw_syscalls:sys_enter'):.1f} | "
      f"{g('syscalls:sys_enter_write', 'syscalls:sys_enter_writev', 'syscalls:sys_enter_sendmsg', 'syscalls:sys_enter_sendto'):.1f} | "
      f"{g('syscalls:sys_enter_read', 'syscalls:sys_enter_recvfrom', 'syscalls:sys_enter_recvmsg'):.1f} |")
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
done

# Where the CPU goes at 64 connections, all processes of the chain together.
pids="$(printf '%s\n' "$@" | cut -d= -f2 | paste -sd,)"
perf record -q -e cpu-clock -F 1999 -g -p "$pids" -o "$out/perf.data" -- sleep 5 2>/dev/null &
rec_pid=$!
sleep 0.3
timeout 20 wrk "${hdr[@]}" -t2 -c64 -d4s "$url" >"$out/wrk-perf.txt" 2>&1 || true
wait "$rec_pid" || true
perf report -i "$out/perf.data" --no-children --sort comm,dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -30 >"$out/perf-dso.txt" || true
perf report -i "$out/perf.data" --no-children --sort comm,symbol --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60 >"$out/perf-symbols.txt" || true
echo "perf: $(awk '/Requests\/sec/{print $2}' "$out/wrk-perf.txt") requests/s while sampling" >>"$out/perf-dso.txt"
cat "$summary"
