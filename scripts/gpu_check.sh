#!/usr/bin/env bash
# The GPU check of Mamba R1, for a machine with an NVIDIA GPU and the CUDA toolkit, in about eight minutes:
#   1. configure and build (Release, CUDA on) into BUILD_DIR (default: build-gpu)
#   2. the [cuda] Catch2 tests: every kernel against the CPU reference
#   3. mamba-r1 validate: every op over the named shapes, and the whole model, CUDA against the CPU
#   4. the scan bandwidth bench (B=8, L=2048, E=2048, N=16) against the device's peak, and four more runs:
#      the seed example's shape, d_state 64, and the target's shape cut into 2 and 4 pieces of the sequence
#   5. mamba-r1 bench on the seed example: CUDA, the CPU, and CUDA with dense MLP blocks for the MoE
#   6. the NumPy cross-check of `mamba-r1 forward --backend cuda` (when numpy and safetensors are installed)
#   7. decoding on CUDA: generate --bench on the 91M-parameter model (step-mode kernels), 500 tokens
#   8. backend auto: its self-check picks the GPU
#   9. compute-sanitizer, where it can see the device: racecheck on the scan cut into pieces and on routing,
#      memcheck on every [cuda] test
# then a summary table, last. Each step has a time limit; a failed step does not stop the others.
# Exit 0 when every step passed (an optional step that cannot run here says n/a).
# Usage: scripts/gpu_check.sh [BUILD_DIR]
#
# The C++ libraries: where the machine has no package registry (the lent GPU machine has none), fetch
# them here first with scripts/device_deps.sh and bring .device-deps along; this script then unpacks
# them into BUILD_DIR/deps and builds against them.
# Environment: GPU_CHECK_BUDGET (seconds, default 540): steps that would run past it are skipped, so
# that the summary is printed inside a caller's time limit; GPU_CHECK_LOGS: the folder for the logs
# (default: a new temporary folder); GPU_CHECK_PREBUILT: a folder of programs that scripts/gpu_prebuild.sh
# built elsewhere for this device, used instead of building when they start here.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build-gpu}"
logs="${GPU_CHECK_LOGS:-$(mktemp -d)}"
mkdir -p "$logs"
budget="${GPU_CHECK_BUDGET:-540}"
if ! [[ "$budget" =~ ^[0-9]+$ ]]; then
  echo "gpu_check: GPU_CHECK_BUDGET: expected a whole number of seconds, found '$budget'" >&2
  exit 2
fi
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
jobs="$(nproc)"
seed="$root/experiments/seed_example.toml"
started=$SECONDS

names=()
results=()
details=()

# run NAME LIMIT_SECONDS COMMAND...: runs the command with its output shown and saved to $logs/NAME.log;
# sets $status to its exit code (124 when it ran past the limit). The limit is cut to what is left of
# the budget, less 15 s for the summary; with under 20 s left the command is not run, and the next
# record says so.
out_of_time=0
run() {
  local name="$1" limit="$2"
  shift 2
  local left=$((budget - (SECONDS - started) - 15))
  echo
  if [ "$left" -lt 20 ]; then
    echo "=== $name: skipped, ${budget} s budget spent"
    : >"$logs/$name.log"
    status=125
    out_of_time=1
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  echo "=== $name: $*"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$logs/$name.log"
  status=${PIPESTATUS[0]}
  [ "$status" -eq 124 ] && echo "=== $name: stopped after ${limit}s"
  return 0
}

# record NAME RESULT DETAIL (SKIPPED instead when the step's command was not run for want of time)
record() {
  names+=("$1")
  if [ "$out_of_time" -eq 1 ]; then
    results+=(SKIPPED)
    details+=("the ${budget} s budget (GPU_CHECK_BUDGET) was spent")
    out_of_time=0
  else
    results+=("$2")
    details+=("$3")
  fi
}

# 1. Build, against the libraries in .device-deps when they came along.
step_start=$SECONDS
deps_args=()
if compgen -G "$root/.device-deps/*.deb" >/dev/null; then
  prefix="$build/deps"
  rm -rf "$prefix"
  mkdir -p "$prefix"
  for deb in "$root"/.device-deps/*.deb; do
    if command -v dpkg-deb >/dev/null 2>&1; then
      dpkg-deb -x "$deb" "$prefix"
    else
      (cd "$prefix" && ar p "$deb" "$(ar t "$deb" | grep '^data\.tar')" | tar -xJf -)
    fi
  done
  echo "=== libraries: $(ls "$root"/.device-deps/*.deb | wc -l) packages of .device-deps unpacked into $prefix"
  deps_args=(-DCMAKE_PREFIX_PATH="$prefix/usr")
  export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# Programs built elsewhere (scripts/gpu_prebuild.sh), when each of them starts here.
prebuilt=""
if [ -n "${GPU_CHECK_PREBUILT:-}" ]; then
  candidate="$(cd "$GPU_CHECK_PREBUILT" 2>/dev/null && pwd)"
  export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/local/cuda/lib64"
  starts=1  # each program, asked for its usage, prints it (a missing library or a foreign CPU does not)
  for program in mamba-r1 mamba-r1-tests mamba-r1-scan-bench; do
    usage="$("${candidate:-.}/$program" --help 2>&1)"
    [[ "$usage" == *[Uu]sage* ]] || starts=0
  done
  if [ -n "$candidate" ] && [ "$starts" -eq 1 ]; then
    prebuilt="$candidate"
    echo "=== prebuilt programs: $prebuilt ($(cat "$prebuilt/BUILT" 2>/dev/null || echo 'no BUILT note'))"
  else
    echo "=== prebuilt programs in '$GPU_CHECK_PREBUILT' do not start here; building instead:"
    "${candidate:-.}/mamba-r1-tests" --help 2>&1 | head -n 3
  fi
fi
# Ninja where there is one and the build folder is new (a configured folder keeps its generator).
generator=()
if command -v ninja >/dev/null 2>&1 && [ ! -f "$build/CMakeCache.txt" ]; then
  generator=(-G Ninja)
fi
echo "=== tools: $(cmake --version | head -n 1); $(nvcc --version 2>/dev/null | tail -n 1); $(c++ --version | head -n 1)"
# Only the device's own architecture (about half the CUDA compile time of sm_80 and sm_90 together, which
# every other build compiles), when nvidia-smi says which it is.
architectures=()
capability="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')"
if [[ "$capability" =~ ^[0-9]+$ ]]; then
  architectures=(-DCMAKE_CUDA_ARCHITECTURES="$capability")
fi
if [ -n "$prebuilt" ]; then
  build="$prebuilt"
  record "build (prebuilt, CUDA)" pass "$(cat "$prebuilt/BUILT" 2>/dev/null || echo "$prebuilt")"
else
  run configure 120 cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DMAMBA_R1_CUDA=ON \
    -DMAMBA_R1_CUDA_EMULATOR=OFF "${architectures[@]}" "${deps_args[@]}"  # no emulated [cuda] tests here
  if [ "$status" -eq 0 ] && ! grep -q "^CMAKE_CUDA_COMPILER:.*nvcc" "$build/CMakeCache.txt" 2>/dev/null; then
    echo "=== configure: nvcc was not found, so this build has no CUDA backend"
    status=1
  fi
  if [ "$status" -eq 0 ]; then
    run build 420 cmake --build "$build" --parallel "$jobs"
  fi
  if [ "$status" -ne 0 ]; then
    record "build (Release, CUDA)" FAIL "exit $status; see $logs"
  else
    record "build (Release, CUDA)" pass "$((SECONDS - step_start)) s on $jobs cores"
  fi
fi
bin="$build/mamba-r1"

if [ ! -x "$bin" ]; then
  echo "=== no mamba-r1 binary; nothing more to check"
else
  device="$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"

  # 2. The [cuda] tests.
  step_start=$SECONDS
  run cuda_tests 240 "$build/mamba-r1-tests" "[cuda]"
  summary_line="$(grep -E "All tests passed|test cases:" "$logs/cuda_tests.log" | tail -n 1)"
  skipped="$(grep -c "skipped: " "$logs/cuda_tests.log")"
  if [ "$status" -eq 0 ] && [ "$skipped" -eq 0 ]; then
    record "[cuda] tests" pass "$summary_line ($((SECONDS - step_start)) s)"
  elif [ "$status" -eq 0 ]; then
    record "[cuda] tests" SKIPPED "$skipped test cases $(grep -m1 -A1 "skipped: " "$logs/cuda_tests.log" | tr -s ' \n' ' ' | sed 's/^ *//')"
  else
    record "[cuda] tests" FAIL "exit $status: $summary_line"
  fi

  # 3. validate.
  step_start=$SECONDS
  run validate 300 "$bin" validate
  last="$(grep -E "^validate: [0-9]+ checks" "$logs/validate.log" | tail -n 1)"
  case "$status" in
    0) record "mamba-r1 validate" pass "${last#validate: }" ;;
    3) record "mamba-r1 validate" "NO GPU" "$(tail -n 1 "$logs/validate.log")" ;;
    *) record "mamba-r1 validate" FAIL "exit $status: ${last#validate: } (failing lines: grep -E 'FAIL|failing' $logs/validate.log)" ;;
  esac

  # 4. The scan's bandwidth.
  run scan_bench 120 "$build/mamba-r1-scan-bench"
  forward_line="$(grep "selective scan forward" "$logs/scan_bench.log" | sed -E 's/.*: +//')"
  backward_line="$(grep "selective scan backward" "$logs/scan_bench.log" | sed -E 's/.*: +//')"
  verdict="$(grep -o "target=0.60 .*" "$logs/scan_bench.log")"
  copy_line="$(grep -o "device-to-device copy.*" "$logs/scan_bench.log")"
  if [ "$status" -eq 0 ]; then
    record "scan forward B8 L2048 E2048 N16" pass "$forward_line ($verdict); $copy_line"
    record "scan backward (same shape)" pass "$backward_line"
  elif [ "$status" -eq 3 ]; then
    record "scan bench" "NO GPU" "$(tail -n 1 "$logs/scan_bench.log")"
  else
    record "scan bench" FAIL "exit $status: $(tail -n 1 "$logs/scan_bench.log")"
  fi

  # The scan at more shapes, for the record (no target): the seed example's (a short grid, which the scan
  # cuts into pieces of the sequence; the bench times the uncut scan beside it), d_state 64, and the
  # target's shape cut into 2 and 4 pieces (is one piece, the choice for a grid that fills the device,
  # the faster?).
  for shape in "4 512 256 16" "8 2048 2048 64" "8 2048 2048 16 2" "8 2048 2048 16 4"; do
    read -r b l e n pieces <<< "$shape"
    name="scan_bench_B${b}_L${l}_E${e}_N${n}${pieces:+_P$pieces}"
    run "$name" 60 "$build/mamba-r1-scan-bench" "$b" "$l" "$e" "$n" ${pieces:+20 "$pieces"}
    label="scan B$b L$l E$e N$n${pieces:+, $pieces pieces asked}"
    if [ "$status" -eq 0 ]; then
      forward_line="$(grep "selective scan forward" "$logs/$name.log" | sed -E 's/.*: +//')"
      backward_line="$(grep "selective scan backward" "$logs/$name.log" | sed -E 's/.*: +//')"
      pieces_line="$(grep -E "^(sequence pieces|pieces speed-up)" "$logs/$name.log" |
        sed -E 's/ \((chosen for this device|asked)\)//' | paste -sd ';' -)"
      record "$label" pass "forward $forward_line; backward $backward_line; $pieces_line"
    elif [ "$status" -ne 3 ]; then
      record "$label" FAIL "exit $status: $(tail -n 1 "$logs/$name.log")"
    fi
  done

  # 5. The seed example's throughput: forward and a training step, CUDA next to the CPU.
  bench() {  # bench NAME LABEL ARGS...
    local name="$1" label="$2"
    shift 2
    run "$name" 150 "$bin" bench "$seed" --set run.repeats=3 "$@"
    if [ "$status" -eq 0 ]; then
      local forward train parts
      forward="$(grep "forward (inference)" "$logs/$name.log" | awk '{print $NF}')"
      train="$(grep "^training step (" "$logs/$name.log" | awk '{print $NF}')"
      # The step's parts (name: the first 30 columns), total ms each.
      parts="$(awk '/^part /{on=1; next} /^sum /{on=0} on {n=substr($0,1,30); sub(/ +$/,"",n);
                    printf "%s%s %s ms", sep, n, $(NF-1); sep=", "}' "$logs/$name.log")"
      record "$label" pass "forward $forward tokens/s, training step $train tokens/s; step parts: $parts"
    else
      record "$label" FAIL "exit $status: $(grep -E "error|failed" "$logs/$name.log" | tail -n 1)"
    fi
  }
  bench bench_cuda "seed example bench, cuda" --backend cuda
  bench bench_cpu "seed example bench, cpu" --backend cpu
  bench bench_cuda_dense "seed example, moe->mlp, cuda" --backend cuda --set 'model.order=["mamba","mlp"]'

  # 6. The NumPy cross-check on CUDA.
  if python3 -c "import numpy, safetensors" >/dev/null 2>&1; then
    run cross_check 180 "$root/scripts/cross_check.sh" "$build" --backend cuda
    if [ "$status" -eq 0 ]; then
      record "cross-check (numpy), cuda" pass "$(grep "^cross-check:" "$logs/cross_check.log" | tail -n 1)"
    else
      record "cross-check (numpy), cuda" FAIL "exit $status: $(grep "^cross-check:" "$logs/cross_check.log" | tail -n 1)"
    fi
  else
    record "cross-check (numpy), cuda" SKIPPED "python3 lacks numpy or safetensors"
  fi

  # 7. Decoding on CUDA (the step-mode kernels), batch 1 and batch 16.
  run decode_cuda 150 "$bin" generate "$root/experiments/decode_100m.toml" --bench --backend cuda --max-new-tokens 500
  if [ "$status" -eq 0 ]; then
    narrow="$(grep "decode tokens/s, batch 1 " "$logs/decode_cuda.log" | awk '{print $NF}')"
    wide="$(grep -E "decode tokens/s, batch [0-9]{2}" "$logs/decode_cuda.log" | awk '{print $NF}')"
    prefill="$(grep "^prefill tokens/s" "$logs/decode_cuda.log" | awk '{print $NF}')"
    record "decode 91M model, cuda" pass "batch 1 $narrow tokens/s, batch 16 $wide tokens/s, prefill $prefill tokens/s"
  else
    record "decode 91M model, cuda" FAIL "exit $status: $(grep -E "error|failed" "$logs/decode_cuda.log" | tail -n 1)"
  fi

  # 8. backend auto: the self-check against the CPU must pick the GPU.
  rm -rf "$logs/auto_run"
  run auto_backend 120 "$bin" run "$root/experiments/quickstart.toml" --backend auto --set training.steps=20 \
    --out "$logs/auto_run"
  chosen="$(grep -m1 "backend:" "$logs/auto_backend.log" | sed -E 's/.*backend: //')"
  if [ "$status" -eq 0 ] && grep -q "backend: cuda (auto)" "$logs/auto_backend.log"; then
    record "backend auto (self-check)" pass "$chosen"
  else
    record "backend auto (self-check)" FAIL "exit $status: $chosen"
  fi

  # 9. compute-sanitizer, where the machine lets it see the device (on gVisor it does not): racecheck
  # (shared-memory hazards between threads) on the scans cut into pieces and on routing's block-wide scans
  # (barriers the emulator cannot prove needed), then memcheck (out-of-bounds and misaligned accesses)
  # on every [cuda] test. Optional: "n/a" when it cannot run, which does not fail the check.
  sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)"
  sanitize() {  # sanitize NAME LABEL LIMIT TOOL TESTS [TOOL OPTIONS...]
    local name="$1" label="$2" limit="$3" tool="$4" tests="$5"
    shift 5
    if [ -z "$sanitizer" ]; then
      record "$label" n/a "no compute-sanitizer on this machine"
      return 0
    fi
    run "$name" "$limit" "$sanitizer" --tool "$tool" --error-exitcode 9 "$@" "$build/mamba-r1-tests" "$tests"
    local found
    found="$(grep -m1 -E "(RACECHECK|ERROR|LEAK) SUMMARY" "$logs/$name.log")"
    if [ "$out_of_time" -eq 1 ]; then
      out_of_time=0
      record "$label" n/a "not run: the ${budget} s budget was spent"
    elif grep -q "Device not supported\|unsupported" "$logs/$name.log"; then
      record "$label" n/a "compute-sanitizer cannot see this device (gVisor?)"
    elif [ "$status" -eq 124 ]; then
      record "$label" n/a "stopped at its ${limit} s limit (not a finding; see $logs/$name.log)"
    elif [ "$status" -eq 0 ]; then
      record "$label" pass "${found:-no hazard or error reported}; $(grep -E "All tests passed|test cases:" \
        "$logs/$name.log" | tail -n 1)"
    else
      record "$label" FAIL "exit $status: ${found:-$(tail -n 1 "$logs/$name.log")}"
    fi
  }
  cases="cuda: the selective scan cut into pieces of the sequence matches the CPU"
  cases+=",cuda: top-k and capacity match the CPU routing ops"
  sanitize racecheck "racecheck, scan and routing" 120 racecheck "$cases"
  sanitize memcheck "memcheck, the [cuda] tests" 180 memcheck "[cuda]"
fi

echo
echo "=== GPU check summary ($((SECONDS - started)) s${device:+, $device}; logs in $logs)"
printf '%-40s %-8s %s\n' "step" "result" "detail"
printf '%-40s %-8s %s\n' "----" "------" "------"
failed=0
for i in "${!names[@]}"; do
  printf '%-40s %-8s %s\n' "${names[$i]}" "${results[$i]}" "${details[$i]}"
  case "${results[$i]}" in pass | n/a) ;; *) failed=1 ;; esac
done
exit "$failed"
