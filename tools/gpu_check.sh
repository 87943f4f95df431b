#!/usr/bin/env bash
# The GPU check in one short script, every output written to $OUT (default out/gpu_check): 1. the GPU tests
# (pytest -m gpu), 2. the tools/bench_fuse.py matrix on CUDA, 3. the teacher at K = 20, 4. the live demo on the GPU
# (`engine.device: auto`) with a subscriber, at the demo's camera rates and at 120 frames/s, 5. an offline replay,
# 6. with DATA=DIR (a folder with ir/ and vi/, e.g. a copy of msrs/test): `evaluate` on CUDA and on the CPU, and the
# largest pixel difference between their fused images. At most 9 minutes (each step has its own timeout); STEPS
# picks steps (default "1 2 3 4 5 6").
#
#   bash tools/gpu_check.sh                 on the GPU machine (torch with CUDA already installed there)
#   bash tools/gpu_check.sh --fetch-wheels  here, before: saves the wheels of what the GPU image lacks (POT, PyAV,
#                                           pyzmq, mcap, zstandard, lz4, simplejpeg: importing streamfuse needs them
#                                           all) into .whl/ (git-ignored, about 45 MB: name it in the device call's
#                                           carry), for a GPU machine that cannot reach PyPI
#   bash tools/gpu_check.sh --dry-run       the same steps on the CPU with tiny sizes (checks the script itself)
#   bash tools/gpu_check.sh -h              this text
#
# Dependencies: carried wheels in .whl/ are installed offline; otherwise missing packages come from PyPI
# (the project's requirements, read from pyproject.toml); packages already installed are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu_check}
MODE=${1:-}
case "$#:$MODE" in
    0: | 1:--fetch-wheels | 1:--dry-run) ;;
    1:-h | 1:--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown arguments: $*; give none, --fetch-wheels, --dry-run or -h" >&2; exit 2 ;;
esac

if [[ $MODE == --fetch-wheels ]]; then
    grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    # cp312 manylinux: the GPU image's python; the runtime dependencies it lacks (it has torch, numpy, numba,
    # opencv, pyyaml, tqdm, pytest and pytest-timeout). POT 0.9.6: 0.9.7's wheel is 33 MB, over what a call carries
    # beside PyAV's 35 MB
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl pot==0.9.6 av pyzmq mcap zstandard lz4 simplejpeg
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
        # Python 3.10 has no tomllib: pip's own copy of tomli reads the file there
        "$PY" -c "import sys; from importlib import import_module; \
tomllib = import_module('tomllib' if sys.version_info >= (3, 11) else 'pip._vendor.tomli'); \
p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(d for d in p['dependencies'] + p['optional-dependencies']['test'] if not d.startswith('torch')))" \
            > "$OUT/requirements.txt"
        "$PY" -m pip install -q -r "$OUT/requirements.txt"
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

if [[ $MODE == --dry-run ]]; then
    DEVICE=cpu BENCH=(--tiny --batch 1,2)
else
    DEVICE=cuda BENCH=(--sizes 640x480,1280x1024 --batch 1,8 --graphs on,off --precision fp32,fp16 --frames 300)
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else \
'gpu_check: torch ' + torch.__version__ + ' sees no CUDA GPU')"
fi
"$PY" -c "import torch, numpy, ot; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', \
numpy.__version__, 'POT', ot.__version__)" | tee "$OUT/env.txt"

STEPS=${STEPS:-1 2 3 4 5 6}
step() { [[ " $STEPS " == *" $1 "* ]]; }
status=0

# 1. GPU tests: only the files that declare them are collected.
if step 1; then
    mapfile -t GPU_TESTS < <(grep -rlE --include='*.py' 'mark\.gpu' tests)
    timeout 90 "$PY" -m pytest -q -o addopts="" -m gpu --timeout=60 "${GPU_TESTS[@]}" 2>&1 | tee "$OUT/gpu_tests.txt" \
        || status=1
fi

# 2. The benchmark matrix (GPU name printed on every line).
if step 2; then
    timeout 200 "$PY" tools/bench_fuse.py --device "$DEVICE" "${BENCH[@]}" 2>&1 | tee "$OUT/bench_fuse.txt" || status=1
fi

# 3. The teacher (K-step guided DDIM) at K = 20.
if step 3; then
    TEACHER=(--sizes 640x480 --frames 50); [[ $MODE == --dry-run ]] && TEACHER=(--tiny --frames 3)
    timeout 60 "$PY" tools/bench_fuse.py --device "$DEVICE" --sampler teacher --steps 20 "${TEACHER[@]}" 2>&1 \
        | tee "$OUT/bench_teacher.txt" || status=1
fi

# 4. Live: the demo (synthetic rig, engine.device auto) for 20 s with a subscriber counting what arrives, at the
# demo's camera rates (25/30 frames/s), then with both sources at 120 frames/s (the pipeline's ceiling).
if step 4; then
    for fps in demo 120; do
        port=$((5600 + RANDOM % 300)); rates=()
        [[ $fps != demo ]] && rates=(--set ir.fps=$fps --set vis.fps=$fps)
        [[ $MODE == --dry-run ]] && rates+=(--set ir.width=64 --set ir.height=48 --set vis.width=64 --set vis.height=48)
        timeout 60 "$PY" -m streamfuse subscribe "tcp://127.0.0.1:$port" --topic fused/ --timeout 50 \
            > "$OUT/live_${fps}_subscriber.txt" 2>&1 &
        sub=$!
        timeout 40 "$PY" run_stream.py --config demo --duration 15 --set "publish.endpoint=tcp://127.0.0.1:$port" \
            "${rates[@]}" 2>&1 | tee "$OUT/live_$fps.txt" | grep -E "rate=" || status=1
        kill -TERM $sub; wait $sub || true  # SIGTERM: the subscriber prints its summary
        head -1 "$OUT/live_${fps}_subscriber.txt"; grep "^received" "$OUT/live_${fps}_subscriber.txt"  # first frame, summary
    done
fi

# 5. Offline replay of a synthetic H.264 pair, every stage's share of the wall time.
if step 5; then
    FRAMES=300; [[ $MODE == --dry-run ]] && FRAMES=20
    timeout 90 "$PY" -m streamfuse bench replay --fuser hclfuse --frames $FRAMES --set engine.device="$DEVICE" 2>&1 \
        | tee "$OUT/bench_replay.txt" || status=1
fi

# 6. Real pairs: the eval config on the GPU and on the CPU, and how far apart their fused images are.
if step 6 && [[ -n ${DATA:-} ]]; then
    evaluated=0
    for run in "$DEVICE:device" cpu:cpu; do  # named apart: on --dry-run both are the CPU
        dev=${run%:*} name=${run#*:}
        rm -rf "$OUT/fused_$name" "$OUT/eval_$name"  # an earlier check's: never shown as this one's
        code=0
        timeout 90 "$PY" -m streamfuse evaluate "$DATA/ir" "$DATA/vi" --fuser hclfuse --set engine.device=$dev \
            --save "$OUT/fused_$name" --out "$OUT/eval_$name" > "$OUT/eval_$name.txt" 2>&1 || code=$?
        if [[ $code == 0 ]]; then
            cat "$OUT/eval_$name/metrics.md"
            evaluated=$((evaluated + 1))
        else
            status=1
            echo "gpu_check: evaluate on $dev failed (exit $code): $(tail -1 "$OUT/eval_$name.txt")"
        fi
    done
    [[ $evaluated == 2 ]] && "$PY" - "$OUT/fused_device" "$OUT/fused_cpu" <<'PY' 2>&1 | tee "$OUT/eval_diff.txt" \
        || status=1
import sys
from pathlib import Path

import cv2
import numpy as np

a, b = (Path(d) for d in sys.argv[1:])
diffs = [np.abs(cv2.imread(str(f)).astype(int) - cv2.imread(str(b / f.name)).astype(int)) for f in sorted(a.iterdir())]
print(f"{len(diffs)} fused images, this device vs the CPU: mean |diff| {np.mean([d.mean() for d in diffs]):.4f} grey, "
      f"max {max(int(d.max()) for d in diffs)}")
PY
fi
exit $status
