#!/usr/bin/env bash
# Run ON THE GPU MACHINE (the device tool runs it in the repo root; `carry: [".whl"]` after
# `bash bench/gpu_wheels.sh` here): installs the carried wheels, prints versions, runs
# bench/dpo_step.py --device cuda for the LLaVA-1.5-7B and Qwen2-VL-2B shapes (bf16, LoRA r=16,
# the issue's batches) and writes JSON + logs to $OUT:
#   versions.txt, dpo_step_llava-1.5-7b.{json,log}, dpo_step_qwen2-vl-2b.{json,log}
# Budget: ~1-2 min per shape on an H200 (bf16 peak ~10 s, models build on the GPU in seconds,
# 9 vlalign rows + TRL x 7 rounds); each shape is capped by SHAPE_TIMEOUT (default 240 s).
# Suggested device call: run(command="bash bench/gpu_run.sh", carry=[".whl"], timeout_s=570)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/vlalign-bench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" - <<'PYEOF' 2>&1 | tee "$OUT/versions.txt"
import platform, torch, transformers, peft, accelerate, trl, datasets, pydantic
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("transformers", transformers.__version__, "peft", peft.__version__, "accelerate",
      accelerate.__version__, "trl", trl.__version__, "datasets", datasets.__version__,
      "pydantic", pydantic.__version__)
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
PYEOF
status=0
for shape in llava-1.5-7b qwen2-vl-2b; do
  timeout "${SHAPE_TIMEOUT:-240}" "$PY" bench/dpo_step.py --device cuda --shape "$shape" \
    --json "$OUT/dpo_step_${shape}.json" "$@" 2>&1 | tee "$OUT/dpo_step_${shape}.log"
  rc=${PIPESTATUS[0]}
  echo "dpo_step $shape: exit $rc"
  [ "$rc" -eq 0 ] || status=1
done
exit $status
