#!/usr/bin/env bash
# The GPU check in one short script: the GPU tests (pytest -m gpu) and the full tools/bench_fuse.py matrix on
# CUDA, with every output written to $OUT (default out/gpu_check). At most 5.5 minutes (timeouts 90 s + 240 s).
#
#   bash tools/gpu_check.sh                 on the GPU machine (torch with CUDA already installed there)
#   bash tools/gpu_check.sh --fetch-wheels  here, before: saves the wheels of what the GPU image lacks (POT, PyAV,
#                                           pyzmq, mcap, zstandard, simplejpeg: importing streamfuse needs them all)
#                                           into .whl/ (git-ignored, about 45 MB: name it in the device call's carry),
#                                           for a GPU machine that cannot reach PyPI
#   bash tools/gpu_check.sh --dry-run       the same steps on the CPU with tiny sizes (checks the script itself)
#
# Dependencies: carried wheels in .whl/ are installed offline; otherwise missing packages come from PyPI
# (the project's requirements, read from pyproject.toml); packages already installed are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu_check}
MODE=${1:-}

if [[ $MODE == --fetch-wheels ]]; then
    grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    # cp312 manylinux: the GPU image's python; the runtime dependencies it lacks (it has torch, numpy, numba,
    # opencv, pyyaml, tqdm, pytest and pytest-timeout). POT 0.9.6: 0.9.7's wheel is 33 MB, over what a call carries
    # beside PyAV's 35 MB
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl pot==0.9.6 av pyzmq mcap zstandard simplejpeg
    ls -l .whl
    exit 0
fi

mkdir -p "$OUT"
# importing streamfuse checks every runtime dependency (it stops naming what is missing)
if ! PYTHONPATH=$PWD "$PY" -c "import streamfuse, ot, cv2, yaml, numba, pytest, pytest_timeout" 2>/dev/null; then
    if [[ -n $(ls .whl/*.whl 2>/dev/null) ]]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$PWD/.whl/site" .whl/*.whl
        export PYTHONPATH=$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}
    else
        "$PY" -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(d for d in p['dependencies'] + p['optional-dependencies']['test'] if not d.startswith('torch')))" \
            > "$OUT/requirements.txt"
        "$PY" -m pip install -q -r "$OUT/requirements.txt"
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

if [[ $MODE == --dry-run ]]; then
    DEVICE=cpu BENCH=(--tiny --batch 1,2)
else
    DEVICE=cuda BENCH=(--sizes 640x480,1280x1024 --batch 1,8 --graphs on,off --precision fp32,fp16 --frames 500)
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else \
'gpu_check: torch ' + torch.__version__ + ' sees no CUDA GPU')"
fi
"$PY" -c "import torch, numpy, ot; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', \
numpy.__version__, 'POT', ot.__version__)" | tee "$OUT/env.txt"

# 1. GPU tests: only the files that declare them are collected.
status=0
mapfile -t GPU_TESTS < <(grep -rlE --include='*.py' 'mark\.gpu' tests)
timeout 90 "$PY" -m pytest -q -o addopts="" -m gpu --timeout=60 "${GPU_TESTS[@]}" 2>&1 | tee "$OUT/gpu_tests.txt" \
    || status=1

# 2. The benchmark matrix (GPU name printed on every line).
timeout 240 "$PY" tools/bench_fuse.py --device "$DEVICE" "${BENCH[@]}" 2>&1 | tee "$OUT/bench_fuse.txt" || status=1
exit $status
