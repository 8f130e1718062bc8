#!/usr/bin/env bash
# Set up, configure, build and run the tests.
#
#   scripts/test.sh              what CI runs (.ci/run): the release suite and the
#                                ASan+UBSan suite, every target built with warnings
#                                as errors, then a short libFuzzer run
#   scripts/test.sh PRESET       one preset's suite, as configured (dev, release, asan, tsan)
#   scripts/test.sh --tsan       the suite under ThreadSanitizer (= tsan)
#   scripts/test.sh --large      the large-transfer tests (CTest label `large`, left
#                                out of every other run), in the release build;
#                                `scripts/test.sh PRESET --large` in another
#
# Each phase prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="" large=0
for arg in "$@"; do
  case "$arg" in
    --large) large=1 ;;
    --tsan) mode=tsan ;;
    ci | dev | release | asan | tsan) mode="$arg" ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument '$arg' (see scripts/test.sh --help)" >&2; exit 2 ;;
  esac
done
[ -z "$mode" ] && { [ $large -eq 1 ] && mode=release || mode=ci; }

phases=()
# phase NAME CMD...: runs CMD and records how long it took.
phase() {
  local name="$1" start=$SECONDS rc=0
  shift
  echo "== $name" >&2
  "$@" || rc=$?
  local took=$((SECONDS - start))
  phases+=("$(printf '%-34s %4d:%02d' "$name" $((took / 60)) $((took % 60)))")
  echo "== $name: $((took / 60))m$((took % 60))s$([ $rc -ne 0 ] && echo " (FAILED, exit $rc)")" >&2
  return $rc
}
summary() {
  local rc=$?
  if ((${#phases[@]})); then
    echo "== durations (m:ss)" >&2
    printf '   %s\n' "${phases[@]}" >&2
  fi
  return $rc
}
trap summary EXIT

# build_and_test PRESET [CMAKE_ARGS...]: configure, build every target, run the suite.
build_and_test() {
  local preset="$1"
  shift
  phase "$preset: configure" cmake --preset "$preset" "$@" >/dev/null
  phase "$preset: build" cmake --build --preset "$preset"
  if [ $large -eq 1 ]; then
    phase "$preset: large tests" ctest --test-dir "build/$preset" -L large --output-on-failure --timeout 1800
  else
    phase "$preset: tests" ctest --preset "$preset" -j2
  fi
}

# The tunnel frame decoder and the rendezvous parsers under libFuzzer (clang
# only): short, bounded runs.
fuzz() {
  command -v clang++ >/dev/null || { echo "test.sh: clang++ is missing (scripts/setup.sh installs it)" >&2; return 1; }
  phase "fuzz: configure" cmake -S . -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
    -DCMAKE_BUILD_TYPE=Debug -DCLUSTERCONNECT_FUZZ=ON -DCLUSTERCONNECT_BUILD_TESTS=ON -DCMAKE_COMPILE_WARNING_AS_ERROR=ON >/dev/null
  phase "fuzz: build" cmake --build build/fuzz --target frame_decoder_fuzz client_hello_fuzz rendezvous_line_fuzz session_fuzz forward_fuzz
  phase "fuzz: run" ctest --test-dir build/fuzz -R '_fuzz_smoke$' --output-on-failure
}

phase "setup" scripts/setup.sh
case "$mode" in
  ci)
    # Warnings are errors in CI builds only: a user's newer compiler may warn
    # about things this one does not, and that must not stop the demo.
    build_and_test release -DCMAKE_COMPILE_WARNING_AS_ERROR=ON
    build_and_test asan -DCMAKE_COMPILE_WARNING_AS_ERROR=ON
    fuzz
    ;;
  *) build_and_test "$mode" ;;
esac
