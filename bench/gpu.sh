#!/usr/bin/env bash
# The one prepared command for a GPU machine: `bash bench/gpu.sh [--quick]` (any other
# options go to bench/gpu.py too, e.g. `--images 5000`).
#
# Assumes a bare machine with Python 3.12 and a CUDA build of torch already installed, and no
# network. Steps, each under a `timeout` (the whole stays under 10 minutes; about 5 expected):
#   1. install the project (editable) and its non-torch dependencies from the wheels in
#      bench/wheels/ if that folder exists; otherwise use the current environment (installing
#      the project itself with --no-deps if it is not importable yet);
#   2. build the synthetic store of bench/gpu.py in .bench/gpu/ in the background (CPU work,
#      2-3 minutes for 10,000 images), while
#   3. the CUDA tests run (`pytest -k cuda tests/`) and then tests/test_zoo.py (it compares
#      dissect.zoo:resnet50 with torchvision's where torchvision is installed);
#   4. bench/gpu.py (`--quick` passed through) on the GPU, reusing the store of step 2.
# Prints everything; exits nonzero if a step failed. With $OUT set to a folder, the
# bench/RESULTS.md written here (holding the new `gpu` section) and the store build's log are
# copied into it, for a machine whose files do not outlive the run.
#
# Filling bench/wheels/ on a machine with network (Python 3.12, manylinux x86_64; the
# project's dependencies from pyproject.toml except torch, plus setuptools for the build,
# plus pytest; pip fetches what they need in turn):
#
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux_2_28_x86_64 -d bench/wheels \
#     numpy pycocotools opencv-python-headless 'zarr>=3.1,<4' 'pydantic>=2.6' typer scipy \
#     pillow pyyaml tqdm jinja2 matplotlib xxhash 'setuptools>=77' pytest
#
# That is ~150 MB. A machine whose Python already holds numpy, opencv-python-headless, scipy,
# pillow, pyyaml, tqdm, jinja2, matplotlib, xxhash, typer and pytest (as the H200 machines
# this was prepared for do) needs only the rest, a few MB:
#
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux_2_28_x86_64 -d bench/wheels \
#     'zarr>=3.1,<4' 'pydantic>=2.6' pycocotools 'setuptools>=77'
#
# (bench/wheels/ is not ignored by git: do not commit it.)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
ARGS=("$@")  # --quick, or other options of bench/gpu.py
WORK=.bench/gpu
LOG=$(mktemp --suffix=.log -t bench-gpu-XXXXXX)
export PYTHONUNBUFFERED=1
failed=()

# step NAME SECONDS COMMAND...: run COMMAND under a timeout, record a failure, carry on
step() {
    local name=$1 limit=$2
    shift 2
    echo "== ${name} (at most ${limit} s): $*"
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "${limit}" "$@" || rc=$?
    if [[ ${rc} -eq 0 ]]; then
        echo "== ${name}: ok ($((SECONDS - t0)) s)"
    else
        echo "== ${name}: FAILED (exit ${rc}$([[ ${rc} -eq 124 ]] && echo ', timed out'), $((SECONDS - t0)) s)"
        failed+=("${name}")
    fi
}

finish() {
    if [[ -n "${OUT:-}" && -d "${OUT}" ]]; then
        cp bench/RESULTS.md "${OUT}/RESULTS.md" 2>/dev/null || true
        cp "${LOG}" "${OUT}/gpu-build.log" 2>/dev/null || true
    fi
    if [[ ${#failed[@]} -gt 0 ]]; then
        echo "== FAILED: ${failed[*]}"
        exit 1
    fi
    echo "== all steps passed"
}

echo "== environment"
"${PY}" -c 'import sys, torch; print("Python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda, "| available:", torch.cuda.is_available(), "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
nproc

if [[ -d bench/wheels ]]; then
    step install 90 "${PY}" -m pip install -q --no-index --find-links bench/wheels -e .
elif ! "${PY}" -c 'import broden.dissect.pipeline' 2>/dev/null; then
    step install 90 "${PY}" -m pip install -q --no-index --no-deps --no-build-isolation -e .
fi
if ! "${PY}" -c 'import broden.dissect.pipeline, zarr, pydantic' ; then
    echo "== broden does not import here: fill bench/wheels/ (see the top of bench/gpu.sh)"
    failed+=("import")
    finish
fi

echo "== building the store in the background (log: ${LOG})"
timeout --kill-after=10 240 "${PY}" bench/gpu.py --build-only --work "${WORK}" "${ARGS[@]}" \
    >"${LOG}" 2>&1 &
build=$!

step cuda-tests 150 "${PY}" -m pytest -q -p no:randomly -k cuda tests/
step zoo-tests 60 "${PY}" -m pytest -q -p no:randomly tests/test_zoo.py

rc=0
wait "${build}" || rc=$?
cat "${LOG}"
if [[ ${rc} -ne 0 ]]; then
    echo "== store build: FAILED (exit ${rc}); bench/gpu.py builds it itself"
    failed+=("store-build")
fi

step bench 240 "${PY}" bench/gpu.py --work "${WORK}" "${ARGS[@]}"
finish
