#!/usr/bin/env bash
# Hostile-input CI (docs/reliability.md):
#   (a) the whole CPU test suite built with ASan + UBSan (gcc) in build-asan and run;
#   (b) every libFuzzer target of tests/fuzz built with clang (ASan + UBSan + libFuzzer) in
#       build-fuzz and run for FUZZ_SECONDS each from its seed corpus.
# Fails on any failing test, sanitizer report, crash, uncaught exception, hang (> 10 s per input),
# leak, or allocation over the limits below. Installs clang/libFuzzer/llvm via apt-get if missing.
#
# Environment: FUZZ_SECONDS (default 60, per target), FUZZ_PARALLEL (targets run at once, default
# nproc), JOBS (build jobs, default nproc), SKIP_ASAN=1 / SKIP_FUZZ=1 to run one half,
# FUZZ_SKIP="image onnx" to leave fuzz targets out.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_PARALLEL=${FUZZ_PARALLEL:-$(nproc)}
JOBS=${JOBS:-$(nproc)}
# Per-input limits: a parser must refuse a hostile size before allocating, so one input never needs
# more than a few hundred MB (the fuzz targets pass tightened reader limits, tests/fuzz/*.cpp).
FUZZ_FLAGS=(-rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 -print_final_stats=1)

start=$SECONDS
phase() { echo "== [$((SECONDS - start)) s] $*"; }

# ---- Tools -----------------------------------------------------------------------------------
bash tools/setup-debian.sh clang libclang-rt-14-dev llvm
symbolizer=$(command -v llvm-symbolizer || command -v llvm-symbolizer-14 || true)
export ASAN_SYMBOLIZER_PATH=${symbolizer}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# ---- (a) CPU tests under ASan + UBSan ----------------------------------------------------------
if [ "${SKIP_ASAN:-0}" != 1 ]; then
  phase "build-asan: configure (gcc, ASan + UBSan, CPU only)"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Release -DINSTANTID_CUDA=OFF \
    -DINSTANTID_SANITIZE=ON -DINSTANTID_BUILD_BENCHMARKS=OFF
  phase "build-asan: build"
  cmake --build build-asan -j"$JOBS"
  phase "build-asan: ctest"
  # packaging_install_and_consume links an installed, ASan-instrumented library into a plain
  # consumer (undefined __asan_* symbols): a property of sanitized builds; the plain CI runs it.
  ctest --test-dir build-asan --output-on-failure -j"$JOBS" -LE "gpu|packaging"
  phase "build-asan: passed"
fi

# ---- (b) libFuzzer targets --------------------------------------------------------------------
if [ "${SKIP_FUZZ:-0}" != 1 ]; then
  phase "build-fuzz: configure (clang, libFuzzer + ASan + UBSan)"
  # Warnings stay errors in the gcc builds; clang-only warnings must not block the fuzzers here.
  cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DINSTANTID_CUDA=OFF \
    -DINSTANTID_FUZZ=ON -DINSTANTID_WERROR=OFF -DINSTANTID_BUILD_BENCHMARKS=OFF \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++
  fuzz_dir=build-fuzz/tests/fuzz
  # FUZZ_SKIP: space-separated targets not to build or run (an opt-out; none by default).
  FUZZ_SKIP=${FUZZ_SKIP:-}
  mapfile -t targets < <(grep -v '^$' "$fuzz_dir/fuzz_targets.txt" | grep -vxF -f <(tr ' ' '\n' <<<"$FUZZ_SKIP"))
  if [ ${#targets[@]} -eq 0 ]; then
    echo "ci-hostile: no fuzz target was configured (tests/fuzz/CMakeLists.txt wires none)" >&2
    exit 1
  fi
  phase "build-fuzz: build ${targets[*]}"
  cmake --build build-fuzz -j"$JOBS" --target fuzz_corpus "${targets[@]/#/fuzz_}"

  phase "fuzz: ${#targets[@]} targets × ${FUZZ_SECONDS} s, ${FUZZ_PARALLEL} at a time"
  run_one() {  # <target>: runs it, leaves <log> and <rc> in $fuzz_dir/runs/<target>/
    local t=$1 out=$fuzz_dir/runs/$1 flags
    read -ra flags <<<"$FUZZ_FLAGS_STR"
    [ -f "tests/fuzz/$t.dict" ] && flags+=(-dict="tests/fuzz/$t.dict")
    rm -rf "$out" && mkdir -p "$out/artifacts" "$fuzz_dir/corpus/$t"
    set +e
    "$fuzz_dir/fuzz_$t" -max_total_time="$FUZZ_SECONDS" "${flags[@]}" \
      -artifact_prefix="$out/artifacts/" "$fuzz_dir/corpus/$t" "$fuzz_dir/seeds/$t" \
      >"$out/log" 2>&1
    echo $? >"$out/rc"
    set -e
  }
  export -f run_one
  export fuzz_dir FUZZ_SECONDS
  export FUZZ_FLAGS_STR="${FUZZ_FLAGS[*]}"  # bash cannot export arrays
  printf '%s\n' "${targets[@]}" | xargs -P "$FUZZ_PARALLEL" -I{} bash -c 'run_one "$1"' _ {}

  failed=0
  printf '%-14s %10s %9s %8s  %s\n' target runs exec/s corpus result
  for t in "${targets[@]}"; do
    log=$fuzz_dir/runs/$t/log
    rc=$(cat "$fuzz_dir/runs/$t/rc")
    runs=$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -1 || true)
    eps=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
    corpus=$(find "$fuzz_dir/corpus/$t" -type f | wc -l)
    result=ok
    if [ "$rc" != 0 ]; then
      result="FAILED (exit $rc): $(ls "$fuzz_dir/runs/$t/artifacts" | tr '\n' ' ')"
      failed=1
    fi
    printf '%-14s %10s %9s %8s  %s\n' "$t" "${runs:-?}" "${eps:-?}" "$corpus" "$result"
  done
  if [ $failed != 0 ]; then
    for t in "${targets[@]}"; do
      if [ "$(cat "$fuzz_dir/runs/$t/rc")" != 0 ]; then
        echo "---- fuzz_$t (reproduce: $fuzz_dir/fuzz_$t <artifact>)"
        grep -A40 -m1 -E 'ERROR|WARNING: MemorySanitizer|runtime error|deadly signal|out-of-memory|timeout|uncaught' \
          "$fuzz_dir/runs/$t/log" || tail -40 "$fuzz_dir/runs/$t/log"
      fi
    done
    phase "fuzz: FAILED"
    exit 1
  fi
  phase "fuzz: passed"
fi
phase "ci-hostile: all passed"
