#!/usr/bin/env bash
# Run HERE (a machine with PyPI access), before a device run: download the wheels the H200
# machine lacks for bench/gpu_run.sh, for its Python 3.12 on x86-64, into .whl/ (git-ignored,
# carried with `carry: [".whl"]`). The machine has torch 2.11 (CUDA), transformers 5.17,
# peft 0.21.0, accelerate 1.15, pyarrow, pandas, pyyaml, xxhash, huggingface_hub 1.33; it lacks
# trl, datasets (+ dill, multiprocess) and pydantic. transformers/peft are carried at the versions
# vlalign is tested with here. Usage: bash bench/gpu_wheels.sh [DEST]   (~20 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PYTHON:-.venv/bin/python}
if [ "$DEST" = ".whl" ] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
  echo '/.whl/' >> .git/info/exclude
fi
PKGS=(
  transformers==5.24.0 peft==0.21.2 trl==1.16.0 datasets==5.2.0 dill==0.4.1
  multiprocess==0.70.19 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing-extensions==4.16.0 regex==2026.11.19
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${PKGS[@]}"
ls -l "$DEST"
