#!/usr/bin/env bash
# The GPU check (issue 17), as one command on a machine where torch and torchvision are installed and no package
# registry may be reachable:
#     benchmarks/gpu_check.sh                        # on a GPU: tests, benchmarks, paper-scale runs (~6 minutes)
#     benchmarks/gpu_check.sh --device cpu --dry-run # the same steps at tiny sizes (check the script on a CPU)
# It installs the project without network (pip --no-deps -e .) and, from .gpu-wheels/ if present, what the
# notebooks need (papermill, nbval, ipykernel, ipywidgets and their dependencies), which a machine with a registry
# prepares with:
#     for v in 3.10 3.11 3.12; do pip download --dest .gpu-wheels --only-binary :all: --python-version $v \
#         --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#         papermill nbval ipykernel ipywidgets; done        # 28 MB
# Everything else is benchmarks/gpu_check.py; the table goes to $OUT (or ./gpu_check) and stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import mistudy" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | tail -2 ||
        { echo "gpu_check: could not install the project (pip install --no-deps -e .)"; exit 1; }
fi
if [ -d .gpu-wheels ] && ! "$PY" -c "import papermill, nbval, ipykernel, ipywidgets" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-index --find-links .gpu-wheels papermill nbval ipykernel ipywidgets 2>&1 | tail -2
    "$PY" -m ipykernel install --sys-prefix --name mistudy --display-name "Python (mistudy)" >/dev/null 2>&1 || true
fi
exec "$PY" benchmarks/gpu_check.py "$@"
