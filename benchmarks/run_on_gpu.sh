#!/usr/bin/env bash
# Builds vico_flow in place with its CUDA kernels against the python3 of a GPU
# machine, then runs the GPU tests and the GPU benchmark suite. Logs and the
# benchmark JSON go to OUTDIR; each stage has a time limit so that one slow
# stage still leaves the others' results.
#
#   bash benchmarks/run_on_gpu.sh OUTDIR
#
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default: the
# visible GPU's), BUILD_S / TEST_S / BENCH_S (stage limits in seconds).
set -uo pipefail
out=${1:?usage: benchmarks/run_on_gpu.sh OUTDIR}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
stage() { echo "== $1 ($(date +%T))"; }

stage environment
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  "$py" -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
  echo "cpus $(nproc)"
} 2>&1 | tee "$out/env.txt"

stage "build (limit ${BUILD_S:-240} s)"
if ! timeout "${BUILD_S:-240}" "$py" setup.py build_ext --inplace >"$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  echo "build failed: $out/build.log"
  exit 1
fi
"$py" -c "import vico_flow, vico_flow._C as c; print('cuda kernels built:', c.cuda_built, '| backends:', vico_flow.available_backends())"

stage "tests (limit ${TEST_S:-150} s)"
timeout "${TEST_S:-150}" "$py" -m pytest -q -ra --tb=short tests/test_gpu_backends.py tests/test_op_api.py 2>&1 | tee "$out/tests.txt"
tests_rc=${PIPESTATUS[0]}

stage "benchmarks (limit ${BENCH_S:-240} s)"
timeout "${BENCH_S:-240}" "$py" -m pytest -q benchmarks/test_bench_gpu.py --benchmark-only \
  --benchmark-json="$out/gpu.json" 2>&1 | tee "$out/bench.txt" | grep -v "^benchmarks/"
bench_rc=${PIPESTATUS[0]}

stage "done: tests exit $tests_rc, benchmarks exit $bench_rc"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
