#!/usr/bin/env bash
# The GPU check: the trainer's DPO steps and the transformers backend's flow on CUDA, Llama 1B and 8B shapes
# with random weights; prints tokens/s, step time, peak memory and the projected GPU-hours of the paper's
# 2,000-example run (formula and inputs: bench/gpu_check.py; how to run it: bench/README.md).
#
#   scripts/gpu-check.sh [--out FILE] [bench/gpu_check.py options]   on a CUDA machine (default: 1b,8b; ~4-6 min)
#   scripts/gpu-check.sh --device cpu --shapes tiny                   on a CPU: the end-to-end check CI runs
#   scripts/gpu-check.sh --download-wheels [DIR]                      on a machine with network: fetch WHEELS
#
# Needs python3 with torch, transformers, peft (and tokenizers, accelerate, pyyaml, pandas, pyarrow,
# requests, xxhash, fsspec, huggingface-hub, which come with them on a CUDA PyTorch image). The rest of what
# flowdpo's trainer and flow import travels as the wheels below (pure Python except pydantic-core): if they
# are not importable, they are installed offline from $FLOWDPO_WHEELS (default .whl/ at the repository root)
# into a temporary folder. The whole check is stopped after $FLOWDPO_GPU_CHECK_TIMEOUT seconds (540).
set -euo pipefail
cd "$(dirname "$0")/.."

# The versions CI tests flowdpo with (tests/packaging/test_gpu_check.py compares them with the venv's).
WHEELS=(
  trl==1.16.0              # flowdpo/train/dpo.py: selective_log_softmax
  datasets==5.2.0          # imported by trl
  dill==0.4.1              # datasets
  multiprocess==0.70.19    # datasets
  pydantic==2.14.4         # flowdpo/spec (FlowSpec, TrainingSpec, LoraSpec)
  pydantic-core==2.50.5    # pydantic (a compiled wheel: one per Python version)
  annotated-types==0.8.0   # pydantic
  typing-inspection==0.4.5 # pydantic
)
PY=${PYTHON:-python3}
WHEEL_DIR=${FLOWDPO_WHEELS:-.whl}

if [[ "${1:-}" == "--download-wheels" ]]; then
  dir=${2:-$WHEEL_DIR}
  mkdir -p "$dir"
  # For the GPU machine's interpreter (default CPython 3.12, x86-64 Linux): set WHEEL_PYTHON otherwise.
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "${WHEELS[@]%%#*}"
  echo "wheels in $dir: carry that folder with the repository and run scripts/gpu-check.sh there"
  exit 0
fi

if ! "$PY" -c "import pydantic, trl.trainer.utils" >/dev/null 2>&1; then
  if ! compgen -G "$WHEEL_DIR/*.whl" >/dev/null; then
    echo "gpu-check: pydantic/trl are not importable and $WHEEL_DIR holds no wheels. On a machine with" \
      "network run: scripts/gpu-check.sh --download-wheels $WHEEL_DIR  (then bring $WHEEL_DIR along)" >&2
    exit 2
  fi
  site=$(mktemp -d "${TMPDIR:-/tmp}/flowdpo-gpu-check.XXXXXX")
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$WHEEL_DIR"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout "${FLOWDPO_GPU_CHECK_TIMEOUT:-540}" "$PY" bench/gpu_check.py "$@"
