# Turns a build's output into a short progress report: Ninja's "[n/N] …"
# lines become "building: P% (n/N)" every 10 % (or, on a terminal, one line
# rewritten in place); compiler errors and warnings pass through as they come.
# Usage: cmake --build … 2>&1 | awk -v tty=0|1 -f scripts/progress.awk
BEGIN { last = -1 }
/^\[[0-9]+\/[0-9]+\] / {
  split(substr($1, 2, length($1) - 2), nN, "/")
  n = nN[1] + 0; N = nN[2] + 0
  if (N <= 0) next
  p = int(n * 100 / N)
  if (tty) {
    printf "\r  building: %3d%% (%d/%d)", p, n, N
    shown = 1
  } else if (last < 0 || p >= last + 10 || n == N) {
    printf "  building: %d%% (%d/%d)\n", p, n, N
    last = p - p % 10
  }
  fflush()
  next
}
/error|warning:|FAILED|Error / {
  if (tty && shown) { printf "\n"; shown = 0 }
  print
  fflush()
}
END { if (tty && shown) printf "\n" }
