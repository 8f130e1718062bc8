#!/usr/bin/env bash
# scripts/progress.awk, which scripts/demo.sh puts between the build and the
# terminal: Ninja's "[n/N]" lines become a percentage every 10 % (or one line
# rewritten in place on a terminal), compiler diagnostics pass through, and
# nothing else does.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
failed=0
check() { # NAME WANT GOT
  if [ "$2" == "$3" ]; then echo "ok   $1"; else echo "FAIL $1"; echo "  want: $(printf '%q' "$2")"; echo "  got:  $(printf '%q' "$3")"; failed=1; fi
}
input="$(for i in $(seq 1 40); do echo "[$i/40] Building CXX object core/x$i.cpp.o"; [ "$i" -eq 17 ] && echo "../../core/x17.cpp:3:1: warning: unused variable 'y'"; done; echo "ninja: no work to do.")"
got="$(printf '%s\n' "$input" | awk -v tty=0 -f "$root/scripts/progress.awk")"
want="  building: 2% (1/40)
  building: 10% (4/40)
  building: 20% (8/40)
  building: 30% (12/40)
  building: 40% (16/40)
../../core/x17.cpp:3:1: warning: unused variable 'y'
  building: 50% (20/40)
  building: 60% (24/40)
  building: 70% (28/40)
  building: 80% (32/40)
  building: 90% (36/40)
  building: 100% (40/40)"
check "a line per 10 %, diagnostics kept, other lines dropped" "$want" "$got"
got="$(printf '[1/2] a\n[2/2] b\n' | awk -v tty=1 -f "$root/scripts/progress.awk")"
check "on a terminal, one line rewritten in place" $'\r  building:  50% (1/2)\r  building: 100% (2/2)\n' "$got"$'\n'
got="$(printf 'FAILED: core/x.o\n../x.cpp:1:2: error: expected ;\nninja: build stopped\n' | awk -v tty=0 -f "$root/scripts/progress.awk")"
check "a failed build shows what failed" $'FAILED: core/x.o\n../x.cpp:1:2: error: expected ;' "$got"
exit $failed
