#!/usr/bin/env bash
# The prepared run for a session lent a GPU machine (the `device` tool): the CUDA tests, the GPU
# profile measured against the CPU fallback (tests/benchmarks/bench_gpu.py), the training cost, and a
# transformers family's detector on the GPU against the best CPU runtime.
#
#   here, once:  .venv/bin/python scripts/device_kit.py        # -> .devicekit/site-py3.12.tar.xz (~41 MiB)
#   device:      run(command="STEPS='tests bench' bash scripts/gpu_session.sh", carry=[".devicekit"],
#                    timeout_s=540)
#   at once:     run(command="STEPS='family train' bash scripts/gpu_session.sh", carry=[".devicekit"],
#                    timeout_s=<what is left, less half a minute>)
#
# The second call must follow the first at once: the machine goes back after about 30 s idle, and a
# fresh one costs its start again. STEPS (default: all five) picks the steps, in this order; worst
# cases (every step at its limit, 25 s to unpack): 525 s and 295 s, so both fit the 15 minutes with
# a start. The shapes step (its figures are in BENCHMARKS since 2026-12-04) is left for a later lease.
# Measured on the H200 (2026-12-04): unpack and environment 25 s, shape benchmark 46 s, CUDA tests
# 70 s, one benchmark round 255 s; a machine's start adds about 30 s to the call's device time.
# The family step is not measured on a GPU yet (about 150 s estimated: two conversions of an
# RT-DETR-R18-sized model, its CUDA buckets at load, one round).
#
# That machine has PyTorch on CUDA and numpy 2 but no Triton, no tritonclient and no network: the kit
# (scripts/device_kit.py) is unpacked into a folder on PYTHONPATH, which `fashionbox serve` forwards to
# the python-backend stubs; this checkout is installed editable, as here.
#
# Everything lands in $OUT (the device tool's folder; ./gpu-session-out elsewhere): session.log and
# environment.txt, then per step torch_shapes.json + shapes.log, cuda_tests.log, gpu.json + gpu.log,
# train_gpu.json + train.log, gpu_rt_detr.json + gpu_rt_detr.log, and the Triton logs of a benchmark
# that failed (NAME_triton_logs.txt). The tool brings back 8 files a call: hence the two calls above.
# Each step has its own time limit, so the files of the finished steps come back when a later one
# runs long. Limits (seconds): TESTS_S (0: no tests), SHAPES_S, BENCH_S, TRAIN_S, FAMILY_S; the
# benchmarks' arguments: BENCH_ARGS, TRAIN_ARGS, FAMILY_ARGS.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/gpu-session-out}
PYTHON=${PYTHON:-python3}
KIT=${FASHIONBOX_DEVICE_KIT:-$REPO/.devicekit}
SITE=${FASHIONBOX_DEVICE_SITE:-/tmp/fashionbox-site}
TESTS_S=${TESTS_S:-120}
SHAPES_S=${SHAPES_S:-60}
BENCH_S=${BENCH_S:-380}
# What a training run costs on the GPU (issue 18: steps/s of `fashionbox train --coco` with
# --device cuda --amp, tests/benchmarks/bench_train_coco.py); TRAIN_S=0 skips it.
TRAIN_S=${TRAIN_S:-70}
TRAIN_ARGS=${TRAIN_ARGS:---images 128 --batch 32 --detector-steps 40 --attribute-steps 40 --trials 0 --threads 8 --device cuda --amp}
# One round of three profiles took 255 s on the H200 (2026-12-04: server starts, bucket warm-ups
# and the network ceilings included); a second round adds about 100 s. cpu-best replaced cpu (ONNX
# Runtime, measured then: gpu_over_cpu 3.2) so the GPU is measured against the best CPU runtime;
# gpu-same-shape replaced gpu-unbatched (dynamic batching gain 10.0 then) to measure what ragged
# batches bring to postprocess, the CPU-side step that bounded that run.
BENCH_ARGS=${BENCH_ARGS:---rounds 2 --duration-s 4 --ceiling-s 1 --profiles gpu,cpu-best,gpu-same-shape --concurrency 64,256}
# A family on the GPU (issue 20): an RT-DETR-R18-sized transformers detector (random weights) served by
# the torch runtime on CUDA (fp16) against the best CPU runtime on the same 16 cores; the networks alone too.
FAMILY_S=${FAMILY_S:-200}
FAMILY_ARGS=${FAMILY_ARGS:---detector rt-detr-r18 --rounds 1 --duration-s 4 --ceiling-s 1 --profiles gpu,cpu-best --concurrency 16,64 --images 16 --no-perf-analyzer}
STEPS=${STEPS:-shapes tests bench train family}
mkdir -p "$OUT" "$SITE"
exec > >(tee -a "$OUT/session.log") 2>&1
step() { echo "== $(date -u +%T) $*"; }
started=$(date +%s)

step "unpack the kit into $SITE"
version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
archive="$KIT/site-py$version.tar.xz"
[ -f "$archive" ] || { echo "no $archive: build it with scripts/device_kit.py --python-version $version"; exit 10; }
"$PYTHON" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
  "$archive" "$SITE" || exit 11
# The stub links libpython3.X.so.1.0: where the loader does not know one, take the first on disk.
if ! ldconfig -p 2>/dev/null | grep -q "libpython$version.so.1.0"; then
  found=$(find / -xdev -name "libpython$version.so.1.0" 2>/dev/null | head -n 1)
  echo "libpython$version.so.1.0 is not in the loader's cache; found: ${found:-none}"
  [ -n "$found" ] && export LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH" PYTHONUNBUFFERED=1
# This checkout's parts, installed as here (editable, setuptools from the image, no dependencies
# resolved); where that fails, every part's folder on PYTHONPATH (they are PEP 420 portions).
parts=$(for f in */pyproject.toml; do printf -- '-e ./%s ' "$(dirname "$f")"; done)
# shellcheck disable=SC2086 # one argument per part
if ! "$PYTHON" -m pip install --quiet --no-index --no-deps --no-build-isolation $parts; then
  echo "editable install failed: putting every part's folder on PYTHONPATH instead"
  for project in "$REPO"/*/pyproject.toml; do PYTHONPATH="$PYTHONPATH:$(dirname "$project")"; done
  export PYTHONPATH
fi
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/fashionbox-cache}

step "environment"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
  echo "cpus: $(nproc)"
  "$PYTHON" - <<'EOF'
import sys, sysconfig
import numpy, torch, google.protobuf, onnxruntime, tritonclient  # noqa: F401
import fashionbox
print("python", sys.version.split()[0], "libpython dir", sysconfig.get_config_var("LIBDIR"))
print("numpy", numpy.__version__, numpy.__file__)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("protobuf", google.protobuf.__version__, "onnxruntime", onnxruntime.__version__)
print("fashionbox from", list(fashionbox.__path__))
try:
    import torchvision
    print("torchvision", torchvision.__version__)
except ImportError as exc:
    print("torchvision missing:", exc)
EOF
  stub="$SITE/pytriton/tritonserver/python_backend_stubs/$version/triton_python_backend_stub"
  libdir=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')
  echo "stub libraries not found (empty: none):"
  LD_LIBRARY_PATH="$SITE/nvidia_pytriton.libs:$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$stub" | grep "not found"
  echo "perf_analyzer: $(command -v perf_analyzer)"
} 2>&1 | tee "$OUT/environment.txt"

wanted() { case " $STEPS " in *" $1 "*) return 0 ;; *) echo "(not in STEPS: $STEPS)"; return 1 ;; esac; }

step "first sight of a batch shape, unbucketed and bucketed (limit ${SHAPES_S}s)"
if wanted shapes; then
  timeout "$SHAPES_S" "$PYTHON" tests/benchmarks/bench_torch_shapes.py --out "$OUT/torch_shapes.json" \
    >"$OUT/shapes.log" 2>&1
  echo "bench_torch_shapes exit $?"; tail -n 4 "$OUT/shapes.log"
fi

step "CUDA and TensorRT tests (limit ${TESTS_S}s; 0 skips them)"
if wanted tests && [ "$TESTS_S" -gt 0 ]; then
  # -W default: the device's newer packages may warn where ours do not; a warning is not a failure here.
  # From tests/: `python -m pytest` puts its folder first on sys.path, and this checkout's own
  # fashionbox/ folder (without the parts pyproject maps into it) must not shadow the package.
  # "cuda or tensorrt": the TensorRT engine tests run where the tensorrt package is present (they
  # skip, saying so, where it is not).
  (cd tests && timeout "$TESTS_S" "$PYTHON" -m pytest -q -p no:cacheprovider -W default -m "cuda or tensorrt" -rs \
    test_torch_runtime.py test_gpu_imaging.py test_tensorrt.py) >"$OUT/cuda_tests.log" 2>&1
  echo "pytest exit $? (log: cuda_tests.log)"; tail -n 15 "$OUT/cuda_tests.log"
else
  echo "skipped (TESTS_S=$TESTS_S, STEPS=$STEPS)"
fi

# bench_gpu.py with ARGS into OUT/NAME.json (log OUT/NAME.log) within LIMIT seconds; where it fails, the
# newest Triton logs into OUT/NAME_triton_logs.txt (the tool brings back a limited number of files).
bench_gpu() {
  local name=$1 limit=$2 args=$3 status
  # shellcheck disable=SC2086 # args is a list of arguments
  timeout "$limit" "$PYTHON" tests/benchmarks/bench_gpu.py $args --out "$OUT/$name.json" >"$OUT/$name.log" 2>&1
  status=$?
  echo "bench_gpu exit $status (log: $name.log)"; tail -n 40 "$OUT/$name.log"
  if [ "$status" -ne 0 ]; then
    find /tmp -name tritonserver.log -newermt "@$started" -print0 2>/dev/null | xargs -0 -r ls -t | head -n 4 |
      while read -r log; do echo "### $log"; tail -n 80 "$log"; done >"$OUT/${name}_triton_logs.txt"
  fi
}

step "benchmark: $BENCH_ARGS (limit ${BENCH_S}s)"
if wanted bench; then bench_gpu gpu "$BENCH_S" "$BENCH_ARGS"; fi

step "training cost: $TRAIN_ARGS (limit ${TRAIN_S}s; 0 skips it)"
if wanted train && [ "$TRAIN_S" -gt 0 ]; then
  # shellcheck disable=SC2086 # TRAIN_ARGS is a list of arguments
  timeout "$TRAIN_S" "$PYTHON" tests/benchmarks/bench_train_coco.py $TRAIN_ARGS --out "$OUT/train_gpu.json" \
    >"$OUT/train.log" 2>&1
  echo "bench_train_coco exit $? (log: train.log)"; tail -n 3 "$OUT/train.log"
fi

step "a family on the GPU: $FAMILY_ARGS (limit ${FAMILY_S}s; 0 skips it)"
if wanted family && [ "$FAMILY_S" -gt 0 ]; then bench_gpu gpu_rt_detr "$FAMILY_S" "$FAMILY_ARGS"; fi

step "done in $(( $(date +%s) - started ))s"
# Last, a short table per benchmark run: the reply of the device tool carries the end of the output.
for report in "$OUT/gpu.json" "$OUT/gpu_rt_detr.json"; do
  [ -f "$report" ] || continue
  "$PYTHON" - "$report" <<'EOF' || true
import json, sys
report = json.load(open(sys.argv[1]))
summary = report["summary"]
print(sys.argv[1].rsplit("/", 1)[-1], "detector", report.get("detector", "default"))
print(f"{'profile':<14}{'img/s':>9}{'at c':>6}{'p50 ms':>9}{'p99 ms':>9}{'c1 p50':>8}{'perf_an.':>10}{'errors':>8}")
for name, f in summary.items():
    if isinstance(f, dict):
        cells = [str(f.get(key, "-")) for key in ("images_per_s", "at_concurrency", "p50_ms", "p99_ms", "c1_p50_ms",
                                                  "perf_analyzer_images_per_s", "errors_all_levels")]
        print(f"{name:<14}" + "".join(f"{c:>{w}}" for c, w in zip(cells, (9, 6, 9, 9, 8, 10, 8))))
print({k: v for k, v in summary.items() if not isinstance(v, dict)}, "rounds", report.get("rounds_done"),
      "not measured", report.get("not_measured"), "networks alone", report.get("network_ceiling"))
EOF
done
