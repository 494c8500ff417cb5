#!/usr/bin/env bash
# Set up the environment (cached) and run the whole test suite. CI runs exactly this (.ci/run).
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Convert the embedded model once (cached in ~/.cache/flowdpo/models) before the tests time anything.
.venv/bin/python -c "from flowdpo.models import resolve_model_path; from flowdpo.spec import ModelSpec; resolve_model_path(ModelSpec())"
# The real components the tests start, built or fetched once from Debian packages and cached in
# ~/.cache/flowdpo: a Kubernetes 1.20 control plane for e2e/ (~6-10 min the first time), Prometheus.
bash scripts/testenv/k8s.sh build
bash scripts/testenv/prometheus.sh >/dev/null
# The three container images (podman from Debian packages; layers cached in ~/.cache/flowdpo/containers):
# tests/images runs them, e2e/ runs the operator from its image. First time ~9 min, then under a minute. The
# build runs beside the tests that do not need it, and those that do run last and wait for it
# (tests/support/podman.py reads the status file; a failed build fails them with the build log's tail).
bash scripts/images.sh setup
export FLOWDPO_IMAGES_BUILD_STATUS=${TMPDIR:-/tmp}/flowdpo-images-build.$$
export FLOWDPO_IMAGES_BUILD_LOG=$FLOWDPO_IMAGES_BUILD_STATUS.log
rm -f "$FLOWDPO_IMAGES_BUILD_STATUS"
( if bash scripts/images.sh build >"$FLOWDPO_IMAGES_BUILD_LOG" 2>&1; then echo done; else echo failed; fi \
    >"$FLOWDPO_IMAGES_BUILD_STATUS" ) &
if (($# == 0)); then  # the whole suite, what needs the images last
  # shellcheck disable=SC2046  # folder names without spaces
  set -- $(find tests -mindepth 1 -maxdepth 1 -type d ! -name images ! -name support ! -name fixtures \
             ! -name __pycache__ | sort) tests/images e2e
fi
.venv/bin/python -m pytest -ra --timeout=1200 "$@" && rc=0 || rc=$?
wait
tail -n 3 "$FLOWDPO_IMAGES_BUILD_LOG" >&2 || true
exit "$rc"
