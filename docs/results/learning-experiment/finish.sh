#!/usr/bin/env bash
# After run.sh (or run-parallel.sh) has finished: today's report of both runs from their stored outcomes.
#   bash docs/results/learning-experiment/finish.sh
# `flowdpo eval --stored-only` answers nothing again (it fails if a row's stored outcomes do not match the
# current questions and settings) and adds only what the flowdpo of the run did not store: every held-out
# partial answer's Stop P(yes), for the ROC curves. `flowdpo report` redraws both runs' reports; analyze.py
# recomputes the pre-registered endpoints into results.json and results.md (PLAN.md's decision rule applied).
set -euo pipefail
cd "$(dirname "$0")/../../.."
here=docs/results/learning-experiment
export HF_HUB_OFFLINE=1
f=.venv/bin/flowdpo
$f eval $here/run.yaml --stored-only --no-progress
$f report $here/run.yaml --out $here/main-report
$f report $here/control.yaml --out $here/control-report
# --archive-to: every row the analysis reads, in one file to commit (runs/ is not in git and dies with the machine)
.venv/bin/python $here/analyze.py --main runs/learn-main --control runs/learn-control --archive-to $here/rows.json.gz
