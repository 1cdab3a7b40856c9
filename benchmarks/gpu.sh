#!/usr/bin/env bash
# GPU benchmark on a machine that has torch (with CUDA) but not MONAI.
#
# Installs the wheels carried in .whl/ (MONAI; the repository itself is used from source) into
# /tmp/site and runs benchmarks/gpu.py with the given options. Prepare .whl/ on a machine with PyPI:
#     pip download --no-deps -d .whl monai==1.6.1
# Usage (repository root):
#     bash benchmarks/gpu.sh                         # AMP bf16 on cuda; JSON on stdout and in $OUT/gpu.json
#     bash benchmarks/gpu.sh --amp fp16 --compile
#     bash benchmarks/gpu.sh --device cpu --smoke    # dry run of every code path
set -euo pipefail
cd "$(dirname "$0")/.."

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

python3 - <<'PY' >&2
import sys
try:
    import monai
    import torch
except ImportError as err:
    sys.exit(f"gpu.sh: {err}; carry the MONAI wheel in .whl/ (pip download --no-deps -d .whl monai==1.6.1)")
cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"gpu.sh: torch {torch.__version__}, monai {monai.__version__} ({monai.__file__}), {cuda}")
PY

exec python3 benchmarks/gpu.py "$@"
