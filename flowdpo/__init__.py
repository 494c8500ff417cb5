"""flowdpo: train LLM flows with online DPO (Flow-DPO)."""

import os

__version__ = "0.1.0"

# CPU threads that finish their share of a parallel region SLEEP instead of spinning. The OpenMP runtime
# bundled with torch spins by default, so with one other CPU-bound process on the machine a 2-thread run
# slowed ~5-15x (measured: a forward of the embedded model 8.4 s spinning vs 1.96 s passive, with one
# competing process on 2 cores); passive waiting costs nothing measurable on a quiet machine
# (bench/bench_engine.py reports both). Read once, when torch loads its OpenMP runtime, so it is set here,
# before any flowdpo module imports torch; set OMP_WAIT_POLICY yourself to override it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
