"""scripts/gpu-check.sh end to end on a CPU at the tiny shape (CI never has a GPU; the same code runs the 1B and
8B shapes on CUDA): the trainer's real DPO steps and the real flow engine run, every figure the check prints
is there, the projection is the stated formula of the printed inputs, bad options fail with a message, and
the wheels the script carries to a bare GPU machine are the versions this environment tests with."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from tests.support.paths import ROOT

SCRIPT = ROOT / "scripts" / "gpu-check.sh"


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], check=False, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_check_runs_end_to_end_on_a_cpu_and_projects_with_its_formula(tmp_path):
    out = tmp_path / "gpu-check.json"
    r = _run("--device", "cpu", "--shapes", "tiny", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    (tiny,) = report["shapes"]
    w = tiny["workload"]
    for kind in ("answer", "stop"):
        d = tiny["dpo"][kind]
        assert d["pairs"] == w["batch_pairs"] and d["stepSeconds"] > 0 and d["pairTokensPerSecond"] > 0
        assert d["peakGiB"] > 0 and 0 < d["loss"] < 5  # a real DPO loss: log 2 at the untrained start
    flow = tiny["flow"]
    assert flow["fastPath"] and flow["flows"] == w["flow_rows"]
    # Stop is forced to "continue": a flow runs maxChunks chunks of up to chunkTokens tokens, unless a random
    # token happens to be the EOS (1 in 512 at the tiny shape), which ends it earlier.
    assert 1 <= flow["meanChunks"] <= w["max_chunks"]
    assert 0 < flow["tokensGenerated"] <= w["flow_rows"] * w["max_chunks"] * w["chunk_tokens"]
    assert flow["tokensPerSecond"] == pytest.approx(flow["tokensGenerated"] / flow["seconds"])
    p = tiny["projection"]
    c, m = w["chunk_tokens"], w["max_chunks"]
    assert (p["N"], p["G"], p["A"], p["S"], p["B"]) == (2000, c * m * (m + 1), m, m - 1, w["batch_pairs"])
    expected = p["N"] * (p["G"] / p["R"] + (p["A"] * p["t_answer"] + p["S"] * p["t_stop"]) / p["B"]) / 3600
    assert p["gpuHours"] == pytest.approx(expected) and p["R"] == flow["tokensPerSecond"]
    assert f"tiny: 2000 examples ~ {p['gpuHours']:.2f} GPU-hours" in r.stdout
    for label in ("tiny dpo answer:", "tiny dpo stop:", "tiny flow:", "tiny projection:"):
        assert f"[gpu-check] {label}" in r.stdout


def test_measured_counts_replace_the_upper_bound():
    r = _run("--device", "cpu", "--shapes", "tiny", "--tokens-per-example", "30", "--pairs-per-example", "1.5", "0.5")
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if "tiny projection:" in x)
    assert " G=30 " in line and " A=1.5 " in line and " S=0.5 " in line and "upperBoundCounts=False" in line
    assert "upper bound" not in r.stdout.splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "cpu", "--shapes", "70b"], "--shapes: unknown ['70b']"),
        (["--device", "cpu", "--shapes", "tiny", "--dpo-steps", "0"], "--dpo-steps and --examples must be at least 1"),
        (["--device", "gpu"], "invalid choice: 'gpu'"),
    ],
)
def test_bad_options_fail_with_a_message(args, message):
    r = _run(*args, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_says_how_to_run_on_a_cpu():
    r = _run("--shapes", "tiny", timeout=120)
    assert r.returncode == 2 and "--device cpu --shapes tiny" in r.stderr


def test_the_carried_wheels_are_the_versions_this_environment_tests_with():
    text = SCRIPT.read_text()
    block = re.search(r"WHEELS=\((.*?)\n\)", text, re.DOTALL).group(1)
    pins = dict(re.findall(r"^\s*([A-Za-z0-9_.-]+)==([^\s#]+)", block, re.MULTILINE))
    assert {"trl", "pydantic", "pydantic-core"} <= set(pins)
    for name, pinned in pins.items():
        assert version(name) == pinned, f"scripts/gpu-check.sh carries {name}=={pinned}; this venv has {version(name)}"


def test_the_script_is_executable_and_strict():
    assert os.access(SCRIPT, os.X_OK)
    assert "set -euo pipefail" in SCRIPT.read_text()
    assert Path(ROOT / "bench" / "gpu_check.py").is_file()
