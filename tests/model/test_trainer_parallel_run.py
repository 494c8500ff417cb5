"""The data-parallel trainer end to end with the REAL SmolLM2 model: `flowdpo trainer` launched exactly as the
operator launches it for `spec.kubernetes.trainer.gpus: 2` (`torchrun ... --no-python flowdpo trainer`), as
2 CPU processes on the gloo backend, against the same rollouts as a 1-process trainer.

The rollouts are made once (in-process worker, real model) and the run folder is copied, so both trainers
consume identical results and pairs. The 2-process trainer (torchrun and both ranks) is SIGKILLed while it
waits for the last shard, and launched again: rank 0 restores from storage and sends the state to rank 1.
Both runs must end with the same example, pair and step counts and adapter versions; losses and weights
must agree as stated at LOSS_TOL (bitwise with the 1-process run that has each rank's batch shapes).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from flowdpo.names import ADAPTERS
from flowdpo.run.prepare import prepare_run
from flowdpo.run.trainer import run_trainer
from flowdpo.run.worker import run_worker
from flowdpo.spec import load_document
from flowdpo.storage import RunLayout, open_store
from flowdpo.train.dpo import dpo_step
from flowdpo.train.launch import torchrun_command

pytestmark = pytest.mark.slow

RUN = """
apiVersion: flowdpo.dev/v1alpha1
kind: FlowDPORun
metadata: {{name: dp}}
spec:
  flow: {{chunkTokens: 16, maxChunks: 3, temperature: 1.0}}
  training: {{learningRate: 1.0e-3, beta: 0.5, batchSize: 2, microBatchSize: 2}}
  lora: {{dropout: 0.0}}
  data: {{numExamples: 6, shardSize: 2, seed: 2}}
  rollout: {{batchExamples: 2, maxPendingShards: 3}}
  storage: {{uri: "file://{root}/one"}}
  seed: 1
"""
# LoRA dropout 0: with dropout each rank draws its own masks for its share of the batch, so a 2-rank step is
# another (equally valid) dropout sample than the 1-process step; without it the two runs compute the same
# function and differ only by floating-point rounding, which is what the tolerance below bounds.

# How close is close. With batchSize 2 each rank scores one pair of a step (rank 0 alone the last, single
# pair): exactly the shapes of a 1-process run with microBatchSize 1, and the gradient is the same two-term
# sum in another order. So the 2-rank run must be BITWISE equal to that 1-process run (dropout 0, one torch
# thread everywhere) -- the test's exact check. Against the 1-process run with microBatchSize 2 (both pairs in
# one padded batch) the same mathematics is computed in other batch shapes (other bf16 matmul blockings of the
# frozen base, other summation orders): the sequence log-probs differ by ~1e-3, and Adam's early updates,
# ~lr * sign(gradient) per weight whatever the gradient's size, let that rounding decide the sign of full-size
# steps where a gradient component is near zero. That distance is printed, and bounded loosely (LOSS_TOL,
# WEIGHT_TOL) to catch gross errors only: measured here, the last logged loss differs by 8.4e-2 and the final
# Answer weights by 13% of their largest value (2.3e-3 after the first update). The gradient arithmetic of
# unequal shares is checked to 1e-4 in tests/unit/test_trainer_parallel.py.
LOSS_TOL = 0.25  # of a DPO loss of ~0.69 (beta 0.5)
WEIGHT_TOL = 0.5  # max |a - b| / max |a| over an adapter's final LoRA weights


def _state(store) -> dict:
    return store.get_json(store.get_json(RunLayout.trainer_latest)["key"])


def _history(store) -> dict[int, dict]:
    states = [store.get_json(k) for k in store.list("trainer/state/") if not k.endswith("LATEST.json")]
    return {(len(s["consumed"]), s["finished"]): s for s in states}


def _weights(store, adapter: str, version: int) -> dict[str, torch.Tensor]:
    return load_safetensors(store.get(f"{RunLayout.adapter(adapter, version)}/adapter_model.safetensors"))


def _copy_shard(src: Path, dst: Path, shard: int) -> None:
    """Pairs first, then results: the order a worker writes them in (results name the winning attempt)."""
    for rel in (f"pairs/{RunLayout.shard_name(shard)}", RunLayout.results(shard)):
        s, d = src / rel, dst / rel
        if s.is_dir():
            shutil.copytree(s, d)
        else:
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, d)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc): torchrun starts each rank in a session of its own, so killing
    torchrun's process group would leave the ranks running."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for k in kids:
            out += [k, *_descendants(k)]
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every rank at once: what a pod's end does to all processes of its container."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def test_two_gloo_ranks_train_like_one_process_and_resume_exactly_after_sigkill(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWDPO_TORCH_THREADS", "1")  # every process computes with the same kernels (ranks too)
    run_file = tmp_path / "dp.yaml"
    run_file.write_text(RUN.format(root=tmp_path))
    one = load_document(run_file)
    store_one = open_store(one.storage_uri())
    prepare_run(store_one, one)
    run_worker(one, poll_seconds=0.1, worker_id="w1")  # the rollouts of all 3 shards, real model
    shards = store_one.get_json(RunLayout.manifest)["shards"]
    assert shards == 3 and all(store_one.exists(RunLayout.results(s)) for s in range(shards))

    # The 2-rank run's folder: the same prepared run and rollouts, the last shard's results held back.
    src, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(src, two, ignore=shutil.ignore_patterns("results", "pairs"))
    for s in range(shards - 1):
        _copy_shard(src, two, s)
    store_two = open_store(f"file://{two}")

    shutil.copytree(src, tmp_path / "shape")  # for the micro-batch-1 run: all rollouts
    final_one = run_trainer(one, poll_seconds=0.1)  # the 1-process reference, in this process
    state_one = _state(store_one)
    assert final_one["phase"] == "Succeeded" and state_one["finished"]
    assert sum(state_one["steps"].values()) >= 3, f"too few DPO steps to compare: {state_one['steps']}"

    # One process again, every pair in a micro-batch of its own (a test-only change of the step's batch
    # shape; the spec, and so the stored run, stay the same): what each rank computes.
    from flowdpo.train import online

    def one_pair_micro_batches(*args, **kw):
        return dpo_step(*args[:4], args[4].model_copy(update={"micro_batch_size": 1}), *args[5:], **kw)

    with monkeypatch.context() as mp:
        mp.setattr(online, "dpo_step", one_pair_micro_batches)
        shape = load_document(run_file)
        shape.spec.storage.uri = f"file://{tmp_path / 'shape'}"
        run_trainer(shape, poll_seconds=0.1)
    store_shape = open_store(f"file://{tmp_path / 'shape'}")
    assert _state(store_shape)["steps"] == state_one["steps"]

    bindir = str(Path(sys.executable).parent)  # torchrun and flowdpo of this environment
    env = {
        **os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "FLOWDPO_DIST_BACKEND": "gloo",
    }  # fmt: skip
    cmd = torchrun_command(2, ["trainer", str(run_file), "--storage", f"file://{two}", "--poll-seconds", "0.1"])
    log_path = tmp_path / "torchrun.log"

    def launch() -> subprocess.Popen:
        with open(log_path, "ab") as log:
            return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    proc = launch()
    try:
        deadline = time.monotonic() + 600
        def consumed() -> int:
            return len(_state(store_two)["consumed"]) if store_two.exists(RunLayout.trainer_latest) else 0

        while consumed() < shards - 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None and consumed() == shards - 1, log_path.read_text()[-4000:]
        ranks = _descendants(proc.pid)
        assert len(ranks) >= 2, ranks
    finally:
        _kill_tree(proc)  # both ranks and torchrun: a pod killed mid-run
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.1)  # killed ranks that are not our children are reaped by init
    assert store_two.get_json(RunLayout.progress)["phase"] == "Training"

    _copy_shard(src, two, shards - 1)
    proc = launch()
    try:
        assert proc.wait(timeout=600) == 0, log_path.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    log = log_path.read_text()
    assert f"resumed at shard {shards - 1} of {shards}" in log and "rank 1: done after" in log

    # Same counts, same versions, same bookkeeping: rank 0 wrote exactly what one process writes.
    state_two = _state(store_two)
    for key in ("consumed", "pending", "versions", "steps", "examples", "correct", "baselines", "pairs_mined",
                "pairs_trained", "finished"):  # fmt: skip
        assert state_two[key] == state_one[key], (key, state_two[key], state_one[key])
    progress_two = store_two.get_json(RunLayout.progress)
    assert progress_two["phase"] == "Succeeded"
    assert {k: progress_two[k] for k in ("examples", "correct", "pairs", "adapterVersions")} == {
        k: final_one[k] for k in ("examples", "correct", "pairs", "adapterVersions")
    }
    assert store_two.get_json(RunLayout.adapters_latest) == store_one.get_json(RunLayout.adapters_latest)
    for a in ADAPTERS:  # versions only went up across the kill: every published folder up to the final one
        versions = sorted({RunLayout.version_of(k) for k in store_two.list(RunLayout.adapter_versions_prefix(a))})
        assert versions == list(range(1, state_two["versions"][a] + 1))

    # Losses: the last step's loss of every checkpoint, per adapter; final weights per adapter.
    h1, h2, h3 = _history(store_one), _history(store_two), _history(store_shape)
    assert h1.keys() == h2.keys() == h3.keys()
    print("\ncheckpoint        adapter  2 ranks   1 process, micro-batch 1   1 process, micro-batch 2  |diff|")
    for key in sorted(h1):
        for a in ADAPTERS:
            if a in h1[key]["last"]:
                l1, l2, l3 = (h[key]["last"][a]["loss"] for h in (h1, h2, h3))
                print(f"{key!s:17s} {a:8s} {l2:.6f}  {l3:.6f}                   {l1:.6f}                  {abs(l2 - l1):.2e}")
                assert h2[key]["last"][a] == h3[key]["last"][a], (key, a)  # loss, margin, accuracy: bitwise
                assert abs(l2 - l1) <= LOSS_TOL, (key, a, l1, l2)
    for a in ADAPTERS:
        v = state_one["versions"][a]
        if v:
            w1, w2, w3 = (_weights(st, a, v) for st in (store_one, store_two, store_shape))
            assert w1.keys() == w2.keys() == w3.keys()
            assert all(torch.equal(w2[k], w3[k]) for k in w2), f"{a}: 2 ranks != 1 process with micro-batch 1"
            scale = max(t.abs().max().item() for t in w1.values())
            rel = max((w2[k].float() - w1[k].float()).abs().max().item() for k in w1) / scale
            print(f"{a}: final LoRA weights, max |diff| / max |w| against micro-batch 2: {rel:.2e}")
            assert rel <= WEIGHT_TOL, (a, rel)
