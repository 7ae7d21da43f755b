#!/usr/bin/env bash
# The one install procedure of vlalign. `make setup` runs it into .venv; cluster/docker/Dockerfile
# runs it into the image (the one the KubeRay and launcher files name). Run from anywhere; it
# installs the checkout it lives in.
#
#   cluster/install.sh --venv .venv --extras dev,bench     # what `make setup` runs
#   cluster/install.sh --system --torch cuda --no-browser   # what the Dockerfile runs
#   cluster/install.sh --dry-run ...                        # print the steps, change nothing
#   cluster/install.sh --only-browser                       # just chromium (what `make test` needs)
#
# Steps, in this order:
#   1. a virtual environment (--venv DIR, created when missing) or the system python (--system);
#   2. torch FIRST, so that nothing later pulls a multi-GB CUDA build onto a CPU machine:
#      --torch auto (default): the CUDA build where an NVIDIA GPU answers `nvidia-smi -L`, else
#      the CPU wheel torch==2.13.0; --torch cpu | cuda forces one (an image is built without a
#      GPU); TORCH_CPU_SPEC / TORCH_CUDA_SPEC override the pip requirement of each;
#   3. vlalign itself, editable, with the extras asked for (deepspeed, ray, mlflow, ... come
#      with it: see pyproject.toml);
#   4. Debian's chromium, which the MLflow UI browser test drives headless, when the dev extra is
#      installed, it is missing and apt-get can run (root); otherwise a warning says what to do.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_CPU_SPEC="${TORCH_CPU_SPEC:-torch==2.13.0}"
TORCH_CUDA_SPEC="${TORCH_CUDA_SPEC:-torch}"
# Names the browser is looked up by (a test sets one that does not exist to see the apt step).
BROWSERS="${VLALIGN_BROWSERS:-chromium chromium-browser}"

venv="" system=0 torch="auto" extras="" browser=1 only_browser=0 dry=0

usage() {
  sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) venv="${2:?--venv needs a directory}"; shift 2 ;;
    --system) system=1; shift ;;
    --torch) torch="${2:?--torch needs auto, cpu or cuda}"; shift 2 ;;
    --extras) extras="${2-}"; shift 2 ;;
    --no-browser) browser=0; shift ;;
    --only-browser) only_browser=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# Print each step; run it unless --dry-run.
step() {
  echo "+ $*"
  if [[ $dry -eq 0 ]]; then "$@"; fi
}

have_browser() {
  local b
  for b in $BROWSERS; do
    if command -v "$b" >/dev/null 2>&1; then echo "$b"; return 0; fi
  done
  return 1
}

install_browser() {
  local found
  if found="$(have_browser)"; then
    echo "chromium: found $(command -v "$found")"
    return 0
  fi
  if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "chromium: missing; installing Debian's chromium (a few minutes, once)"
    if ! { step apt-get update -qq &&
      step env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }; then
      echo "warning: apt-get could not install chromium; the MLflow UI browser test will fail" >&2
    fi
  else
    echo "warning: chromium is missing and apt-get cannot run here (not root or not Debian):" \
      "install Debian's chromium yourself; the MLflow UI browser test needs it" >&2
  fi
}

if [[ $only_browser -eq 1 ]]; then
  install_browser
  exit 0
fi

if [[ -n "$venv" && $system -eq 1 ]]; then
  echo "install.sh: --venv and --system exclude each other" >&2
  exit 2
fi
if [[ -z "$venv" && $system -eq 0 ]]; then
  echo "install.sh: say where: --venv DIR or --system" >&2
  exit 2
fi

# 1. the interpreter
if [[ -n "$venv" ]]; then
  if [[ ! -x "$venv/bin/python" ]]; then step "$PYTHON" -m venv "$venv"; fi
  py="$venv/bin/python"
else
  py="$PYTHON"
fi

# 2. torch
case "$torch" in
  auto)
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      torch=cuda
    else
      torch=cpu
    fi ;;
  cpu|cuda) ;;
  *) echo "install.sh: --torch must be auto, cpu or cuda, got $torch" >&2; exit 2 ;;
esac
if [[ $torch == cuda ]]; then spec="$TORCH_CUDA_SPEC"; else spec="$TORCH_CPU_SPEC"; fi
echo "torch: $torch build ($spec)"
step "$py" -m pip install -q --upgrade pip
step "$py" -m pip install -q "$spec"

# 3. vlalign and its extras
target="$ROOT"
if [[ -n "$extras" ]]; then target="$ROOT[$extras]"; fi
step "$py" -m pip install -q -e "$target"

# 4. the browser the UI test drives
if [[ $browser -eq 1 && ",$extras," == *",dev,"* ]]; then
  install_browser
fi
echo "vlalign installed ($py)"
